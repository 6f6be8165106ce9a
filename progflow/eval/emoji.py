"""Scoring on the emoji dataset: a small CNN over the 9 emoji categories and the test split
as reference.

Architecture ``emoji-cnn-v1`` (input ``(N, 3, 64, 64)`` float32 in ``[-1, 1]``, white
background = 1)::

    conv3x3(3->24)+BN+ReLU -> maxpool2        (24, 32, 32)
    conv3x3(24->48)+BN+ReLU -> maxpool2       (48, 16, 16)
    conv3x3(48->96)+BN+ReLU -> maxpool2       (96, 8, 8)
    conv3x3(96->96)+BN+ReLU -> maxpool4       (96, 2, 2)
    flatten -> linear(384->128)               128-d feature layer (pre-ReLU)
    ReLU -> dropout(0.2) -> linear(128->9)    logits

It sees every pixel of the 64px image (the first layer runs at full resolution), so a
fine stage that adds no detail shows in its features. Seed-0 weights (about 0.7 MB) ship
in ``weights/`` with their sha256 in :data:`SHIPPED_EMOJI`; ``progflow build-classifier
--dataset emoji`` trains them anew on one thread. The reference of every emoji score is
the test split (754 images); its features are cached like the Fashion-MNIST ones.
"""

from __future__ import annotations

import pathlib
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["EMOJI_ARCH", "EmojiCNN", "SHIPPED_EMOJI", "build_emoji_classifier", "emoji_test_images",
           "get_emoji_classifier", "per_class_accuracy"]

EMOJI_ARCH = "emoji-cnn-v1"
EMOJI_EPOCHS = 30

# sha256 of the packaged weights, checked on every load (as for Fashion-MNIST).
SHIPPED_EMOJI: dict[int, tuple[str, str]] = {
    0: ("emoji-cnn-v1-seed0.safetensors", "8dcc47b6d52724bd5e685baa7edc26f2c7d106e8aa21db0e6aa5605ed14e65be"),
}


class EmojiCNN(nn.Module):
    """The ``emoji-cnn-v1`` classifier (layers in the module docstring); same interface as
    :class:`~progflow.eval.classifier.FmnistCNN` (``features_and_logits``, ``prepare``, ``meta``)."""

    feature_dim = 128
    arch, tag, input_size, input_channels = EMOJI_ARCH, "emoji", 64, 3
    balance_classes = True  # the cross-entropy weighs categories by inverse frequency
    max_shift = 6

    def __init__(self, num_classes: int = 9) -> None:
        super().__init__()
        self.num_classes = int(num_classes)
        widths = (3, 24, 48, 96, 96)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1) for a, b in zip(widths, widths[1:]))
        self.bns = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])
        self.fc = nn.Linear(96 * 2 * 2, self.feature_dim)
        self.dropout = nn.Dropout(0.2)
        self.head = nn.Linear(self.feature_dim, self.num_classes)
        self.meta: dict[str, str] = {}

    def features_and_logits(self, x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = x_BCHW
        for i, (conv, bn) in enumerate(zip(self.convs, self.bns)):
            h = F.max_pool2d(F.relu(bn(conv(h))), 4 if i == len(self.convs) - 1 else 2)
        feats = self.fc(h.flatten(1))
        return feats, self.head(self.dropout(F.relu(feats)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[1]

    def augment(self, x_u8: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """Training augmentation: a horizontal flip of half the batch and a shift of up to
        ``max_shift`` pixels each way, the uncovered border white."""
        flip = torch.rand(len(x_u8), generator=gen) < 0.5
        x = torch.where(flip[:, None, None, None], x_u8.flip(-1), x_u8)
        m, size = self.max_shift, x.shape[-1]
        shifts = torch.randint(0, 2 * m + 1, (len(x), 2), generator=gen).tolist()
        padded = F.pad(x, (m, m, m, m), value=255)
        return torch.stack([padded[i, :, dy:dy + size, dx:dx + size] for i, (dy, dx) in enumerate(shifts)])

    @staticmethod
    def prepare(u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``(N, 3, 64, 64)`` -> float32 in ``[-1, 1]``."""
        from ..errors import ProgflowError

        if tuple(u8.shape[1:]) != (3, 64, 64):
            raise ProgflowError(f"the emoji classifier needs (N, 3, 64, 64) images, got {tuple(u8.shape)}")
        return u8.to(torch.float32) / 127.5 - 1.0


def emoji_test_images(data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """The emoji test split as uint8 ``(N, 64, 64, 3)`` and int64 labels ``(N,)``."""
    from ..data.emoji import load_emoji

    data = load_emoji(data_dir, split="test")
    return data.images.permute(0, 2, 3, 1).contiguous().numpy(), data.labels.numpy()


def per_class_accuracy(model, data) -> dict[str, float]:
    """Test accuracy of ``model`` per class of ``data`` (an ``ImageData``), by class name."""
    from .classifier import classifier_predictions

    pred, labels = classifier_predictions(model, data)
    return {name: float((pred[labels == k] == k).float().mean()) for k, name in enumerate(data.class_names)}


def build_emoji_classifier(data_dir=None, seed: int = 0, out=None, epochs: int = EMOJI_EPOCHS, *,
                           progress: bool = True) -> tuple[pathlib.Path, float, dict[str, float]]:
    """Train ``emoji-cnn-v1`` on the emoji train split (one thread), save it to ``out``
    (default the cache) and return ``(path, test accuracy, test accuracy per category)``."""
    from ..checks import check_count, check_out_file
    from ..data.emoji import load_emoji
    from .classifier import cache_dir, classifier_accuracy, save_classifier, train_classifier

    check_count(seed, "--seed", minimum=0)
    check_count(epochs, "--epochs")
    path = check_out_file(pathlib.Path(out) if out is not None else
                          cache_dir() / f"emoji-classifier-{EMOJI_ARCH}-seed{int(seed)}.safetensors")
    train, test = load_emoji(data_dir, split="train"), load_emoji(data_dir, split="test")
    t0 = time.perf_counter()
    model = train_classifier(train, seed=seed, epochs=epochs, batch_size=64, progress=progress, arch=EMOJI_ARCH)
    seconds = time.perf_counter() - t0
    acc = classifier_accuracy(model, test)
    save_classifier(model, path, test_accuracy=f"{acc:.4f}", train_seconds=f"{seconds:.1f}")
    return path, acc, per_class_accuracy(model, test)


def get_emoji_classifier(seed: int = 0) -> EmojiCNN:
    """The packaged emoji classifier for ``seed`` (sha256 checked)."""
    from ..errors import ProgflowError
    from .classifier import load_shipped_classifier

    if int(seed) not in SHIPPED_EMOJI:
        raise ProgflowError(f"no packaged emoji classifier for seed {seed} (packaged: "
                            f"{', '.join(map(str, SHIPPED_EMOJI)) or 'none'}); train one with "
                            "`progflow build-classifier --dataset emoji` and pass --features classifier:PATH")
    return load_shipped_classifier(seed, shipped=SHIPPED_EMOJI)
