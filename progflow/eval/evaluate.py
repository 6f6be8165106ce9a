"""Score generated samples against the Fashion-MNIST test set.

Sample files are ``.npz`` (read with ``allow_pickle=False``) holding

* ``images``: uint8 ``(N, H, W, C)``, channels last -- ``(N, 28, 28, 1)`` for
  Fashion-MNIST (32x32 frames are centre-cropped to 28x28 by the default extractor);
* ``labels`` (optional): integer ``(N,)``, the class each sample was conditioned on.

:func:`evaluate_npz` returns a JSON-able dict::

    {"file", "n", "fd", "precision", "recall", "density", "coverage", "class_accuracy", "features",
     "reference", "k"}

``fd`` is the Frechet distance in the extractor's feature space between the samples
and all 10000 reference (test) images; ``precision``/``recall`` use the k-NN manifolds
of Kynkaanniemi et al. with the reference subsampled deterministically (numpy
``default_rng(0)``, no replacement) to ``min(10000, max(n, 1000))`` points, and at
most 10000 samples (same rule); ``class_accuracy`` is the fraction of samples the
extractor's classifier assigns to their label (``None`` without labels or logits).
``density``/``coverage`` (Naeem et al., ``k = 5``) use the same subsets.
Reference features are cached in :func:`~progflow.eval.classifier.cache_dir` as
``ref-fmnist-test-<extractor name>.npz`` (``ref-emoji-test-...`` for ``dataset="emoji"``,
whose reference is the emoji test split).

Class mix: samples are drawn class-balanced, and the emoji test split is not (its largest
category is 4.5 times its smallest). When the samples carry labels and the reference's
labels are known, the reference rows are weighted for the mean and covariance of the FD so
that its class mix is the samples' (weights ``p_samples(c) / p_reference(c)``); equal mixes
(Fashion-MNIST) use no weights at all.
"""

from __future__ import annotations

import os
import pathlib
import re
import tempfile

import numpy as np

from ..errors import ProgflowError
from .classifier import cache_dir, publish_file
from .features import FeatureExtractor, check_images_u8, get_extractor
from .metrics import class_accuracy, density_coverage, feature_stats, frechet_distance, precision_recall

__all__ = [
    "load_samples",
    "fmnist_test_images",
    "reference_stats",
    "reference_set",
    "reference_images",
    "evaluate_arrays",
    "evaluate_npz",
    "PR_MIN_POINTS",
    "PR_MAX_POINTS",
]

PR_MIN_POINTS = 1000
PR_MAX_POINTS = 10000
DC_K = 5
REFERENCE_NAMES = {"fashion-mnist": "fmnist", "emoji": "emoji"}  # dataset kind -> cache-file tag


def load_samples(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray | None]:
    """Read a sample ``.npz`` -> (uint8 images ``(N, H, W, C)``, int64 labels ``(N,)`` or None).

    Raises ProgflowError naming the file if it is missing, not a readable npz (corrupt,
    truncated, a pickle, a bare ``.npy``), lacks ``images``, or if ``images`` is not a
    non-empty uint8 4-D array or ``labels`` is not an integer ``(N,)`` array.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ProgflowError(f"sample file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ProgflowError(f"not an .npz archive (a bare array?): {path}")
        with z:
            keys = set(z.files)
            if "images" not in keys:
                raise ProgflowError(f"no 'images' array in {path} (found: {sorted(keys) or 'nothing'})")
            images = z["images"]
            labels = z["labels"] if "labels" in keys else None
    except ProgflowError:
        raise
    except Exception as exc:  # OSError, ValueError (pickle), BadZipFile, EOFError, zlib.error...
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:100]
        raise ProgflowError(f"cannot read sample file {path}: not a valid .npz ({first})") from None
    if images.dtype != np.uint8:
        raise ProgflowError(f"'images' in {path} must be uint8, got {images.dtype}")
    if images.ndim != 4:
        raise ProgflowError(f"'images' in {path} must be (N, H, W, C), got shape {images.shape}")
    if images.shape[0] == 0:
        raise ProgflowError(f"'images' in {path} is empty")
    if labels is not None:
        if not np.issubdtype(labels.dtype, np.integer) or labels.shape != (images.shape[0],):
            raise ProgflowError(
                f"'labels' in {path} must be integer ({images.shape[0]},), got {labels.dtype} {labels.shape}"
            )
        labels = labels.astype(np.int64)
    return images, labels


def fmnist_test_images(data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """The Fashion-MNIST test set as uint8 ``(10000, 28, 28, 1)`` and int64 labels ``(10000,)``."""
    from ..data import center_crop, load_fashion_mnist

    data = load_fashion_mnist(data_dir, split="test")
    imgs = center_crop(data.images, data.crop or (28, 28))  # (N, 1, 28, 28)
    return imgs.permute(0, 2, 3, 1).contiguous().numpy(), data.labels.numpy()


def _check_dataset(dataset: str) -> str:
    if dataset not in REFERENCE_NAMES:
        raise ProgflowError(f"no scoring reference for dataset {dataset!r}; expected one of "
                            f"{', '.join(REFERENCE_NAMES)}")
    return REFERENCE_NAMES[dataset]


def _cache_file(extractor: FeatureExtractor, dataset: str = "fashion-mnist") -> pathlib.Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(extractor.name))[:120] or "features"
    return cache_dir() / f"ref-{_check_dataset(dataset)}-test-{safe}.npz"


def reference_images(dataset: str = "fashion-mnist", data_dir=None) -> tuple[np.ndarray, np.ndarray]:
    """The test split scores are measured against: uint8 ``(N, H, W, C)`` and labels ``(N,)``."""
    _check_dataset(dataset)
    if dataset == "emoji":
        from .emoji import emoji_test_images

        return emoji_test_images(data_dir)
    return fmnist_test_images(data_dir)


def reference_stats(extractor: FeatureExtractor, *, data_dir=None, dataset: str = "fashion-mnist") -> np.ndarray:
    """Features ``(N, D)`` float64 of the test set of ``dataset`` (Fashion-MNIST: 10000 at
    the 28x28 crop). See :func:`reference_set`."""
    return reference_set(extractor, data_dir=data_dir, dataset=dataset)[0]


def reference_set(extractor: FeatureExtractor, *, data_dir=None,
                  dataset: str = "fashion-mnist") -> tuple[np.ndarray, np.ndarray]:
    """Features ``(N, D)`` float64 and labels ``(N,)`` of the test set of ``dataset``.

    Cached as ``.npz`` (keys ``feats``, ``labels``) in the cache dir, keyed by the dataset
    and ``extractor.name``; an unreadable cache file is recomputed and rewritten atomically.
    """
    path = _cache_file(extractor, dataset)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = np.asarray(z["feats"], dtype=np.float64)
                labels = np.asarray(z["labels"], dtype=np.int64)
            if feats.ndim == 2 and feats.shape[0] > 0 and np.all(np.isfinite(feats)) and labels.shape == feats.shape[:1]:
                return feats, labels
        except Exception:  # corrupt cache, or one written before labels were kept: recompute below
            pass
    images, labels = reference_images(dataset, data_dir)
    feats = np.asarray(extractor.features(images), dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, feats=feats, labels=np.asarray(labels, dtype=np.int64), name=np.array(str(extractor.name)))
        publish_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return feats, np.asarray(labels, dtype=np.int64)


def class_mix_weights(ref_labels: np.ndarray, sample_labels: np.ndarray) -> np.ndarray | None:
    """Weights ``(M,)`` giving the reference the samples' class mix, ``p_s(c) / p_r(c)``;
    None when the mixes already agree (or a sample class is absent from the reference)."""
    ref_labels, sample_labels = np.asarray(ref_labels), np.asarray(sample_labels)
    k = int(max(ref_labels.max(initial=0), sample_labels.max(initial=0))) + 1
    p_r = np.bincount(ref_labels, minlength=k) / len(ref_labels)
    p_s = np.bincount(sample_labels, minlength=k) / len(sample_labels)
    if np.allclose(p_r, p_s) or np.any((p_s > 0) & (p_r == 0)):
        return None
    return (p_s / np.where(p_r > 0, p_r, 1.0))[ref_labels]


def _subsample(n_total: int, m: int) -> np.ndarray:
    """Sorted deterministic subset of ``range(n_total)`` of size ``m`` (all if ``m >= n_total``)."""
    if m >= n_total:
        return np.arange(n_total)
    return np.sort(np.random.default_rng(0).choice(n_total, size=m, replace=False))


def evaluate_arrays(
    images_u8: np.ndarray,
    labels: np.ndarray | None,
    extractor: FeatureExtractor,
    ref_feats: np.ndarray,
    *,
    k: int = 3,
    reference: str | None = None,
    ref_labels: np.ndarray | None = None,
) -> dict:
    """Score uint8 ``(N, H, W, C)`` images against reference features ``(M, D)``.

    Returns ``{"n", "fd", "precision", "recall", "density", "coverage", "class_accuracy",
    "features", "reference", "k"}`` (JSON-able; ``class_accuracy`` is None when ``labels``
    is None or the extractor returns no logits). ``reference`` defaults to
    ``"fashion-mnist test (M)"``. With ``labels`` and ``ref_labels`` the FD's reference is
    weighted to the samples' class mix (:func:`class_mix_weights`). Needs ``N > k``.
    """
    images = check_images_u8(images_u8)
    n = int(images.shape[0])
    ref = np.asarray(ref_feats, dtype=np.float64)
    if n <= k or n < 2:
        raise ProgflowError(f"need more than {max(k, 1)} samples to score, got {n}")
    if labels is not None:
        labels = np.asarray(labels).reshape(-1)
        if labels.shape[0] != n:
            raise ProgflowError(f"got {labels.shape[0]} labels for {n} images")
    if hasattr(extractor, "features_and_logits"):
        feats, logits = extractor.features_and_logits(images)
    else:
        feats = extractor.features(images)
        logits = extractor.logits(images) if labels is not None else None
    feats = np.asarray(feats, dtype=np.float64)
    if feats.ndim != 2 or feats.shape[0] != n or feats.shape[1] != ref.shape[1]:
        raise ProgflowError(
            f"extractor {extractor.name!r} gave features {feats.shape}; expected ({n}, {ref.shape[1]})"
        )
    mu_f, sig_f = feature_stats(feats)
    weights = class_mix_weights(ref_labels, labels) if labels is not None and ref_labels is not None else None
    mu_r, sig_r = feature_stats(ref, weights)
    fd = frechet_distance(mu_f, sig_f, mu_r, sig_r)
    m = min(PR_MAX_POINTS, ref.shape[0], max(n, PR_MIN_POINTS))
    ref_sub, fake_sub = ref[_subsample(ref.shape[0], m)], feats[_subsample(n, PR_MAX_POINTS)]
    precision, recall = precision_recall(ref_sub, fake_sub, k=k)
    density, coverage = density_coverage(ref_sub, fake_sub, k=DC_K)
    acc = None
    if labels is not None and logits is not None:
        acc = class_accuracy(np.asarray(logits), labels)
    return {
        "n": n,
        "fd": float(fd),
        "precision": float(precision),
        "recall": float(recall),
        "density": density,
        "coverage": coverage,
        "class_accuracy": None if acc is None else float(acc),
        "features": str(extractor.name),
        "reference": reference or f"fashion-mnist test ({ref.shape[0]})",
        "k": int(k),
    }


def evaluate_npz(
    path: str | os.PathLike,
    *,
    extractor: FeatureExtractor | str | None = None,
    data_dir=None,
    k: int = 3,
    dataset: str = "fashion-mnist",
) -> dict:
    """Score a sample ``.npz`` file against the test split of ``dataset``; see the module
    docstring for the result dict.

    ``extractor`` is a FeatureExtractor, a spec string for
    :func:`~progflow.eval.features.get_extractor`, or None for the dataset's own classifier
    (``"fmnist-classifier"`` or ``"emoji-classifier"``).
    """
    from .features import default_spec

    images, labels = load_samples(path)
    if extractor is None or isinstance(extractor, str):
        extractor = get_extractor(extractor or default_spec(dataset), data_dir=data_dir)
    ref, ref_labels = reference_set(extractor, data_dir=data_dir, dataset=dataset)
    return {"file": str(path), **evaluate_arrays(images, labels, extractor, ref, k=k, ref_labels=ref_labels,
                                                 reference=f"{dataset} test ({ref.shape[0]})")}
