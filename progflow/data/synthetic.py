"""A tiny deterministic class-conditional toy image dataset for fast tests.

Every class ``c`` is one bright shape on a dark background:

* the shape kind cycles with the class: square, disc, horizontal bar, vertical bar,
  ring (``c % 5``);
* its centre sits on a circle around the frame centre at angle ``2*pi*c/num_classes``
  (radius ``0.25 * image_size``);
* with several channels, the colour also depends on the class.

Each sample gets a small random jitter of position (about ``image_size/32`` px), size
and brightness, plus mild Gaussian pixel noise, all drawn from a ``torch.Generator``
seeded with ``seed``: the same arguments always give the same tensor. Labels are
``i % num_classes`` (balanced). Output: uint8 ``(n, channels, image_size, image_size)``,
``crop=None``. Vectorised over samples: thousands of images take milliseconds.
"""

from __future__ import annotations

import math

import torch

from .base import ImageData

__all__ = ["make_synthetic", "SHAPE_KINDS"]

SHAPE_KINDS = ("square", "disc", "hbar", "vbar", "ring")


def _class_colours(num_classes: int, channels: int) -> torch.Tensor:
    """``(num_classes, channels)`` colour weights in ``[0.35, 1]``; all ones for 1 channel."""
    if channels == 1:
        return torch.ones(num_classes, 1)
    c = torch.arange(num_classes, dtype=torch.float32)[:, None]
    k = torch.arange(channels, dtype=torch.float32)[None, :]
    phase = 2 * math.pi * (c / max(num_classes, 1) + k / channels)
    return 0.675 + 0.325 * torch.cos(phase)


def make_synthetic(
    n: int,
    image_size: int = 32,
    channels: int = 1,
    num_classes: int = 10,
    seed: int = 0,
) -> ImageData:
    """Generate ``n`` labelled toy images (see module docstring for the patterns).

    Returns :class:`ImageData` with images uint8 ``(n, channels, image_size, image_size)``,
    labels int64 ``i % num_classes``, ``crop=None`` and class names like ``"3:hbar"``.
    """
    n, image_size, channels, num_classes = int(n), int(image_size), int(channels), int(num_classes)
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if image_size < 8:
        raise ValueError(f"image_size must be >= 8, got {image_size}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    g = torch.Generator().manual_seed(int(seed))
    labels = torch.arange(n, dtype=torch.int64) % num_classes
    s = float(image_size)

    # Per-sample parameters (n,)
    angle = 2 * math.pi * labels.float() / num_classes
    radius = 0.25 * s
    jitter = (s / 32.0) * (torch.rand(n, 2, generator=g) * 2 - 1)
    cy = (s - 1) / 2 - radius * torch.cos(angle) + jitter[:, 0]
    cx = (s - 1) / 2 + radius * torch.sin(angle) + jitter[:, 1]
    half = s * (0.13 + 0.03 * torch.rand(n, generator=g))  # half-size of the shape
    bright = 0.8 + 0.2 * torch.rand(n, generator=g)
    kind = labels % len(SHAPE_KINDS)

    # Distances on the pixel grid, (n, H, W)
    ys = torch.arange(image_size, dtype=torch.float32)
    dy = (ys[None, :, None] - cy[:, None, None]).abs()
    dx = (ys[None, None, :] - cx[:, None, None]).abs()
    h = half[:, None, None]
    dist = torch.sqrt(dx**2 + dy**2)
    masks = torch.stack(
        [
            (torch.maximum(dx, dy) <= h * 0.85),  # square
            (dist <= h),  # disc
            (dy <= h * 0.4) & (dx <= h * 1.4),  # horizontal bar
            (dx <= h * 0.4) & (dy <= h * 1.4),  # vertical bar
            (dist <= h * 1.1) & (dist >= h * 0.6),  # ring
        ],
        dim=1,
    )  # (n, 5, H, W)
    mask = masks[torch.arange(n), kind].float()  # (n, H, W)

    colour = _class_colours(num_classes, channels)[labels]  # (n, C)
    x = 20.0 + 215.0 * mask[:, None] * (bright[:, None] * colour)[:, :, None, None]
    x = x + 8.0 * torch.randn(x.shape, generator=g)
    images = x.round().clamp(0, 255).to(torch.uint8)
    names = [f"{c}:{SHAPE_KINDS[c % len(SHAPE_KINDS)]}" for c in range(num_classes)]
    return ImageData(images=images, labels=labels, num_classes=num_classes, crop=None, class_names=names)
