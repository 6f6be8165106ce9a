"""Moving Fashion-MNIST: short videos of garments bouncing around a black frame.

Like Moving MNIST: each video holds 1..``max_items`` Fashion-MNIST items (the 28x28
content, taken with :func:`center_crop` of the source). For ``size < 48`` each item is
downscaled to 16x16 with area interpolation so it has room to move; otherwise it keeps
its 28x28. Every item starts at a random position inside the frame and moves with a
constant random velocity (speed ``0.05..0.1 * size`` pixels per frame), bouncing off
the frame edges (the position is reflected and that velocity component flips sign).
Items are pasted at the rounded position; overlapping items are combined by
pixelwise max. Everything is drawn from ``numpy.random.default_rng(seed)``.

Output :class:`ImageData`: images uint8 ``(N, C, T, H, W)`` with ``C`` the source
channels (1), ``T = frames`` and ``H = W = size``; label = class of the first item;
``crop=None``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError
from .base import ImageData, center_crop

__all__ = ["make_moving_fmnist", "bouncing_paths", "item_size_for"]

MIN_SIZE, MAX_SIZE = 24, 256


def item_size_for(size: int) -> int:
    """Side of the pasted items for a frame of side ``size`` (16 below 48, else 28)."""
    return 16 if size < 48 else 28


def bouncing_paths(
    rng: np.random.Generator, n: int, n_items: int, frames: int, size: int, item: int
) -> np.ndarray:
    """Top-left corners of ``n_items`` bouncing items in ``n`` videos.

    Returns float64 ``(n, n_items, frames, 2)`` positions ``(y, x)`` in
    ``[0, size - item]`` so a pasted ``item x item`` patch always lies inside the frame.
    """
    lim = float(size - item)
    pos = rng.uniform(0.0, lim, size=(n, n_items, 2))
    speed = rng.uniform(0.05, 0.1, size=(n, n_items)) * size
    theta = rng.uniform(0.0, 2 * np.pi, size=(n, n_items))
    vel = np.stack([np.sin(theta), np.cos(theta)], axis=-1) * speed[..., None]
    out = np.empty((n, n_items, frames, 2), dtype=np.float64)
    for t in range(frames):
        out[:, :, t] = pos
        pos = pos + vel
        # reflect off the edges (a speed < lim never needs more than one reflection)
        low, high = pos < 0.0, pos > lim
        pos = np.where(low, -pos, pos)
        pos = np.where(high, 2 * lim - pos, pos)
        vel = np.where(low | high, -vel, vel)
    return np.clip(out, 0.0, lim)


def make_moving_fmnist(
    source: ImageData,
    n: int,
    frames: int = 8,
    size: int = 32,
    max_items: int = 2,
    seed: int = 0,
) -> ImageData:
    """Build ``n`` moving-object videos from the items of ``source``.

    Args:
        source: image dataset (e.g. Fashion-MNIST with ``crop=(28, 28)``); its
            ``center_crop`` content is used as the items.
        n: number of videos.
        frames: frames per video (>= 2).
        size: frame side, in ``[24, 256]`` and large enough for the items.
        max_items: each video has ``1..max_items`` items (uniform).
        seed: random seed; identical arguments give identical videos.

    Returns:
        :class:`ImageData` with images uint8 ``(n, C, frames, size, size)``.
    """
    n, frames, size, max_items = int(n), int(frames), int(size), int(max_items)
    if source.is_video:
        raise DataError("moving-fmnist needs an image dataset as source, got video")
    if len(source) == 0:
        raise DataError("moving-fmnist source dataset is empty")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if frames < 2:
        raise ValueError(f"frames must be >= 2 for video, got {frames}")
    if not MIN_SIZE <= size <= MAX_SIZE:
        raise ValueError(f"video size must be in [{MIN_SIZE}, {MAX_SIZE}], got {size}")
    if max_items < 1:
        raise ValueError(f"max_items must be >= 1, got {max_items}")
    item = item_size_for(size)
    src = center_crop(source.images, source.crop)  # (M, C, h, w)
    c = int(src.shape[1])
    if min(src.shape[-2:]) < item:
        raise ValueError(f"source items of {tuple(src.shape[-2:])} are smaller than {item}x{item}")
    if item > size - 4:
        raise ValueError(f"video size {size} leaves no room for {item}x{item} items to move")

    rng = np.random.default_rng(int(seed))
    idx = rng.integers(0, len(source), size=(n, max_items))
    count = rng.integers(1, max_items + 1, size=n)  # items per video
    paths = bouncing_paths(rng, n, max_items, frames, size, item)
    pos = np.rint(paths).astype(np.int64)  # (n, K, T, 2)

    # Items as (n, K, C, item, item) uint8 numpy, resized with area interpolation.
    chosen = src[torch.from_numpy(idx.reshape(-1))]
    if tuple(chosen.shape[-2:]) != (item, item):
        chosen = F.interpolate(chosen.float(), size=(item, item), mode="area")
        chosen = chosen.round().clamp(0, 255).to(torch.uint8)
    items = chosen.numpy().reshape(n, max_items, c, item, item)

    video = np.zeros((n, frames, c, size, size), dtype=np.uint8)
    ar = np.arange(item)
    for k in range(max_items):
        vids = np.nonzero(count > k)[0]
        if vids.size == 0:
            continue
        patch = items[vids, k]  # (m, C, item, item)
        for t in range(frames):
            rows = pos[vids, k, t, 0][:, None] + ar[None, :]  # (m, item)
            cols = pos[vids, k, t, 1][:, None] + ar[None, :]
            bi = vids[:, None, None, None]
            ci = np.arange(c)[None, :, None, None]
            ri = rows[:, None, :, None]
            wi = cols[:, None, None, :]
            sl = video[bi, t, ci, ri, wi]
            video[bi, t, ci, ri, wi] = np.maximum(sl, patch)

    images = torch.from_numpy(np.ascontiguousarray(video.transpose(0, 2, 1, 3, 4)))
    labels = source.labels[torch.from_numpy(idx[:, 0])].clone()
    return ImageData(
        images=images,
        labels=labels,
        num_classes=source.num_classes,
        crop=None,
        class_names=list(source.class_names),
    )
