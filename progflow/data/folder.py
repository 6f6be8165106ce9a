"""A labelled image dataset from a folder with one subfolder per class.

Layout::

    root/
      cat/ 001.png 002.jpg ...
      dog/ ...

Sorted subfolder names give the class indices. Files with the extensions in
:data:`IMAGE_EXTENSIONS` (case-insensitive) are read with Pillow, converted to ``L``
(channels=1) or ``RGB`` (channels=3), resized so the shorter side equals
``image_size`` (bicubic, antialiased) and centre-cropped to a square. Other files are
ignored. Result: images uint8 ``(N, channels, image_size, image_size)``, ``crop=None``.
"""

from __future__ import annotations

import os
import pathlib

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .base import ImageData

__all__ = ["IMAGE_EXTENSIONS", "load_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def _resize_center(img: Image.Image, size: int) -> Image.Image:
    """Resize so the shorter side is ``size`` then centre-crop to ``size x size``."""
    w, h = img.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC, reducing_gap=None)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    return img


def _read_image(path: pathlib.Path, size: int, mode: str) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA", "LA", "RGBA") and mode == "RGB":
                im = im.convert("RGBA")
                bg = Image.new("RGBA", im.size, (0, 0, 0, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert(mode)
            im = _resize_center(im, size)
            arr = np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return arr.transpose(2, 0, 1)


def load_image_folder(root: str | os.PathLike, image_size: int, channels: int = 3) -> ImageData:
    """Read ``root/<class>/<image>`` into an :class:`ImageData`.

    Args:
        root: directory with one subfolder per class.
        image_size: output side length (square frames).
        channels: 1 (grayscale ``L``) or 3 (``RGB``).

    Raises:
        DataError: the root does not exist / is not a directory, has no class
            subfolders, contains no images, or an image is unreadable (the message
            names the file).
        ValueError: bad ``channels`` or ``image_size``.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    image_size = int(image_size)
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    root = pathlib.Path(root).expanduser()
    if not root.exists():
        raise DataError(f"image folder {root} does not exist")
    if not root.is_dir():
        raise DataError(f"image folder {root} is not a directory")
    class_dirs = sorted(
        (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.name,
    )
    if not class_dirs:
        raise DataError(f"image folder {root} has no class subfolders (expected root/<class>/<image>)")
    mode = "L" if channels == 1 else "RGB"
    files: list[tuple[pathlib.Path, int]] = []
    for idx, cdir in enumerate(class_dirs):
        for p in sorted(cdir.rglob("*")):
            if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."):
                files.append((p, idx))
    if not files:
        raise DataError(
            f"image folder {root} contains no images ({', '.join(IMAGE_EXTENSIONS)}) in its class subfolders"
        )
    images = np.empty((len(files), channels, image_size, image_size), dtype=np.uint8)
    for i, (p, _) in enumerate(files):
        images[i] = _read_image(p, image_size, mode)
    labels = torch.tensor([c for _, c in files], dtype=torch.int64)
    return ImageData(
        images=torch.from_numpy(images),
        labels=labels,
        num_classes=len(class_dirs),
        crop=None,
        class_names=[p.name for p in class_dirs],
    )
