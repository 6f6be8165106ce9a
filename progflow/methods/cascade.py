"""A two-model cascade (methods.md section 2, the DFM paper's "cascaded" baseline), in
progflow's convention (t = 0 noise, t = 1 data).

Two flow-matching models share one run (:class:`~progflow.nn.cascade.CascadeNet`):

* the **low-resolution model** learns the coarse image ``x_c = down(x1)`` (area
  downsampling to ``method.coarse_size``, 16px for 32px images) as plain flow matching:
  ``x_t = t x_c + (1 - t) x0``, target ``x_c - x0``;
* the **super-resolution model** learns the full image given the coarse one: the same
  path at full size, with the conditioning image

      cond = (1 - a) up(x_c) + a eps,        eps ~ N(0, I),

  ``up`` bilinear, stacked next to ``x_t`` on the channel axis, and the augmentation level
  ``a`` given to the network. Noise augmentation: in training ``a ~ U(0, aug_max)`` per
  sample, so the model learns not to trust the fine detail of its conditioning; at
  sampling ``a = aug_level``, fixed, applied to the generated coarse image. For fixed
  ``a``, ``cond`` has mean ``(1 - a) up(x_c)`` and covariance ``a^2 I`` around it
  (tests/test_multistage.py measures both on Gaussian data).

Budget. Training step ``k`` trains exactly one of the two models, the
super-resolution model on a ``1 - train_split`` share of the steps spread evenly over the
run (every fifth step for the default 0.8, as the DFM paper's 80 / 20 split), the
low-resolution model on the others; each sees the whole batch. Both networks have the
base model's width, depth and token count (the coarse model a finer patch, the SR
model a 2-channel patch), so one step costs one base step and the total training FLOPs
equal the single model's (``progflow info`` averages the two passes by their shares).

Sampling: ``stage_steps`` (default ``nfe`` split 3 : 1, 30 + 10 for 40) of any solver,
first the coarse model from noise, then the super-resolution model from fresh noise;
NFE counts both. Classifier-free guidance applies to both. ``previews``: the coarse
image (nearest-upsampled to full size), then the final sample.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from fractions import Fraction

import torch
import torch.nn.functional as F

from progflow.config import MethodConfig
from progflow.errors import ConfigError
from progflow.guidance import CFG, GuidedVelocity
from progflow.methods.base import SampleResult, drop_labels, sampling_settings
from progflow.methods.flow import FlowMatching
from progflow.paths import interpolate
from progflow.presets import PRESETS, register_preset
from progflow.registry import register_method
from progflow.representation import downsample, upsample
from progflow.schedules import phase_intervals, split_steps, time_grid
from progflow.solvers import get_solver


@dataclass(frozen=True)
class CascadeConfig(MethodConfig):
    """``method.name = "cascade"``: the common fields (``nfe`` counts both models) plus:"""

    name: str = "cascade"
    coarse_size: int = 0  # side of the low-resolution image; 0 = half the image (filled in)
    train_split: float = 0.8  # share of the training steps that train the low-resolution model
    aug_max: float = 0.5  # training: noise-augmentation level a ~ U(0, aug_max)
    aug_level: float = 0.1  # sampling: the fixed level
    stage_steps: tuple[int, ...] = ()  # sampling steps (low, super-resolution); () = nfe split 3 : 1

    def __post_init__(self):
        super().__post_init__()
        if not 0.0 < self.train_split < 1.0:
            raise ConfigError(f"method.train_split must lie in (0, 1) (the low-resolution model's share of the "
                              f"training steps); got {self.train_split}")
        if not 0.0 <= self.aug_max < 1.0:
            raise ConfigError(f"method.aug_max must lie in [0, 1); got {self.aug_max}")
        if not 0.0 <= self.aug_level <= self.aug_max:
            raise ConfigError(f"method.aug_level must lie in [0, method.aug_max = {self.aug_max}] (the levels "
                              f"seen in training); got {self.aug_level}")
        if self.coarse_size < 0:
            raise ConfigError(f"method.coarse_size must be positive (0: half the image); got {self.coarse_size}")
        check_stage_steps(self, 2)

    @property
    def stages(self) -> int:
        return 2


def check_stage_steps(mc, stages: int) -> None:
    """``mc.stage_steps``: empty, or one positive integer per stage summing to ``mc.nfe``."""
    steps = mc.stage_steps
    if steps:
        if len(steps) != stages or any(n < 1 for n in steps):
            raise ConfigError(f"method.stage_steps needs {stages} positive integers; got {list(steps)}")
        if sum(steps) != mc.nfe:
            raise ConfigError(f"method.stage_steps sums to {sum(steps)} but method.nfe is {mc.nfe}; set both")
    elif mc.nfe < stages:
        raise ConfigError(f"method.nfe {mc.nfe} cannot cover {stages} sampling stages")


def trains_sr(step: int, train_split: float) -> bool:
    """Whether training step ``step`` trains the super-resolution model: the steps where
    ``floor(k q)`` grows, ``q = 1 - train_split``, i.e. a ``q`` share spread evenly.

    >>> [k for k in range(15) if trains_sr(k, 0.8)]
    [4, 9, 14]
    """
    q = Fraction(1.0 - train_split).limit_denominator(10_000)
    return (step + 1) * q.numerator // q.denominator > step * q.numerator // q.denominator


def augment(up_BCHW: torch.Tensor, level, eps: torch.Tensor) -> torch.Tensor:
    """Noise augmentation of the upsampled coarse image: ``(1 - a) up + a eps`` (the path
    at time ``1 - a``); ``level`` a number or one per sample."""
    return interpolate(up_BCHW, eps, 1.0 - torch.as_tensor(level, dtype=up_BCHW.dtype, device=up_BCHW.device))


def upsample_bilinear(x_BCHW: torch.Tensor, side: int) -> torch.Tensor:
    return F.interpolate(x_BCHW, size=(side, side), mode="bilinear", align_corners=False, antialias=False)


class _SuperResolution:
    """The SR model with its conditioning fixed, in the ``(x, t, y) -> v`` form CFG calls
    (a guided call doubles the batch: the conditioning is repeated to match)."""

    def __init__(self, model, cond_BCHW: torch.Tensor, level: float):
        self.model, self.cond, self.level, self.num_classes = model, cond_BCHW, level, model.num_classes

    def __call__(self, x, t_B, y_B):
        cond = self.cond.repeat(x.shape[0] // self.cond.shape[0], 1, 1, 1)
        return self.model(x, t_B, y_B, cond, torch.full_like(t_B, self.level))


class Cascade(FlowMatching):
    """Training and sampling of a :class:`~progflow.nn.cascade.CascadeNet` (``model.arch = cascade``)."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.size, self.coarse = cfg.data.image_size, self.mc.coarse_size
        self.coarse_shape = (cfg.data.channels, self.coarse, self.coarse)
        self.stage_steps = self.mc.stage_steps or split_steps(self.mc.nfe, (3, 1))
        self.S = 2  # stages: the coarse image, then the full one (progflow diagnose)

    @staticmethod
    def validate(cfg) -> None:
        """Refuses a coarse size that does not divide the image; fills ``method.coarse_size``
        and ``model.low_patch`` when 0 (the derived defaults), so saved configs are explicit."""
        from progflow.nn.cascade import default_low_patch

        mc, data, model = cfg.method, cfg.data, cfg.model
        if model.arch != "cascade":
            raise ConfigError(f"method cascade needs model.arch cascade, got {model.arch!r}")
        if data.frames:
            raise ConfigError("method cascade is for images; data.frames must be 0")
        coarse = mc.coarse_size or data.image_size // 2
        if coarse >= data.image_size or data.image_size % coarse:
            raise ConfigError(f"method.coarse_size {coarse} must be smaller than data.image_size {data.image_size} "
                              f"and divide it")
        low_patch = model.low_patch or default_low_patch(data, model, coarse)
        if coarse % low_patch:
            raise ConfigError(f"method.coarse_size {coarse} is not divisible by model.low_patch {low_patch}")
        object.__setattr__(cfg, "method", dataclasses.replace(mc, coarse_size=coarse))
        object.__setattr__(cfg, "model", dataclasses.replace(model, low_patch=low_patch))

    def condition(self, x_coarse: torch.Tensor, level, eps: torch.Tensor) -> torch.Tensor:
        """The super-resolution model's conditioning image from a coarse image."""
        return augment(upsample_bilinear(x_coarse, self.size), level, eps)

    def loss(self, model, x1: torch.Tensor, y: torch.Tensor, rng):
        """The loss of one of the two models, chosen by the step (:func:`trains_sr`)."""
        dtype = x1.dtype
        t = self.draw_time(rng).to(dtype)
        y = drop_labels(y, self.mc.label_dropout, self.num_classes, rng.rand())
        x_coarse = downsample(x1, self.coarse)
        if not trains_sr(rng.step, self.mc.train_split):
            x0 = rng.randn(*self.coarse_shape).to(dtype)
            v = model(interpolate(x_coarse, x0, t), t, y)
            loss = (v.float() - (x_coarse - x0)).pow(2).mean()
            return loss, {"loss_low": float(loss.detach())}
        x0, eps = rng.randn(*self.shape).to(dtype), rng.randn(*self.shape).to(dtype)
        level = (rng.rand() * self.mc.aug_max).to(dtype)
        v = model(interpolate(x1, x0, t), t, y, self.condition(x_coarse, level, eps), level)
        loss = (v.float() - (x1 - x0)).pow(2).mean()
        return loss, {"loss_sr": float(loss.detach())}

    def phase_steps(self, nfe: int | None = None, solver=None) -> tuple[int, ...]:
        """Grid intervals of the two solves for ``nfe`` NFE of ``solver`` in all, split like
        ``stage_steps`` (:func:`~progflow.schedules.phase_intervals`)."""
        return phase_intervals(get_solver(solver or self.mc.solver), sum(self.stage_steps) if nfe is None else nfe,
                               self.stage_steps, "the cascade's 2 models")

    @torch.no_grad()
    def sample(self, model, y: torch.Tensor, *, generator: torch.Generator, nfe: int | None = None,
               cfg_scale: float | None = None, cfg_interval=None, previews: bool = False,
               solver: str | None = None, shift: float | None = None) -> SampleResult:
        spec, shift, scale, interval = sampling_settings(self.mc, solver=solver, shift=shift, cfg_scale=cfg_scale,
                                                         cfg_interval=cfg_interval)
        steps = self.phase_steps(nfe, spec)
        B, device = y.shape[0], y.device
        x = torch.randn(B, *self.coarse_shape, generator=generator).to(device)
        x_coarse, used = spec.integrate(GuidedVelocity(CFG(model, y, scale, interval)), x, time_grid(steps[0], shift))
        x, n = self._super_resolve(model, x_coarse, y, spec, steps[1], shift, scale, interval, generator)
        shown = [upsample(x_coarse, self.size), x] if previews else []
        return SampleResult(x=x, nfe=used + n, previews=shown)

    def _super_resolve(self, model, x_coarse, y, spec, steps: int, shift, scale, interval, generator):
        """The second solve: the SR model from fresh noise, conditioned on ``x_coarse``
        augmented at the fixed ``method.aug_level``; returns ``(x, NFE)``."""
        B, device = y.shape[0], y.device
        eps = torch.randn(B, *self.shape, generator=generator).to(device)
        sr = _SuperResolution(model, self.condition(x_coarse, self.mc.aug_level, eps), self.mc.aug_level)
        x = torch.randn(B, *self.shape, generator=generator).to(device)
        return spec.integrate(GuidedVelocity(CFG(sr, y, scale, interval)), x, time_grid(steps, shift))

    @torch.no_grad()
    def stage_diagnostics(self, model, x1: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator,
                          nfe: int | None = None, cfg_scale: float | None = None,
                          solver: str | None = None) -> dict[str, torch.Tensor]:
        """The hooks of :mod:`progflow.diagnose`, from true data ``x1``: ``oracle_clean``, the
        SR model's solve (as in :meth:`sample`) conditioned on the *true* coarse image
        ``down(x1)`` instead of a generated one; ``coarse_only``, that coarse image
        bilinearly upsampled (no super-resolution at all)."""
        spec, shift, scale, interval = sampling_settings(self.mc, solver=solver, cfg_scale=cfg_scale)
        steps = self.phase_steps(nfe, spec)
        x_coarse = downsample(x1, self.coarse)
        oracle, _ = self._super_resolve(model, x_coarse, y, spec, steps[1], shift, scale, interval, generator)
        return {"oracle_clean": oracle, "coarse_only": upsample_bilinear(x_coarse, self.size)}

    def training_share(self, steps: int, seed: int, batch_size: int) -> dict:
        """Share of training steps ``0 .. steps - 1`` that trained each model (coarse, SR):
        one model per step, by :func:`trains_sr`, whatever the seed and batch."""
        sr = sum(trains_sr(k, self.mc.train_split) for k in range(steps))
        return {"active_share": [(steps - sr) / max(steps, 1), sr / max(steps, 1)], "steps_per_stage": [steps - sr, sr]}


def _register_presets() -> None:
    """``fmnist-cascade-{xs,s}``: the base preset's width, depth, heads, batch, steps and lr;
    16px coarse images with patch 2 and 32px with patch 4, 8x8 tokens each."""
    for size in ("xs", "s"):
        base = PRESETS.get(f"fmnist-base-{size}")
        if base is None:
            continue
        preset = copy.deepcopy(base)
        preset["model"] = {**preset["model"], "arch": "cascade", "low_patch": 2}
        preset["method"] = {"name": "cascade", "coarse_size": 16, "train_split": 0.8, "stage_steps": [30, 10],
                            "nfe": 40}
        register_preset(f"fmnist-cascade-{size}", preset)


register_method("cascade", CascadeConfig, Cascade)
_register_presets()
