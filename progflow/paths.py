"""The linear flow-matching path and its conversions (methods.md section 0).

Convention for the whole project: time runs from noise to data, ``t = 0`` is pure noise
and ``t = 1`` is data. With data ``x1`` and noise ``x0 ~ N(0, I)``::

    x_t = t * x1 + (1 - t) * x0          v = x1 - x0

From a velocity ``v`` at ``(x_t, t)``: data estimate ``x1_hat = x_t + (1 - t) * v`` and
noise estimate ``x0_hat = x_t - t * v``.

>>> import torch
>>> x1, x0 = torch.ones(2, 3), torch.zeros(2, 3)
>>> t = torch.tensor([0.25, 0.5])
>>> interpolate(x1, x0, t)[:, 0]
tensor([0.2500, 0.5000])
"""

from __future__ import annotations

import math
from typing import Literal

import torch

TimeSampler = Literal["uniform", "logit-normal"]


def expand_time(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample time ``(N,)`` (or a scalar) over ``like`` ``(N, ...)``."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    if t.ndim == 0:
        return t
    return t.reshape(t.shape[0], *([1] * (like.ndim - 1)))


def interpolate(x1: torch.Tensor, x0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``x_t = t * x1 + (1 - t) * x0``."""
    tt = expand_time(t, x1)
    return tt * x1 + (1 - tt) * x0


def velocity_target(x1: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
    """The conditional velocity ``v = x1 - x0`` (constant along the straight path)."""
    return x1 - x0


def data_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
    """``x1_hat = x_t + (1 - t) * v``."""
    return x_t + (1 - expand_time(t, x_t)) * v


def noise_from_velocity(x_t: torch.Tensor, v: torch.Tensor, t) -> torch.Tensor:
    """``x0_hat = x_t - t * v``."""
    return x_t - expand_time(t, x_t) * v


def velocity_from_data(x_t: torch.Tensor, x1_hat: torch.Tensor, t) -> torch.Tensor:
    """Inverse of :func:`data_from_velocity`: ``v = (x1_hat - x_t) / (1 - t)``, for ``t < 1``."""
    return (x1_hat - x_t) / (1 - expand_time(t, x_t))


def velocity_from_noise(x_t: torch.Tensor, x0_hat: torch.Tensor, t) -> torch.Tensor:
    """Inverse of :func:`noise_from_velocity`: ``v = (x_t - x0_hat) / t``, for ``t > 0``."""
    return (x_t - x0_hat) / expand_time(t, x_t)


def logit_normal_from_normal(n: torch.Tensor, loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """``t = sigmoid(loc + scale * n)`` for standard normal draws ``n``."""
    return torch.sigmoid(loc + scale * n)


def sample_time(
    kind: TimeSampler,
    n: int,
    *,
    generator: torch.Generator | None = None,
    loc: float = 0.0,
    scale: float = 1.0,
) -> torch.Tensor:
    """Draw ``n`` training times in ``(0, 1)``: ``uniform`` or ``logit-normal(loc, scale)``."""
    if kind == "uniform":
        return torch.rand(n, generator=generator)
    if kind == "logit-normal":
        return logit_normal_from_normal(torch.randn(n, generator=generator), loc, scale)
    raise ValueError(f"unknown time sampler {kind!r}")


def logit_normal_density(t: torch.Tensor, loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """Density of logit-normal(loc, scale) at ``t`` (for tests and plots)."""
    logit = torch.log(t) - torch.log1p(-t)
    z = (logit - loc) / scale
    return torch.exp(-0.5 * z**2) / (scale * math.sqrt(2 * math.pi) * t * (1 - t))
