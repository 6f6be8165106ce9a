"""A small CNN classifier for 28x28 grayscale images, used as the feature network.

The scoring metrics (Frechet distance, precision/recall, class accuracy) need a feature
space; with no pretrained Inception weights available offline we train our own small
Fashion-MNIST classifier. Its seed-0 weights ship inside the package (``weights/``, checked
against a sha256 recorded here), so scores do not depend on the machine that trained it;
``progflow build-classifier`` trains one anew (about 2 minutes on 2 CPU cores) for other
seeds and for checking.

Architecture ``fmnist-cnn-v1`` (input ``(N, 1, 28, 28)`` float32 in ``[-1, 1]``,
i.e. ``u8 / 127.5 - 1``)::

    conv3x3(1->32)+BN+ReLU -> maxpool2        (32, 14, 14)
    conv3x3(32->64)+BN+ReLU -> maxpool2       (64, 7, 7)
    conv3x3(64->128)+BN+ReLU -> maxpool2      (128, 3, 3)
    flatten -> linear(1152->128)              128-d "feature" (penultimate) layer
    ReLU -> dropout(0.2) -> linear(128->10)   logits

The features are taken *before* the ReLU: no dead (always-zero) dimensions, so their
covariance is well conditioned, and out-of-distribution inputs such as noise land
farther from the data than in the rectified space.

Weight file format: a safetensors file whose metadata dict holds
``format="progflow-classifier"``, ``arch``, ``seed``, ``epochs``, ``test_accuracy``,
``num_classes``. Loading never unpickles anything; a file that is missing, truncated,
corrupt, foreign or a pickle raises :class:`~progflow.errors.CheckpointError`.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ProgflowError

__all__ = [
    "FORMAT",
    "ARCH",
    "INPUT_SIZE",
    "FmnistCNN",
    "cache_dir",
    "default_classifier_path",
    "prepare_input",
    "train_classifier",
    "classifier_accuracy",
    "save_classifier",
    "load_classifier",
    "get_fmnist_classifier",
    "build_fmnist_classifier",
    "load_shipped_classifier",
    "shipped_classifier_path",
]

FORMAT = "progflow-classifier"
ARCH = "fmnist-cnn-v1"
INPUT_SIZE = 28


class FmnistCNN(nn.Module):
    """The ``fmnist-cnn-v1`` classifier; see the module docstring for the layers.

    ``forward(x)`` takes float32 ``(N, 1, 28, 28)`` in ``[-1, 1]`` and returns logits
    ``(N, num_classes)``; :meth:`features_and_logits` also returns the 128-d features.
    The ``meta`` attribute holds the metadata read from / written to the weight file.
    """

    feature_dim = 128
    arch, tag, input_size, input_channels = ARCH, "fmnist", INPUT_SIZE, 1

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(32)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(64)
        self.conv3 = nn.Conv2d(64, 128, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(128)
        self.fc = nn.Linear(128 * 3 * 3, self.feature_dim)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.meta: dict[str, str] = {}

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N, 1, 28, 28)`` float32 -> (pre-ReLU features ``(N, 128)``, logits ``(N, K)``)."""
        h = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 2)
        h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
        h = F.max_pool2d(F.relu(self.bn3(self.conv3(h))), 2)
        feats = self.fc(h.flatten(1))
        return feats, self.head(self.dropout(F.relu(feats)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]

    @staticmethod
    def prepare(u8: torch.Tensor) -> torch.Tensor:
        return prepare_input(u8)

    @staticmethod
    def augment(x_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Training augmentation: a horizontal flip of half the batch."""
        flip = torch.rand(len(x_u8), generator=gen) < 0.5
        return torch.where(flip[:, None, None, None], x_u8.flip(-1), x_u8)


def classifier_archs() -> dict[str, type]:
    """Classifier architectures by the ``arch`` their weight files record."""
    from .emoji import EMOJI_ARCH, EmojiCNN

    return {ARCH: FmnistCNN, EMOJI_ARCH: EmojiCNN}


def cache_dir() -> pathlib.Path:
    """The cache directory: env ``PROGFLOW_CACHE`` if set, else ``~/.cache/progflow``."""
    env = os.environ.get("PROGFLOW_CACHE")
    return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "progflow"


# Weights that ship inside the package, as evaluators ship Inception's: every FD in the
# README was computed with these (feature digest e804adaa26), so a user's score of the same
# samples is the same number on any machine. sha256 of the file, checked on every load.
SHIPPED: dict[int, tuple[str, str]] = {
    0: ("fmnist-cnn-v1-seed0.safetensors", "95e1cd6a43fb9fdcb88d7e5b4748cc5dc2a113ed715a2b5c65efdf59bfbf845d"),
}


def shipped_classifier_path(seed: int = 0, shipped: dict | None = None) -> pathlib.Path | None:
    """The packaged weight file for ``seed`` in ``shipped`` (default :data:`SHIPPED`), or None
    when none ships for it."""
    table = SHIPPED if shipped is None else shipped
    if int(seed) not in table:
        return None
    return pathlib.Path(__file__).with_name("weights") / table[int(seed)][0]


def load_shipped_classifier(seed: int = 0, device: str = "cpu", shipped: dict | None = None) -> FmnistCNN:
    """Load the packaged classifier for ``seed`` after checking its sha256 against :data:`SHIPPED`
    (or another table of the same form, e.g. the emoji classifier's)."""
    import hashlib

    table = SHIPPED if shipped is None else shipped
    path = shipped_classifier_path(seed) if shipped is None else shipped_classifier_path(seed, shipped)
    if path is None or not path.is_file():
        raise CheckpointError(f"no packaged classifier for seed {seed} (looked for {path}); reinstall progflow "
                              "or use --features classifier:PATH")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != table[int(seed)][1]:
        raise CheckpointError(f"packaged classifier {path} does not match the sha256 recorded in progflow "
                              f"(got {digest[:12]}..., expected {table[int(seed)][1][:12]}...); reinstall progflow")
    return load_classifier(path, device=device)


def default_classifier_path(seed: int = 0) -> pathlib.Path:
    """Where the cached Fashion-MNIST classifier for ``seed`` lives."""
    return cache_dir() / f"fmnist-classifier-{ARCH}-seed{int(seed)}.safetensors"


def publish_file(tmp: str | os.PathLike, path: str | os.PathLike) -> None:
    """Give ``tmp`` (from ``mkstemp``, mode 0600) normal permissions and ``os.replace`` it onto ``path``."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(tmp, 0o666 & ~mask)
    os.replace(tmp, path)


def prepare_input(u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``(N, 1, H, W)`` with ``H, W >= 28`` -> float32 ``(N, 1, 28, 28)`` in ``[-1, 1]``.

    Larger frames are centre-cropped to 28x28 (top offset ``(H - 28) // 2``, the same
    convention as :func:`progflow.data.center_crop`).
    """
    H, W = int(u8.shape[-2]), int(u8.shape[-1])
    if H < INPUT_SIZE or W < INPUT_SIZE:
        raise ProgflowError(f"classifier needs images of at least 28x28, got {H}x{W}")
    top, left = (H - INPUT_SIZE) // 2, (W - INPUT_SIZE) // 2
    u8 = u8[..., top : top + INPUT_SIZE, left : left + INPUT_SIZE]
    return u8.to(torch.float32) / 127.5 - 1.0


def _split_arrays(data, size: int = INPUT_SIZE, channels: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageData -> (uint8 ``(N, channels, size, size)`` images cropped to content, int64 labels)."""
    images = torch.as_tensor(data.images)
    if images.dim() != 4 or images.shape[1] != channels:
        raise ProgflowError(f"classifier needs (N, {channels}, H, W) images, got {tuple(images.shape)}")
    crop = getattr(data, "crop", None)
    if crop is not None:
        H, W = images.shape[-2:]
        top, left = (H - crop[0]) // 2, (W - crop[1]) // 2
        images = images[..., top : top + crop[0], left : left + crop[1]]
    H, W = images.shape[-2:]
    top, left = (H - size) // 2, (W - size) // 2
    images = images[..., top : top + size, left : left + size]
    return images.contiguous(), torch.as_tensor(data.labels).to(torch.int64)


def train_classifier(
    data,
    *,
    seed: int = 0,
    epochs: int = 2,
    batch_size: int = 128,
    device: str = "cpu",
    progress: bool = True,
    max_steps: int | None = None,
    lr: float = 3e-3,
    arch: str = ARCH,
) -> FmnistCNN:
    """Train :class:`FmnistCNN` on ``data`` (an ``ImageData`` of grayscale images).

    Deterministic given ``seed``: one private ``torch.Generator`` drives the
    initialisation, the shuffling, horizontal-flip augmentation and dropout, and the
    training runs on one CPU thread (the thread count changes the order of the float
    sums, hence the weights and every FD measured with them), whatever the machine has. AdamW with a one-cycle learning-rate schedule (peak ``lr``).
    Images larger than 28x28 are cropped to ``data.crop`` and then centred to 28x28.
    ``max_steps`` caps the number of optimiser steps (for quick tests). ``arch`` picks the
    network (:func:`classifier_archs`; the emoji one takes ``(N, 3, 64, 64)`` images).
    Returns the model in eval mode with ``model.meta`` holding ``seed``/``epochs``.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _train_classifier(data, seed, epochs, batch_size, device, progress, max_steps, lr, arch)
    finally:
        torch.set_num_threads(threads)


def _train_classifier(data, seed, epochs, batch_size, device, progress, max_steps, lr, arch) -> FmnistCNN:
    from tqdm.auto import tqdm

    if arch not in classifier_archs():
        raise ProgflowError(f"unknown classifier arch {arch!r}; expected one of {', '.join(classifier_archs())}")
    cls = classifier_archs()[arch]
    images, labels = _split_arrays(data, cls.input_size, cls.input_channels)
    n = int(images.shape[0])
    if n == 0:
        raise ProgflowError("cannot train the classifier on an empty dataset")
    num_classes = int(getattr(data, "num_classes", int(labels.max()) + 1))
    gen = torch.Generator().manual_seed(int(seed))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
        model = cls(num_classes)
    model.to(device).train()
    batch_size = min(int(batch_size), n)
    steps_per_epoch = max(1, n // batch_size)
    total = steps_per_epoch * int(epochs)
    if max_steps is not None:
        total = min(total, int(max_steps))
    # classes weighted by inverse frequency where a model asks for it (emoji: 4.5:1 imbalance)
    class_weight = None
    if getattr(model, "balance_classes", False):
        counts = torch.bincount(labels, minlength=num_classes).clamp(min=1).float()
        class_weight = (counts.sum() / (num_classes * counts)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr / 3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(total, 1))
    bar = tqdm(total=total, desc="classifier", disable=not progress, leave=False)
    step = 0
    while step < total:
        perm = torch.randperm(n, generator=gen)
        for i in range(steps_per_epoch):
            if step >= total:
                break
            idx = perm[i * batch_size : (i + 1) * batch_size]
            x = model.prepare(model.augment(images[idx], gen)).to(device)
            y = labels[idx].to(device)
            # dropout draws from the global RNG: seed it from our generator each step
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=gen)))
                loss = F.cross_entropy(model(x), y, weight=class_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            if step % 50 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model.eval()
    model.meta = {"arch": cls.arch, "seed": str(int(seed)), "epochs": str(int(epochs)), "steps": str(total)}
    return model


@torch.no_grad()
def classifier_predictions(model: FmnistCNN, data, *, batch_size: int = 1000) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted, true)`` int64 labels ``(N,)`` of ``model`` on ``data`` (an ``ImageData``)."""
    images, labels = _split_arrays(data, model.input_size, model.input_channels)
    model.eval()
    dev = next(model.parameters()).device
    pred = [model(model.prepare(images[i : i + batch_size]).to(dev)).argmax(1).cpu()
            for i in range(0, images.shape[0], batch_size)]
    return (torch.cat(pred) if pred else torch.zeros(0, dtype=torch.long)), labels


def classifier_accuracy(model: FmnistCNN, data, *, batch_size: int = 1000) -> float:
    """Top-1 accuracy of ``model`` on ``data`` (an ``ImageData``), in ``[0, 1]``."""
    pred, labels = classifier_predictions(model, data, batch_size=batch_size)
    return int((pred == labels).sum()) / max(1, int(labels.shape[0]))


def save_classifier(model: FmnistCNN, path: str | os.PathLike, **meta) -> pathlib.Path:
    """Write ``model`` to ``path`` (safetensors + metadata) atomically (temp + os.replace).

    Extra keyword ``meta`` values (e.g. ``test_accuracy=0.9``) are stored as strings
    in the safetensors metadata, on top of ``model.meta``.
    """
    from safetensors.torch import save_file

    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    info = dict(model.meta)
    info.update({k: str(v) for k, v in meta.items()})
    info.update({"format": FORMAT, "arch": model.arch, "num_classes": str(model.num_classes)})
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=info)
        publish_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    model.meta = info
    return path


def load_classifier(path: str | os.PathLike, device: str = "cpu") -> FmnistCNN:
    """Load a classifier written by :func:`save_classifier`; returns it in eval mode.

    Raises CheckpointError (naming the file) if the file is missing, is not a
    safetensors file (truncated, corrupt, a pickle...), is not ``progflow-classifier``
    of arch ``fmnist-cnn-v1``, or its tensors do not match the architecture.
    """
    from safetensors import safe_open

    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(f"classifier weights not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for bad files
        msg = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise CheckpointError(f"not a valid safetensors classifier file: {path} ({msg})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"not a progflow classifier (format={meta.get('format')!r}): {path}")
    archs = classifier_archs()
    if meta.get("arch") not in archs:
        raise CheckpointError(f"unknown classifier arch {meta.get('arch')!r} (want {' or '.join(archs)}): {path}")
    try:
        model = archs[meta["arch"]](int(meta.get("num_classes", "10")))
        model.load_state_dict(tensors, strict=True)
    except (RuntimeError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0][:120]
        raise CheckpointError(f"classifier tensors do not match {meta['arch']}: {path} ({first})") from None
    model.meta = meta
    return model.to(device).eval()


def build_fmnist_classifier(
    data_dir=None,
    seed: int = 0,
    out: str | os.PathLike | None = None,
    epochs: int = 2,
    *,
    progress: bool = True,
) -> tuple[pathlib.Path, float]:
    """Train the Fashion-MNIST classifier, measure its test accuracy and save it.

    Writes to ``out`` (default :func:`default_classifier_path`) atomically, plus a
    human-readable ``<out>.json`` beside it. Returns ``(path, test_accuracy)``.
    Used by ``progflow build-classifier``.
    """
    from ..checks import check_count, check_out_file
    from ..data import load_fashion_mnist

    check_count(seed, "--seed", minimum=0)
    check_count(epochs, "--epochs")
    path = check_out_file(pathlib.Path(out) if out is not None else default_classifier_path(seed))
    train = load_fashion_mnist(data_dir, split="train")
    test = load_fashion_mnist(data_dir, split="test")
    t0 = time.perf_counter()
    model = train_classifier(train, seed=seed, epochs=epochs, progress=progress)
    seconds = time.perf_counter() - t0
    acc = classifier_accuracy(model, test)
    save_classifier(model, path, test_accuracy=f"{acc:.4f}", train_seconds=f"{seconds:.1f}")
    side = path.with_name(path.name + ".json")
    fd, tmp = tempfile.mkstemp(prefix=side.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(model.meta, fh, indent=2, sort_keys=True)
    publish_file(tmp, side)
    return path, acc


def get_fmnist_classifier(
    data_dir=None,
    seed: int = 0,
    build_if_missing: bool = True,
    progress: bool = True,
    shipped: bool = True,
) -> FmnistCNN:
    """The Fashion-MNIST classifier for ``seed``: the packaged weights when they ship for
    that seed (and ``shipped``), else the cached one, trained and cached if missing.

    A cached file that is present but unreadable raises CheckpointError (it is not
    silently overwritten). With ``build_if_missing=False`` a missing file raises
    ProgflowError suggesting ``progflow build-classifier``.
    """
    if shipped and int(seed) in SHIPPED:
        return load_shipped_classifier(seed)
    path = default_classifier_path(seed)
    if not path.exists():
        if not build_if_missing:
            raise ProgflowError(f"no cached classifier at {path}; run `progflow build-classifier`")
        build_fmnist_classifier(data_dir, seed=seed, out=path, progress=progress)
    return load_classifier(path)
