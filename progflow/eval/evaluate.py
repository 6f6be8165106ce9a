"""Score generated samples against the Fashion-MNIST test set.

Sample files are ``.npz`` (read with ``allow_pickle=False``) holding

* ``images``: uint8 ``(N, H, W, C)``, channels last -- ``(N, 28, 28, 1)`` for
  Fashion-MNIST (32x32 frames are centre-cropped to 28x28 by the default extractor);
* ``labels`` (optional): integer ``(N,)``, the class each sample was conditioned on.

:func:`evaluate_npz` returns a JSON-able dict::

    {"file", "n", "fd", "precision", "recall", "class_accuracy", "features", "reference", "k"}

``fd`` is the Frechet distance in the extractor's feature space between the samples
and all 10000 reference (test) images; ``precision``/``recall`` use the k-NN manifolds
of Kynkaanniemi et al. with the reference subsampled deterministically (numpy
``default_rng(0)``, no replacement) to ``min(10000, max(n, 1000))`` points, and at
most 10000 samples (same rule); ``class_accuracy`` is the fraction of samples the
extractor's classifier assigns to their label (``None`` without labels or logits).
Reference features are cached in :func:`~progflow.eval.classifier.cache_dir` as
``ref-fmnist-test-<extractor name>.npz``.
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
from .metrics import class_accuracy, feature_stats, frechet_distance, precision_recall

__all__ = [
    "load_samples",
    "fmnist_test_images",
    "reference_stats",
    "evaluate_arrays",
    "evaluate_npz",
    "PR_MIN_POINTS",
    "PR_MAX_POINTS",
]

PR_MIN_POINTS = 1000
PR_MAX_POINTS = 10000


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


def _cache_file(extractor: FeatureExtractor) -> pathlib.Path:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", str(extractor.name))[:120] or "features"
    return cache_dir() / f"ref-fmnist-test-{safe}.npz"


def reference_stats(extractor: FeatureExtractor, *, data_dir=None) -> np.ndarray:
    """Features ``(10000, D)`` float64 of the Fashion-MNIST test set (28x28 crop).

    Cached as ``.npz`` (key ``feats``) in the cache dir, keyed by ``extractor.name``;
    an unreadable cache file is recomputed and rewritten atomically.
    """
    path = _cache_file(extractor)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                feats = np.asarray(z["feats"], dtype=np.float64)
            if feats.ndim == 2 and feats.shape[0] > 0 and np.all(np.isfinite(feats)):
                return feats
        except Exception:  # corrupt cache: recompute below
            pass
    images, _ = fmnist_test_images(data_dir)
    feats = np.asarray(extractor.features(images), dtype=np.float64)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp.npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, feats=feats, name=np.array(str(extractor.name)))
        publish_file(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return feats


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
) -> dict:
    """Score uint8 ``(N, H, W, C)`` images against reference features ``(M, D)``.

    Returns ``{"n", "fd", "precision", "recall", "class_accuracy", "features",
    "reference", "k"}`` (JSON-able; ``class_accuracy`` is None when ``labels`` is None
    or the extractor returns no logits). ``reference`` defaults to
    ``"fashion-mnist test (M)"``. Needs ``N > k``.
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
    mu_r, sig_r = feature_stats(ref)
    fd = frechet_distance(mu_f, sig_f, mu_r, sig_r)
    m = min(PR_MAX_POINTS, ref.shape[0], max(n, PR_MIN_POINTS))
    precision, recall = precision_recall(ref[_subsample(ref.shape[0], m)], feats[_subsample(n, PR_MAX_POINTS)], k=k)
    acc = None
    if labels is not None and logits is not None:
        acc = class_accuracy(np.asarray(logits), labels)
    return {
        "n": n,
        "fd": float(fd),
        "precision": float(precision),
        "recall": float(recall),
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
) -> dict:
    """Score a sample ``.npz`` file; see the module docstring for the result dict.

    ``extractor`` is a FeatureExtractor, a spec string for
    :func:`~progflow.eval.features.get_extractor`, or None for the default
    ``"fmnist-classifier"`` (trained and cached on first use).
    """
    images, labels = load_samples(path)
    if extractor is None or isinstance(extractor, str):
        extractor = get_extractor(extractor or "fmnist-classifier", data_dir=data_dir)
    ref = reference_stats(extractor, data_dir=data_dir)
    return {"file": str(path), **evaluate_arrays(images, labels, extractor, ref, k=k)}
