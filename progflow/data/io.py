"""Writing sample grids: PNG for images, animated GIF for videos.

Grid layout: ``ncol = nrow`` tiles per row (default ``ceil(sqrt(N))``) and
``ceil(N / ncol)`` rows, separated and surrounded by a ``BORDER`` (2) pixel border of
``pad_value``. For tiles of ``h x w`` the grid is
``(rows * h + (rows + 1) * 2) x (ncol * w + (ncol + 1) * 2)`` pixels.

Files are written atomically: to a temporary file in the target directory, then
``os.replace``-d onto the path, so readers never see a half-written file.
"""

from __future__ import annotations

import math
import os
import pathlib
import tempfile

import numpy as np
import torch
from PIL import Image

__all__ = ["BORDER", "make_grid", "save_grid_png", "save_video"]

BORDER = 2


def _to_numpy_u8(x: torch.Tensor | np.ndarray) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixels, got {x.dtype} (use progflow.data.to_uint8)")
    return x


def _to_nhwc(x: np.ndarray) -> np.ndarray:
    """(N,H,W) / (N,C,H,W) / (N,H,W,C) -> (N,H,W,C) with C in {1, 3, 4}.

    A 4-D array whose axis 1 is 1, 3 or 4 and whose last axis is not is taken as
    channels-first; otherwise channels-last.
    """
    if x.ndim == 3:
        return x[..., None]
    if x.ndim != 4:
        raise ValueError(f"expected (N,C,H,W) or (N,H,W,C) images, got shape {x.shape}")
    if x.shape[1] in (1, 3, 4) and x.shape[-1] not in (1, 3, 4):
        x = x.transpose(0, 2, 3, 1)
    elif x.shape[-1] not in (1, 3, 4):
        raise ValueError(f"cannot tell the channel axis of images with shape {x.shape}")
    return x


def make_grid(nhwc: np.ndarray, nrow: int | None = None, pad_value: int = 255) -> np.ndarray:
    """Tile uint8 ``(N, H, W, C)`` images into one ``(GH, GW, C)`` grid (see module doc)."""
    n, h, w, c = nhwc.shape
    if n == 0:
        raise ValueError("cannot make a grid of 0 images")
    ncol = int(nrow) if nrow else math.ceil(math.sqrt(n))
    ncol = max(1, min(ncol, n))
    rows = math.ceil(n / ncol)
    b = BORDER
    grid = np.full((rows * h + (rows + 1) * b, ncol * w + (ncol + 1) * b, c), pad_value, np.uint8)
    for i in range(n):
        r, q = divmod(i, ncol)
        y, x0 = b + r * (h + b), b + q * (w + b)
        grid[y : y + h, x0 : x0 + w] = nhwc[i]
    return grid


def _pil(grid: np.ndarray) -> Image.Image:
    c = grid.shape[-1]
    if c == 1:
        return Image.fromarray(grid[..., 0], mode="L")
    return Image.fromarray(grid, mode="RGB" if c == 3 else "RGBA")


def _atomic_save(path: str | os.PathLike, write) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; give the file normal permissions
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def save_grid_png(
    images_u8: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    nrow: int | None = None,
    pad_value: int = 255,
) -> pathlib.Path:
    """Write uint8 images ``(N, H, W, C)`` or ``(N, C, H, W)`` (or ``(N, H, W)``) as a PNG grid.

    ``nrow`` is the number of images per grid row (default ``ceil(sqrt(N))``).
    Returns the written path.
    """
    grid = make_grid(_to_nhwc(_to_numpy_u8(images_u8)), nrow=nrow, pad_value=pad_value)
    img = _pil(grid)
    return _atomic_save(path, lambda f: img.save(f, format="PNG"))


def save_video(
    videos_u8: torch.Tensor | np.ndarray,
    path: str | os.PathLike,
    nrow: int | None = None,
    fps: float = 8.0,
    pad_value: int = 255,
) -> pathlib.Path:
    """Write uint8 videos ``(N, C, T, H, W)`` as one looping animated GIF.

    Frame ``t`` of the GIF is the grid (see :func:`make_grid`) of frame ``t`` of every
    video. ``C`` must be 1 or 3. Returns the written path.
    """
    v = _to_numpy_u8(videos_u8)
    if v.ndim != 5 or v.shape[1] not in (1, 3):
        raise ValueError(f"expected (N, C, T, H, W) videos with C in (1, 3), got shape {v.shape}")
    t_len = v.shape[2]
    frames = []
    for t in range(t_len):
        nhwc = v[:, :, t].transpose(0, 2, 3, 1)
        frames.append(_pil(make_grid(nhwc, nrow=nrow, pad_value=pad_value)))
    duration = max(20, int(round(1000.0 / fps)))

    def write(f):
        frames[0].save(
            f, format="GIF", save_all=True, append_images=frames[1:], duration=duration, loop=0,
            optimize=False, disposal=1,
        )

    return _atomic_save(path, write)
