"""FlowAR: scale-wise autoregression with a flow-matching head (methods.md section 3;
Ren et al., ICML 2025, arXiv 2412.15205), in progflow's convention (t = 0 noise, t = 1 data).

An image is encoded into a token map ``m`` (:mod:`progflow.representation`; today its
``model.patch`` patches, 8x8 tokens of 16 channels for 32x32x1 and patch 4) and area-
downsampled to the scales ``s_k = downsample(m, side_k)``, ``side = method.scales``
(default 1, 2, 4, 8). The AR transformer (:mod:`progflow.nn.flowar`) reads the class and
``s_1 .. s_{k-1}`` and gives the conditioning map ``cond_k``; the flow head learns the
velocity of scale ``k``'s straight path from noise given ``cond_k``:

    x_{t,k} = t_k s_k + (1 - t_k) x0_k,      v_k = s_k - x0_k,
    loss = mean_b sum_k w_k mean ||head(x_{t,k}, t_k, cond_k) - v_k||^2,
    w_k = n_k^2 / n_K^2  (n_k = side_k; scale k's share of the finest scale's tokens)

with an independent ``t_k ~ logit-normal(t_loc, t_scale)`` (or uniform) per sample and
scale, teacher forcing (the clean ``s_{k-1}`` feeds the AR transformer) and labels dropped
to the null class with probability ``label_dropout`` (0.1). The weights make every token
count equally; they do **not** sum to 1 but to ``sum_k n_k^2 / n_K^2`` (85/64 = 1.328 for
1, 2, 4, 8), i.e. the loss is the summed per-token error of all scales divided by the
finest scale's token count (:func:`scale_weights`).

Sampling, scale by scale with the AR key/value cache (K AR passes over ``n_k`` new tokens
each): ``cond_k`` from the scales generated so far, then an ODE solve of the head from
``x0_k ~ N(0, I)`` over ``t = 0 -> 1`` with any solver of :mod:`progflow.solvers`.
``nfe`` counts **flow-head evaluations per sample**, split evenly over the scales (40 ->
10 per scale for 4 scales); AR passes are not in it (``progflow info`` shows both and their
FLOPs). Classifier-free guidance ramps linearly from 1 at the first scale to ``cfg_scale``
at the last, inside ``cfg_interval``; the unconditional branch runs the AR transformer
with the null class too (its conditioning maps differ), both branches as one doubled batch.
``previews`` are the scales as images (each upsampled to the finest grid and decoded),
coarse to fine; the last is the final sample.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch

from progflow.config import MethodConfig
from progflow.errors import ConfigError
from progflow.guidance import CFG, GuidedVelocity
from progflow.methods.base import SampleResult, drop_labels, sampling_settings
from progflow.methods.flow import FlowMatching
from progflow.paths import interpolate, velocity_target
from progflow.presets import PRESETS, register_preset
from progflow.registry import register_method
from progflow.representation import build_representation, downsample, map_from_tokens, tokens_from_map, upsample
from progflow.schedules import phase_intervals, time_grid
from progflow.solvers import get_solver


@dataclass(frozen=True)
class FlowARConfig(MethodConfig):
    """``method.name = "flowar"``: the common fields (``nfe`` = flow-head evaluations per
    sample, split evenly over the scales) plus the scale sides, coarse to fine."""

    name: str = "flowar"
    scales: tuple[int, ...] = (1, 2, 4, 8)

    def __post_init__(self):
        super().__post_init__()
        sc = self.scales
        if not sc or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in sc):
            raise ConfigError(f"method.scales must be positive integers, coarse to fine; got {list(sc)}")
        for a, b in zip(sc, sc[1:]):
            if b <= a or b % a or (b // a) & (b // a - 1):
                raise ConfigError(f"method.scales must double from one scale to the next (each side 2, 4, ... "
                                  f"times the previous); got {list(sc)}")
        check_cfg_scale(self.cfg_scale, "method.cfg_scale")
        if self.nfe < len(sc):
            raise ConfigError(f"method.nfe {self.nfe} cannot give each of the {len(sc)} scales a step")


def check_cfg_scale(w, name: str = "cfg scale") -> None:
    if not isinstance(w, (int, float)) or not math.isfinite(w) or not 0.0 <= w <= 100.0:
        raise ConfigError(f"{name} must be a number in [0, 100]; got {w!r}")


def scale_weights(sides) -> tuple[float, ...]:
    """Loss weight of each scale, ``n_k^2 / n_K^2``; they sum to ``sum_k n_k^2 / n_K^2``.

    >>> scale_weights((1, 2, 4, 8)), sum(scale_weights((1, 2, 4, 8))) == 85 / 64
    ((0.015625, 0.0625, 0.25, 1.0), True)
    """
    return tuple(s * s / sides[-1] ** 2 for s in sides)


def cfg_ramp(scale: float, num_scales: int) -> list[float]:
    """Guidance per scale: linear from 1 at the first scale to ``scale`` at the last."""
    if num_scales == 1:
        return [float(scale)]
    return [1.0 + (scale - 1.0) * k / (num_scales - 1) for k in range(num_scales)]


class _HeadAtScale:
    """The flow head on scale-``k`` maps in the ``(x, t, y) -> v`` form :class:`CFG` calls.

    ``cond`` holds the conditional maps, followed (when guiding) by the unconditional ones
    for the same samples; ``y`` is not read, the maps already carry the class. A call with
    the batch unguided uses the conditional half."""

    def __init__(self, head, k: int, side: int, cond_BLD: torch.Tensor, num_classes: int):
        self.head, self.k, self.side, self.cond, self.num_classes = head, k, side, cond_BLD, num_classes

    def __call__(self, x_BChw, t_B, y_B):
        B = x_BChw.shape[0]
        v = self.head(tokens_from_map(x_BChw), t_B[:, None], self.cond[:B], (self.k,))
        return map_from_tokens(v, self.side)


class FlowAR(FlowMatching):
    """Training and sampling of a :class:`~progflow.nn.flowar.FlowARNet` (``model.arch = flowar``)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.rep = build_representation(cfg.data, cfg.model)
        self.sides = tuple(self.mc.scales)
        self.weights = scale_weights(self.sides)

    @staticmethod
    def validate(cfg) -> None:
        mc, data = cfg.method, cfg.data
        if cfg.model.arch != "flowar":
            raise ConfigError(f"method flowar needs model.arch flowar, got {cfg.model.arch!r}")
        if data.frames:
            raise ConfigError("method flowar is for images; data.frames must be 0")
        grid = data.image_size // cfg.model.patch
        if mc.scales[-1] != grid:
            raise ConfigError(f"method.scales must end at the token grid, {grid} (data.image_size "
                              f"{data.image_size} / model.patch {cfg.model.patch}); got {list(mc.scales)}")

    def scales_of(self, x1: torch.Tensor) -> list[torch.Tensor]:
        m = self.rep.encode(x1)
        return [downsample(m, s) for s in self.sides]

    def loss(self, model, x1: torch.Tensor, y: torch.Tensor, rng):
        scales = self.scales_of(x1)
        K, C = len(self.sides), self.rep.channels
        x0 = [rng.randn(C, s, s).to(x1.dtype) for s in self.sides]
        t_BK = self.draw_time(rng, K).to(x1.dtype)
        y = drop_labels(y, self.mc.label_dropout, self.num_classes, rng.rand())
        v = model(scales, [interpolate(s, n, t_BK[:, k]) for k, (s, n) in enumerate(zip(scales, x0))], t_BK, y)
        per_BK = torch.stack([(vk.float() - velocity_target(s, n).float()).pow(2).flatten(1).mean(1)
                              for vk, s, n in zip(v, scales, x0)], dim=1)
        loss = (per_BK * torch.tensor(self.weights, device=per_BK.device)).sum(1).mean()
        return loss, {f"loss_scale{k + 1}": float(per_BK[:, k].detach().mean()) for k in range(K)}

    def scale_steps(self, nfe: int | None = None, solver=None) -> tuple[int, ...]:
        """Grid intervals per scale for ``nfe`` (default ``method.nfe``) head evaluations of
        ``solver`` in all: split evenly over the scales, each scale a separate solve
        (:func:`~progflow.schedules.phase_intervals`); Euler, 40 NFE, 4 scales: 10 each."""
        return phase_intervals(get_solver(solver or self.mc.solver), self.mc.nfe if nfe is None else nfe,
                               (1,) * len(self.sides), f"FlowAR's {len(self.sides)} scales")

    @torch.no_grad()
    def sample(self, model, y: torch.Tensor, *, generator: torch.Generator, nfe: int | None = None,
               cfg_scale: float | None = None, cfg_interval=None, previews: bool = False,
               solver: str | None = None, shift: float | None = None) -> SampleResult:
        spec, shift, w, interval = sampling_settings(self.mc, solver=solver, shift=shift, cfg_scale=cfg_scale,
                                                     cfg_interval=cfg_interval)
        steps = self.scale_steps(nfe, spec)
        check_cfg_scale(w)
        ramp = cfg_ramp(w, len(self.sides))
        guided = any(wk != 1.0 for wk in ramp)
        B, device, C = y.shape[0], y.device, self.rep.channels
        y_ar = torch.cat([y, torch.full_like(y, self.num_classes)]) if guided else y
        cache = model.ar.new_cache()
        x, shown, used = None, [], 0
        for k, side in enumerate(self.sides):
            prev = None if x is None else (torch.cat([x, x]) if guided else x)
            cond = model.ar([prev], y_ar, first=k, cache=cache)
            head = CFG(_HeadAtScale(model.head, k, side, cond, self.num_classes), y, ramp[k], interval)
            x = torch.randn(B, C, side, side, generator=generator).to(device)
            x, n = spec.integrate(GuidedVelocity(head), x, time_grid(steps[k], shift))
            used += n
            if previews:
                shown.append(self.rep.decode(upsample(x, self.sides[-1])))
        return SampleResult(x=self.rep.decode(x), nfe=used, previews=shown)


# ---- presets: training FLOPs per image within 10% of the base twins (tests/test_flowar.py) ----
# The AR transformer keeps the base width and heads with fewer blocks; the flow head is
# narrower. Both see 85 tokens per training image (1 + 4 + 16 + 64) against base's 64, and
# the head's per-token modulation costs about half a block's matmuls per token.
PRESET_MODELS = {
    "xs": {"depth": 2, "head_width": 48, "head_depth": 1, "head_heads": 4},
    "s": {"depth": 3, "head_width": 128, "head_depth": 2, "head_heads": 4},
}


# base preset prefix -> FlowAR's scales there. Fashion-MNIST and the emoji latent (16x16x4 at
# patch 2) are 8x8 token maps; 64px RGB emoji at patch 4 is 16x16, one scale more (341 tokens
# an image against base's 256)
PRESET_SCALES = {"fmnist": [1, 2, 4, 8], "emoji": [1, 2, 4, 8, 16], "emoji-latent": [1, 2, 4, 8]}


def _register_presets() -> None:
    for size, model in PRESET_MODELS.items():
        for prefix, scales in PRESET_SCALES.items():
            base = PRESETS.get(f"{prefix}-base-{size}")
            if base is None:
                continue
            preset = copy.deepcopy(base)
            preset["model"] = {**preset["model"], "arch": "flowar", **model}
            preset["method"] = {"name": "flowar", "scales": scales, "nfe": 40}
            register_preset(f"{prefix}-flowar-{size}", preset)


register_method("flowar", FlowARConfig, FlowAR)
_register_presets()
