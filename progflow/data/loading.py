"""One entry point that builds any supported dataset from config-like arguments.

Kinds (:data:`DATASET_KINDS`):

* ``"fashion-mnist"``: the IDX files (``data_dir`` / ``PROGFLOW_DATA`` / default dir),
  zero-padded to ``image_size``; images ``(N, 1, S, S)``, ``crop=(28, 28)``.
* ``"folder"``: ``data_dir`` is the root of ``root/<class>/<image>`` (required);
  images ``(N, channels, S, S)``, ``crop=None``. The split is not used.
* ``"synthetic"``: :func:`make_synthetic` with ``n`` samples (2048 when ``n == 0``);
  the test split uses ``seed + 1``.
* ``"emoji"``: the 64x64 colour emoji of :mod:`progflow.data.emoji` from ``data_dir``
  (default ``$PROGFLOW_CACHE/data/emoji-16.0.0``); images ``(N, 3, 64, 64)``, 9 classes.
* ``"moving-fmnist"``: :func:`make_moving_fmnist` video ``(N, 1, frames, S, S)`` built
  from the Fashion-MNIST split of the same name; ``n`` videos (10000 train / 1000
  test when ``n == 0``); the test split uses ``seed + 1``.
"""

from __future__ import annotations

import os

from ..errors import DataError
from .base import ImageData
from .emoji import IMAGE_SIZE as EMOJI_SIZE, load_emoji
from .fmnist import FMNIST_CONTENT, load_fashion_mnist
from .folder import load_image_folder
from .synthetic import make_synthetic
from .video import make_moving_fmnist

__all__ = ["DATASET_KINDS", "SPLITS", "load_dataset", "output_crop"]

DATASET_KINDS = ("fashion-mnist", "folder", "synthetic", "moving-fmnist", "emoji")
SPLITS = ("train", "test")
DEFAULT_SYNTHETIC_N = 2048
DEFAULT_VIDEO_N = {"train": 10000, "test": 1000}


def load_dataset(
    kind: str,
    *,
    split: str = "train",
    data_dir: str | os.PathLike | None = None,
    image_size: int = 32,
    channels: int = 1,
    frames: int = 8,
    n: int = 0,
    seed: int = 0,
) -> ImageData:
    """Build the dataset ``kind`` (see the module docstring) for ``split``.

    Raises:
        DataError: unknown kind or split, missing ``data_dir`` for ``"folder"``,
            ``channels != 1`` for the grayscale Fashion-MNIST kinds, and every data
            problem reported by the loaders; invalid sizes (``ValueError`` in the
            builders) are re-raised as ``DataError`` so the CLI reports them cleanly.
    """
    if kind not in DATASET_KINDS:
        raise DataError(f"unknown dataset kind {kind!r}; expected one of {', '.join(DATASET_KINDS)}")
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected 'train' or 'test'")
    n = int(n)
    if n < 0:
        raise DataError(f"dataset size n must be >= 0, got {n}")
    if kind in ("fashion-mnist", "moving-fmnist") and int(channels) != 1:
        raise DataError(f"{kind} is grayscale: channels must be 1, got {channels}")
    if kind == "emoji" and (int(channels) != 3 or int(image_size) != EMOJI_SIZE):
        raise DataError(f"emoji images are 64x64 RGB: image_size must be {EMOJI_SIZE} and channels 3; "
                        f"got {image_size} and {channels}")
    split_seed = int(seed) + (1 if split == "test" else 0)
    try:
        return _build(kind, split, data_dir, int(image_size), int(channels), int(frames), n, split_seed)
    except ValueError as e:  # bad sizes etc. from the builders: a user input problem
        raise DataError(f"invalid arguments for dataset {kind!r}: {e}") from None


def output_crop(kind: str) -> tuple[int, int] | None:
    """The ``crop`` that :func:`load_dataset` records for ``kind``, known without loading
    anything (sampling crops generated images the way the data were padded)."""
    return FMNIST_CONTENT if kind == "fashion-mnist" else None


def _build(kind, split, data_dir, image_size, channels, frames, n, seed) -> ImageData:
    if kind == "fashion-mnist":
        return load_fashion_mnist(data_dir, split=split, image_size=image_size)
    if kind == "folder":
        if data_dir is None or str(data_dir) == "":
            raise DataError("dataset kind 'folder' needs data_dir (the root of root/<class>/<image>)")
        return load_image_folder(data_dir, image_size=image_size, channels=channels)
    if kind == "emoji":
        return load_emoji(data_dir, split=split)
    if kind == "synthetic":
        return make_synthetic(n or DEFAULT_SYNTHETIC_N, image_size=image_size, channels=channels, seed=seed)
    # moving-fmnist: items from the Fashion-MNIST split of the same name
    source = load_fashion_mnist(data_dir, split=split, image_size=28)
    return make_moving_fmnist(source, n or DEFAULT_VIDEO_N[split], frames=frames, size=image_size, seed=seed)
