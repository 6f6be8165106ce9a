"""Invertible multi-scale decompositions: a sample -> a list of stage tensors, coarse to fine.

A :class:`Decomposition` is a tiny stateless object with ``split(x) -> list[Tensor]``,
``merge(stages) -> Tensor`` (the exact inverse), ``stage_shapes(shape)`` and
``num_stages``. Inputs are batches of images ``(N, C, H, W)`` or videos
``(N, C, T, H, W)``; videos are decomposed spatially, frame by frame (``T`` is folded
into the batch), as in the DFM paper (methods.md section 2).

Implementations, with ``S`` stages and ``H, W`` divisible by ``2**(S-1)``:

* :class:`LaplacianPyramid` -- ``X_1 = down^(S-1)(X)`` and, for ``s > 1``,
  ``X_s = down^(S-s)(X) - up(down^(S-s+1)(X))``; ``down``/``up`` are bilinear resizes by
  2 (``align_corners=False``, no antialias). Stage ``s`` has ``C`` channels at
  ``H / 2**(S-s)``. Merging upsamples and adds stage by stage; it is exact because each
  residual is a difference.
* :class:`HaarDWT` -- ``S - 1`` levels of the orthonormal 2-D Haar transform. Stage 1
  is the coarsest LL band ``(C, H / 2**(S-1))``; stage ``s > 1`` holds the three detail
  bands of level ``S - s + 1`` stacked on the channel axis, ``[LH, HL, HH]`` (``3C``
  channels, band-major), at that level's resolution ``H / 2**(S-s+1)``. Being
  orthonormal, the transform preserves the sum of squares; the LL band grows by 2 per
  level (it is ``2**k`` times the block mean).
* :class:`Identity` -- one stage, the sample itself.

:class:`Standardized` divides every stage by a per-stage scale (estimated with
:func:`estimate_stage_std`) in ``split`` and multiplies it back in ``merge``.

>>> import torch
>>> x = torch.randn(2, 1, 8, 8)
>>> d = LaplacianPyramid(3)
>>> [tuple(s.shape) for s in d.split(x)]
[(2, 1, 2, 2), (2, 1, 4, 4), (2, 1, 8, 8)]
>>> bool(torch.allclose(d.merge(d.split(x)), x, atol=1e-5))
True
"""

from __future__ import annotations

from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F

from progflow.errors import ConfigError

Shape = tuple[int, ...]


@runtime_checkable
class Decomposition(Protocol):
    num_stages: int

    def split(self, x: torch.Tensor) -> list[torch.Tensor]: ...

    def merge(self, stages: Sequence[torch.Tensor]) -> torch.Tensor: ...

    def stage_shapes(self, shape: Shape) -> list[Shape]: ...


# ---- helpers: fold video frames into the batch, resize by 2 -----------------------------


def _fold(x: torch.Tensor) -> tuple[torch.Tensor, int | None]:
    """``(N, C, H, W)`` -> itself; ``(N, C, T, H, W)`` -> ``(N*T, C, H, W)`` and ``T``."""
    if x.ndim == 4:
        return x, None
    if x.ndim == 5:
        N, C, T, H, W = x.shape
        return x.transpose(1, 2).reshape(N * T, C, H, W), T
    raise ValueError(f"expected (N, C, H, W) or (N, C, T, H, W), got shape {tuple(x.shape)}")


def _unfold(x: torch.Tensor, frames: int | None) -> torch.Tensor:
    """Inverse of :func:`_fold`."""
    if frames is None:
        return x
    NT, C, H, W = x.shape
    return x.reshape(NT // frames, frames, C, H, W).transpose(1, 2)


def _check_divisible(shape: Shape, levels: int) -> None:
    if len(shape) not in (4, 5):
        raise ValueError(f"expected (N, C, H, W) or (N, C, T, H, W), got shape {tuple(shape)}")
    H, W = shape[-2:]
    f = 2**levels
    if H % f or W % f:
        raise ValueError(f"spatial size {H}x{W} is not divisible by 2**{levels} = {f} ({levels + 1} stages)")


def down2(x_BCHW: torch.Tensor) -> torch.Tensor:
    """Bilinear downsampling by 2 (``align_corners=False``, no antialias)."""
    H, W = x_BCHW.shape[-2:]
    return F.interpolate(x_BCHW, size=(H // 2, W // 2), mode="bilinear", align_corners=False, antialias=False)


def up2(x_BCHW: torch.Tensor) -> torch.Tensor:
    """Bilinear upsampling by 2 (``align_corners=False``)."""
    H, W = x_BCHW.shape[-2:]
    return F.interpolate(x_BCHW, size=(2 * H, 2 * W), mode="bilinear", align_corners=False, antialias=False)


def _check_stages(stages: int) -> int:
    if not isinstance(stages, int) or isinstance(stages, bool) or stages < 1:
        raise ValueError(f"a decomposition needs a positive integer number of stages, got {stages!r}")
    return stages


# ---- implementations --------------------------------------------------------------------


class LaplacianPyramid:
    """Bilinear Laplacian pyramid with ``stages`` levels (factor 2 per level)."""

    def __init__(self, stages: int):
        self.num_stages = _check_stages(stages)

    def __repr__(self) -> str:
        return f"LaplacianPyramid({self.num_stages})"

    def stage_shapes(self, shape: Shape) -> list[Shape]:
        """Stage shapes for a batch shape ``(N, C, H, W)`` / ``(N, C, T, H, W)``."""
        S = self.num_stages
        _check_divisible(shape, S - 1)
        *lead, H, W = shape
        return [(*lead, H // 2 ** (S - s), W // 2 ** (S - s)) for s in range(1, S + 1)]

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_divisible(tuple(x.shape), self.num_stages - 1)
        g, frames = _fold(x)
        gauss = [g]  # gauss[k] = down^k(x)
        for _ in range(self.num_stages - 1):
            gauss.append(down2(gauss[-1]))
        stages = [gauss[-1]]
        for k in range(self.num_stages - 2, -1, -1):  # finer levels, coarse to fine
            stages.append(gauss[k] - up2(gauss[k + 1]))
        return [_unfold(s, frames) for s in stages]

    def merge(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(stages) != self.num_stages:
            raise ValueError(f"expected {self.num_stages} stages, got {len(stages)}")
        x, frames = _fold(stages[0])
        for s in stages[1:]:
            x = up2(x) + _fold(s)[0]
        return _unfold(x, frames)


def haar_level(x_BCHW: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One orthonormal Haar level: ``(B, C, H, W)`` -> ``LL (B, C, H/2, W/2)`` and the
    details ``(B, 3C, H/2, W/2)`` = ``[LH, HL, HH]`` band-major.

    With the 2x2 block ``[[a, b], [c, d]]``: ``LL = (a+b+c+d)/2``, ``LH = (a-b+c-d)/2``
    (difference along the width), ``HL = (a+b-c-d)/2`` (along the height),
    ``HH = (a-b-c+d)/2``. The 4x4 matrix is symmetric and orthogonal, so it is its own
    inverse (:func:`haar_level_inverse`).
    """
    a, b = x_BCHW[..., 0::2, 0::2], x_BCHW[..., 0::2, 1::2]
    c, d = x_BCHW[..., 1::2, 0::2], x_BCHW[..., 1::2, 1::2]
    ll = (a + b + c + d) / 2
    lh, hl, hh = (a - b + c - d) / 2, (a + b - c - d) / 2, (a - b - c + d) / 2
    return ll, torch.cat([lh, hl, hh], dim=1)


def haar_level_inverse(ll: torch.Tensor, details: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`haar_level`."""
    lh, hl, hh = details.chunk(3, dim=1)
    a, b = (ll + lh + hl + hh) / 2, (ll - lh + hl - hh) / 2
    c, d = (ll + lh - hl - hh) / 2, (ll - lh - hl + hh) / 2
    B, C, h, w = ll.shape
    top = torch.stack([a, b], dim=-1).reshape(B, C, h, 2 * w)  # interleave columns
    bottom = torch.stack([c, d], dim=-1).reshape(B, C, h, 2 * w)
    return torch.stack([top, bottom], dim=-2).reshape(B, C, 2 * h, 2 * w)  # interleave rows


class HaarDWT:
    """Orthonormal Haar wavelet decomposition with ``stages`` stages (``stages - 1`` levels).

    Stages, coarse to fine: ``[LL_{S-1}, D_{S-1}, ..., D_1]`` where ``D_k`` are the detail
    bands of level ``k`` (level 1 is the finest), shape ``(N, 3C, H/2**k, W/2**k)``.
    """

    def __init__(self, stages: int):
        self.num_stages = _check_stages(stages)

    def __repr__(self) -> str:
        return f"HaarDWT({self.num_stages})"

    def stage_shapes(self, shape: Shape) -> list[Shape]:
        """Stage shapes for a batch shape ``(N, C, H, W)`` / ``(N, C, T, H, W)`` (axis 1 = channels)."""
        S = self.num_stages
        _check_divisible(shape, S - 1)
        N, C, *mid, H, W = shape
        L = S - 1
        out = [(N, C, *mid, H // 2**L, W // 2**L)]
        for k in range(L, 0, -1):
            out.append((N, 3 * C, *mid, H // 2**k, W // 2**k))
        return out

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        _check_divisible(tuple(x.shape), self.num_stages - 1)
        ll, frames = _fold(x)
        details = []
        for _ in range(self.num_stages - 1):
            ll, d = haar_level(ll)
            details.append(d)
        return [_unfold(s, frames) for s in [ll, *reversed(details)]]

    def merge(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(stages) != self.num_stages:
            raise ValueError(f"expected {self.num_stages} stages, got {len(stages)}")
        x, frames = _fold(stages[0])
        for d in stages[1:]:
            x = haar_level_inverse(x, _fold(d)[0])
        return _unfold(x, frames)


class Identity:
    """One stage: the sample itself (plain flow matching through the DFM code path)."""

    num_stages = 1

    def __repr__(self) -> str:
        return "Identity()"

    def stage_shapes(self, shape: Shape) -> list[Shape]:
        return [tuple(shape)]

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]

    def merge(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        if len(stages) != 1:
            raise ValueError(f"expected 1 stage, got {len(stages)}")
        return stages[0]


class Standardized:
    """Wrap a decomposition so that stage ``s`` is divided by ``std[s]`` in ``split`` and
    multiplied back in ``merge`` (per-stage standardisation, methods.md section 2)."""

    def __init__(self, decomp: Decomposition, std: Sequence[float]):
        if len(std) != decomp.num_stages:
            raise ValueError(f"{len(std)} stage scales for {decomp.num_stages} stages")
        if any(not s > 0 for s in std):
            raise ValueError(f"stage scales must be positive, got {list(std)}")
        self.inner = decomp
        self.std = tuple(float(s) for s in std)
        self.num_stages = decomp.num_stages

    def __repr__(self) -> str:
        return f"Standardized({self.inner!r}, {self.std})"

    def stage_shapes(self, shape: Shape) -> list[Shape]:
        return self.inner.stage_shapes(shape)

    def split(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [s / sd for s, sd in zip(self.inner.split(x), self.std)]

    def merge(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.inner.merge([s * sd for s, sd in zip(stages, self.std)])


def estimate_stage_std(decomp: Decomposition, x_sample: torch.Tensor, floor: float = 1e-6) -> tuple[float, ...]:
    """Standard deviation of every stage's entries over ``x_sample`` (a batch in model
    range), floored at ``floor`` so a constant stage cannot divide by zero."""
    with torch.no_grad():
        return tuple(max(float(s.double().std()), floor) for s in decomp.split(x_sample.float()))


DECOMPOSITIONS = ("laplacian", "haar", "identity")


def build_decomposition(name: str, stages: int) -> Decomposition:
    """``"laplacian"`` / ``"haar"`` with ``stages`` stages, or ``"identity"`` (1 stage)."""
    if name == "laplacian":
        return LaplacianPyramid(stages)
    if name == "haar":
        return HaarDWT(stages)
    if name == "identity":
        if stages != 1:
            raise ConfigError(f"the identity decomposition has 1 stage, not {stages}")
        return Identity()
    raise ConfigError(f"unknown decomposition {name!r}; choose from {', '.join(DECOMPOSITIONS)}")


def sample_stage_shapes(decomp: Decomposition, sample_shape: Shape) -> list[Shape]:
    """Stage shapes of one sample ``(C, H, W)`` / ``(C, T, H, W)`` (no batch axis)."""
    return [s[1:] for s in decomp.stage_shapes((1, *sample_shape))]
