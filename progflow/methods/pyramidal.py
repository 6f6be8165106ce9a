"""Pyramidal Flow (Jin et al., "Pyramidal Flow Matching for Efficient Video Generative
Modeling", arXiv 2410.05954), the DFM paper's single-model multi-stage baseline, in
progflow's convention (t = 0 noise, t = 1 data). Written from the paper's idea; the
derivation below is ours.

**Windows.** One global time ``t`` in [0, 1] is cut at ``method.boundaries``
``0 < b_1 < ... < b_{K-1} < 1`` into K windows ``[lo_k, hi_k]``; window ``k`` (0 = coarsest)
works at side ``N / 2^(K-1-k)``. Let ``x1_k`` be the data area-downsampled to that side
(``D``: 2x2 means per level) and ``U`` nearest upsampling by 2. Window ``k`` runs a
straight path between two points that share one noise ``n ~ N(0, I)`` at its side:

    start  X_s = s_k U(x1_{k-1}) + (1 - s_k) n       (x1_{k-1} = D(x1_k); s_0 = 0: pure noise)
    end    X_e = e_k x1_k + (1 - e_k) n              (e_k = hi_k; the last window ends at data)
    x = X_s + u (X_e - X_s),   u = (t - lo_k) / (hi_k - lo_k),   target  v = X_e - X_s.

So a window moves the signal level from ``s_k`` to ``e_k`` and, at the same time, the
signal from the upsampled coarse image to the image at its own side. The network sees the
global ``t`` (which names the window) and predicts ``v``; the solver gets
``dx/dt = v / (hi_k - lo_k)`` over the window's stretch of the global grid.

**The jump.** Sampling ends window ``k - 1`` at ``X_e = e x1_{k-1} + (1 - e) n`` (side
``r``) and must start window ``k`` (side ``2r``) where training put it,
``s U(x1_{k-1}) + (1 - s) n'`` with ``n' ~ N(0, I)``. Upsample and re-noise,

    X_s = (s / e) U(X_e) + (1 - s) (xi - U D xi),        xi ~ N(0, I) at side 2r,

and compare the two. Signal: ``(s / e) e U(x1_{k-1}) = s U(x1_{k-1})``, as wanted. Noise:
``U n`` repeats each coarse value over its 2x2 block, so its covariance is ``4 P`` with
``P = U D`` the projector onto images constant on every block; ``xi - U D xi`` has
covariance ``I - P`` (the within-block part of white noise) and is independent of ``n``.
In total ``(s/e)^2 (1-e)^2 4 P + (1-s)^2 (I - P)``, which is ``(1 - s)^2 I`` exactly when

    2 (s / e) (1 - e) = 1 - s,   i.e.   s = e / (e + 2 (1 - e)) = e / (2 - e).

That fixes the start level of every window after the first (``s_k = e_{k-1} / (2 -
e_{k-1})``: the global time moves on, the noise level steps back, 0.5 -> 1/3 for the
default boundary) and makes the state after the jump have the training marginal's mean
and covariance, given the state before had its window's end marginal. The block-mean
direction keeps the old noise, scaled; only the three directions per block that the
coarse state cannot carry get fresh noise (the paper's negatively correlated noise,
correlation -1/3 inside a block). tests/test_multistage.py measures both the jump and
the sampler's state after it.

Training draws ``t`` from the method's time sampler (logit-normal(0, 1) by default), so
the windows share the training steps as the sampler's mass falls into them (half each for
the default boundary 0.5); per sample one noise at its window's side, loss the mean
squared error of ``v``. Every window has the base model's token count (a patch per side,
:mod:`progflow.nn.pyramidal`), so a step costs one base step.

Sampling: window by window, ``stage_steps`` solver steps each (default: ``nfe`` split in
proportion to the window lengths, 20 + 20 for 40), the jump between windows. ``previews``:
at the end of every window the data estimate ``x + (1 - e) dx/dsigma`` along the window's
signal level ``sigma`` (exact when the coarse start equals the window's data),
nearest-upsampled to full size; the last is the final sample.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass

import torch

from progflow.config import MethodConfig
from progflow.errors import ConfigError
from progflow.guidance import CFG, GuidedVelocity
from progflow.methods.base import SampleResult, drop_labels, sampling_settings
from progflow.methods.cascade import check_stage_steps
from progflow.methods.flow import FlowMatching
from progflow.paths import interpolate
from progflow.presets import PRESETS, register_preset
from progflow.registry import register_method
from progflow.representation import downsample, upsample
from progflow.schedules import phase_intervals, split_steps, time_grid
from progflow.solvers import get_solver


@dataclass(frozen=True)
class PyramidalConfig(MethodConfig):
    """``method.name = "pyramidal"``: the common fields (``nfe`` over all windows) plus:"""

    name: str = "pyramidal"
    boundaries: tuple[float, ...] = (0.5,)  # global times where the resolution doubles; K - 1 of them
    stage_steps: tuple[int, ...] = ()  # sampling steps per window; () = nfe split by window length

    def __post_init__(self):
        super().__post_init__()
        b = (0.0, *self.boundaries, 1.0)
        if any(not lo < hi for lo, hi in zip(b, b[1:])):
            raise ConfigError(f"method.boundaries must increase strictly inside (0, 1); got {list(self.boundaries)}")
        check_stage_steps(self, self.stages)

    @property
    def stages(self) -> int:
        return len(self.boundaries) + 1


def jump_level(end_level: float, factor: int = 2) -> float:
    """Signal level at which the next window starts, ``e / (e + f (1 - e))`` for an
    upsampling by ``f`` per side (the module docstring derives it for ``f = 2``; per block
    of ``f^2`` pixels the repeated noise has variance ``f^2`` in the block-mean direction)."""
    return end_level / (end_level + factor * (1.0 - end_level))


class Windows:
    """The global time cut into resolution windows: edges and signal levels.

    >>> w = Windows((0.5,))
    >>> w.edges, w.start_levels, w.end_levels
    ((0.0, 0.5, 1.0), (0.0, 0.3333333333333333), (0.5, 1.0))
    """

    def __init__(self, boundaries):
        self.edges = (0.0, *map(float, boundaries), 1.0)
        self.K = len(self.edges) - 1
        self.end_levels = self.edges[1:]
        self.start_levels = (0.0, *(jump_level(e) for e in self.end_levels[:-1]))

    def window_of(self, t_B: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(t_B, torch.tensor(self.edges[1:-1], dtype=t_B.dtype, device=t_B.device), right=True)

    def length(self, k: int) -> float:
        return self.edges[k + 1] - self.edges[k]

    def endpoints(self, k: int, x1_k: torch.Tensor, n: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(X_s, X_e)`` of window ``k`` for data ``x1_k`` at its side and noise ``n``."""
        s, e = self.start_levels[k], self.end_levels[k]
        side = x1_k.shape[-1]
        coarse = upsample(downsample(x1_k, side // 2), side) if k else torch.zeros_like(x1_k)
        return s * coarse + (1 - s) * n, e * x1_k + (1 - e) * n


def renoise(x_end: torch.Tensor, end_level: float, start_level: float, xi: torch.Tensor) -> torch.Tensor:
    """The jump: ``(s / e) U(x_end) + (1 - s) (xi - U D xi)``, ``xi ~ N(0, I)`` at the new side."""
    side = xi.shape[-1]
    fresh = xi - upsample(downsample(xi, side // 2), side)
    return (start_level / end_level) * upsample(x_end, side) + (1.0 - start_level) * fresh


class _AtWindow:
    """The backbone in window ``k``, as a velocity in global time for CFG: ``v / (hi - lo)``."""

    def __init__(self, model, k: int, length: float):
        self.model, self.k, self.rate, self.num_classes = model, k, 1.0 / length, model.num_classes

    def __call__(self, x, t_B, y_B):
        return self.model(x, t_B, y_B, self.k) * self.rate


class PyramidalFlow(FlowMatching):
    """Training and sampling of a :class:`~progflow.nn.pyramidal.PyramidalDiT`."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.windows = Windows(self.mc.boundaries)
        K, (C, N, _) = self.windows.K, self.shape
        self.sides = [N // 2 ** (K - 1 - k) for k in range(K)]
        self.shapes = [(C, s, s) for s in self.sides]
        lengths = [self.windows.length(k) for k in range(K)]
        self.stage_steps = self.mc.stage_steps or split_steps(self.mc.nfe, lengths)

    @staticmethod
    def validate(cfg) -> None:
        """Refuses an image the coarsest window's side does not divide; fills
        ``model.stage_patches`` when empty (as DFM)."""
        from progflow.decompose import LaplacianPyramid
        from progflow.nn.dfm import stage_layout

        mc, data, model = cfg.method, cfg.data, cfg.model
        if model.arch != "pyramidal":
            raise ConfigError(f"method pyramidal needs model.arch pyramidal, got {model.arch!r}")
        if data.frames:
            raise ConfigError("method pyramidal is for images; data.frames must be 0")
        K = mc.stages
        if data.image_size % 2 ** (K - 1):
            raise ConfigError(f"data.image_size {data.image_size} is not divisible by 2**{K - 1} = {2 ** (K - 1)}: "
                              f"the coarsest of {K} resolution windows does not divide the image")
        _, patches, _ = stage_layout(data, model, LaplacianPyramid(K))
        if not model.stage_patches:
            object.__setattr__(cfg, "model", dataclasses.replace(model, stage_patches=tuple(p[-1] for p in patches)))

    def pyramid(self, x1: torch.Tensor) -> list[torch.Tensor]:
        """The data at every window's side, coarse to fine (area downsampling)."""
        return [downsample(x1, s) for s in self.sides]

    def loss(self, model, x1: torch.Tensor, y: torch.Tensor, rng):
        dtype, B = x1.dtype, x1.shape[0]
        t = self.draw_time(rng).to(dtype)
        y = drop_labels(y, self.mc.label_dropout, self.num_classes, rng.rand())
        noise = [rng.randn(*shape).to(dtype) for shape in self.shapes]
        k_B = self.windows.window_of(t)
        total, stats = 0.0, {}
        for k, x1_k in enumerate(self.pyramid(x1)):
            rows = (k_B == k).nonzero().squeeze(1)
            if not len(rows):
                continue
            x_s, x_e = self.windows.endpoints(k, x1_k[rows], noise[k][rows])
            u = (t[rows] - self.windows.edges[k]) / self.windows.length(k)
            v = model(interpolate(x_e, x_s, u), t[rows], y[rows], k)
            per = (v.float() - (x_e - x_s).float()).pow(2).flatten(1).mean(1)
            total = total + per.sum()
            stats[f"loss_window{k + 1}"] = float(per.detach().mean())
        return total / B, stats

    def phase_steps(self, nfe: int | None = None, solver=None) -> tuple[int, ...]:
        """Grid intervals per window for ``nfe`` NFE of ``solver`` in all, split like
        ``stage_steps`` (:func:`~progflow.schedules.phase_intervals`)."""
        return phase_intervals(get_solver(solver or self.mc.solver), sum(self.stage_steps) if nfe is None else nfe,
                               self.stage_steps, f"Pyramidal Flow's {self.windows.K} windows")

    @torch.no_grad()
    def sample(self, model, y: torch.Tensor, *, generator: torch.Generator, nfe: int | None = None,
               cfg_scale: float | None = None, cfg_interval=None, previews: bool = False,
               solver: str | None = None, shift: float | None = None) -> SampleResult:
        spec, shift, scale, interval = sampling_settings(self.mc, solver=solver, shift=shift, cfg_scale=cfg_scale,
                                                         cfg_interval=cfg_interval)
        steps = self.phase_steps(nfe, spec)
        w, B, device, N = self.windows, y.shape[0], y.device, self.sides[-1]
        x = torch.randn(B, *self.shapes[0], generator=generator).to(device)
        shown, last_v, used = [], [], 0
        for k in range(w.K):
            if k:
                xi = torch.randn(B, *self.shapes[k], generator=generator).to(device)
                x = renoise(x, w.end_levels[k - 1], w.start_levels[k], xi)
            velocity = GuidedVelocity(CFG(_AtWindow(model, k, w.length(k)), y, scale, interval),
                                      observe=lambda v: last_v.__setitem__(slice(None), [v]))
            grid = w.edges[k] + time_grid(steps[k], shift) * w.length(k)
            x, n = spec.integrate(velocity, x, grid)
            used += n
            if previews:  # dx/dsigma = (dx/dt) (hi - lo) / (e - s)
                s, e = w.start_levels[k], w.end_levels[k]
                est = x + (1 - e) * last_v[0] * w.length(k) / (e - s) if e < 1 else x
                shown.append(upsample(est, N))
        return SampleResult(x=x, nfe=used, previews=shown)


def _register_presets() -> None:
    """``fmnist-pyramidal-{xs,s}``: the base preset's width, depth, heads, batch, steps and
    lr; windows [0, 0.5] at 16px (patch 2) and [0.5, 1] at 32px (patch 4), 8x8 tokens each."""
    for size in ("xs", "s"):
        base = PRESETS.get(f"fmnist-base-{size}")
        if base is None:
            continue
        preset = copy.deepcopy(base)
        preset["model"] = {**preset["model"], "arch": "pyramidal", "stage_patches": [2, 4]}
        preset["method"] = {"name": "pyramidal", "boundaries": [0.5], "stage_steps": [20, 20], "nfe": 40}
        register_preset(f"fmnist-pyramidal-{size}", preset)


register_method("pyramidal", PyramidalConfig, PyramidalFlow)
_register_presets()
