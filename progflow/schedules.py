"""Time grids for samplers (float64, from 0 = noise to 1 = data).

>>> uniform_grid(4).tolist()
[0.0, 0.25, 0.5, 0.75, 1.0]
"""

from __future__ import annotations

import torch


def uniform_grid(n: int) -> torch.Tensor:
    """``n`` equal steps from 0 to 1: a float64 tensor of ``n + 1`` times."""
    if n < 1:
        raise ValueError(f"a time grid needs at least one step, got {n}")
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style shift in our convention: ``t' = t / (t + s * (1 - t))``.

    ``s > 1`` spends more of the grid near the noise end (small ``t``).
    """
    return t / (t + shift * (1 - t))


def shifted_grid(n: int, shift: float) -> torch.Tensor:
    """A uniform grid of ``n`` steps passed through :func:`shift_time`."""
    if shift <= 0:
        raise ValueError(f"grid shift must be positive, got {shift}")
    return shift_time(uniform_grid(n), shift)
