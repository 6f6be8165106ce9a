"""Scoring generated images: Frechet distance, precision/recall, class accuracy.

Samples are uint8 ``(N, H, W, C)`` arrays (``.npz`` key ``images``, optional ``labels``).
Features come from a pluggable :class:`FeatureExtractor`; the default is a small
Fashion-MNIST CNN trained once and cached in :func:`cache_dir` (env ``PROGFLOW_CACHE``
or ``~/.cache/progflow``). Typical use::

    from progflow.eval import evaluate_npz
    evaluate_npz("samples.npz")   # {"fd": ..., "precision": ..., "recall": ..., ...}
"""

from .bands import band_scores, split_bands
from .classifier import (
    FmnistCNN,
    build_fmnist_classifier,
    cache_dir,
    classifier_accuracy,
    default_classifier_path,
    get_fmnist_classifier,
    load_classifier,
    load_shipped_classifier,
    save_classifier,
    train_classifier,
)
from .evaluate import evaluate_arrays, evaluate_npz, fmnist_test_images, load_samples, reference_stats
from .features import DEFAULT_SPEC, ClassifierFeatures, FeatureExtractor, get_extractor
from .metrics import class_accuracy, feature_stats, frechet_distance, precision_recall

__all__ = [
    "band_scores",
    "split_bands",
    "FmnistCNN",
    "build_fmnist_classifier",
    "cache_dir",
    "classifier_accuracy",
    "default_classifier_path",
    "get_fmnist_classifier",
    "load_shipped_classifier",
    "load_classifier",
    "save_classifier",
    "train_classifier",
    "evaluate_arrays",
    "evaluate_npz",
    "fmnist_test_images",
    "load_samples",
    "reference_stats",
    "DEFAULT_SPEC",
    "ClassifierFeatures",
    "FeatureExtractor",
    "get_extractor",
    "class_accuracy",
    "feature_stats",
    "frechet_distance",
    "precision_recall",
]
