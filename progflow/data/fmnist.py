"""Fashion-MNIST from its gzip IDX files.

The four files (``train-images-idx3-ubyte.gz`` ...) are read straight into numpy with
``frombuffer`` (no per-image Python loop, nothing cached on disk). Images are
28x28 uint8, white garment on black (0) background; :func:`load_fashion_mnist` pads
them with zeros, symmetrically, to ``image_size`` and records ``crop=(28, 28)``.

IDX format: 2 zero bytes, a dtype code byte (only ``0x08`` = unsigned byte is
supported), a byte with the number of dimensions ``d``, then ``d`` big-endian uint32
sizes, then exactly ``prod(sizes)`` data bytes.
"""

from __future__ import annotations

import gzip
import os
import pathlib
import struct
import zlib
from typing import Literal

import numpy as np
import torch

from ..errors import DataError
from .base import ImageData

__all__ = [
    "DEFAULT_DATA_DIR",
    "FMNIST_CLASSES",
    "FMNIST_CONTENT",
    "FMNIST_FILES",
    "find_data_dir",
    "read_idx",
    "load_fashion_mnist",
]

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
DATA_ENV_VAR = "PROGFLOW_DATA"
FMNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
#: (h, w) of the real content; the loader pads it to ``image_size`` and records it as ``crop``
FMNIST_CONTENT = (28, 28)
#: split -> (images file, labels file)
FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_ALL_FILES = FMNIST_FILES["train"] + FMNIST_FILES["test"]
_GZIP_MAGIC = b"\x1f\x8b"


def find_data_dir(data_dir: str | os.PathLike | None = None) -> pathlib.Path:
    """Locate the Fashion-MNIST directory.

    Precedence: explicit ``data_dir`` > environment variable ``PROGFLOW_DATA`` >
    :data:`DEFAULT_DATA_DIR`. Raises :class:`DataError` naming the directory and the
    first missing file when the four IDX files are not all there.
    """
    if data_dir is not None and str(data_dir) != "":
        d = pathlib.Path(data_dir).expanduser()
    elif os.environ.get(DATA_ENV_VAR):
        d = pathlib.Path(os.environ[DATA_ENV_VAR]).expanduser()
    else:
        d = pathlib.Path(DEFAULT_DATA_DIR)
    for name in _ALL_FILES:
        if not (d / name).is_file():
            raise DataError(
                f"Fashion-MNIST not found in {d} (missing {name}); install the Debian package "
                f"dataset-fashion-mnist (apt-get install dataset-fashion-mnist) or point "
                f"--data-dir / {DATA_ENV_VAR} at the IDX files"
            )
    return d


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Parse a gzip-compressed (or plain) IDX file into a uint8 array of its stored shape.

    Raises :class:`DataError` naming the file when it is unreadable, a broken gzip
    stream, has a bad magic number, an unsupported dtype code, or fewer / more data
    bytes than its header declares.
    """
    path = pathlib.Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read IDX file {path}: {e.strerror or e}") from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"corrupt gzip data in IDX file {path}: {e}") from None
    if len(raw) < 4:
        raise DataError(f"IDX file {path} is truncated: {len(raw)} bytes, no header")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"bad magic number in IDX file {path}: {raw[:4].hex()} (not an IDX file, or not gzip)"
        )
    dtype_code, ndim = raw[2], raw[3]
    if dtype_code != 0x08:
        raise DataError(
            f"unsupported IDX dtype code 0x{dtype_code:02x} in {path} (only 0x08 unsigned byte)"
        )
    if ndim == 0:
        raise DataError(f"IDX file {path} declares 0 dimensions")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DataError(f"IDX file {path} is truncated inside its header")
    dims = struct.unpack(f">{ndim}I", raw[4:header_len])
    expected = int(np.prod(dims, dtype=np.int64))
    got = len(raw) - header_len
    if got < expected:
        raise DataError(
            f"IDX file {path} is truncated: header {list(dims)} needs {expected} data bytes, found {got}"
        )
    if got > expected:
        raise DataError(
            f"IDX file {path} has {got - expected} bytes of extra data after the {list(dims)} array"
        )
    # copy: a writable array that does not pin the decompressed bytes
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(dims).copy()


def load_fashion_mnist(
    data_dir: str | os.PathLike | None = None,
    split: Literal["train", "test"] = "train",
    image_size: int = 32,
) -> ImageData:
    """Load a Fashion-MNIST split, zero-padded to ``image_size``.

    Returns :class:`ImageData` with images uint8 ``(N, 1, image_size, image_size)``
    (N = 60000 train / 10000 test), labels int64 ``(N,)`` in ``[0, 10)`` and
    ``crop=(28, 28)``. The 28x28 content sits at offset ``(image_size - 28) // 2``.
    """
    if split not in FMNIST_FILES:
        raise DataError(f"unknown Fashion-MNIST split {split!r} (expected 'train' or 'test')")
    image_size = int(image_size)
    if image_size < 28:
        raise DataError(f"Fashion-MNIST image_size must be >= 28 (it is padded, not resized), got {image_size}")
    d = find_data_dir(data_dir)
    img_path, lab_path = (d / f for f in FMNIST_FILES[split])
    images = read_idx(img_path)
    labels = read_idx(lab_path)
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(f"Fashion-MNIST images in {img_path} have shape {images.shape}, expected (N, 28, 28)")
    if labels.ndim != 1:
        raise DataError(f"Fashion-MNIST labels in {lab_path} have shape {labels.shape}, expected (N,)")
    if images.shape[0] != labels.shape[0]:
        raise DataError(
            f"Fashion-MNIST count mismatch: {images.shape[0]} images in {img_path} "
            f"but {labels.shape[0]} labels in {lab_path}"
        )
    if labels.size and int(labels.max()) >= len(FMNIST_CLASSES):
        raise DataError(f"Fashion-MNIST label {int(labels.max())} out of range [0, 10) in {lab_path}")
    n = images.shape[0]
    top = (image_size - 28) // 2
    out = np.zeros((n, 1, image_size, image_size), dtype=np.uint8)
    out[:, 0, top : top + 28, top : top + 28] = images
    return ImageData(
        images=torch.from_numpy(out),
        labels=torch.from_numpy(labels.astype(np.int64)),
        num_classes=len(FMNIST_CLASSES),
        crop=FMNIST_CONTENT,
        class_names=list(FMNIST_CLASSES),
    )
