"""Plain flow matching (methods.md section 1): the baseline every method is compared with.

Training: ``t ~ logit-normal(m, s)`` (or uniform), ``x_t = t x1 + (1 - t) x0``, loss
``mean ||model(x_t, t, y) - (x1 - x0)||^2``, labels dropped to null with probability 0.1.
Sampling: any solver of :mod:`progflow.solvers` (Euler by default) on a uniform or
shifted time grid, with classifier-free guidance.
"""

from __future__ import annotations

import torch

from progflow.config import MethodConfig
from progflow.errors import ConfigError
from progflow.guidance import CFG, GuidedVelocity
from progflow.methods.base import SampleResult, drop_labels, sampling_settings
from progflow.paths import interpolate, logit_normal_from_normal, velocity_target
from progflow.schedules import time_grid
from progflow.registry import register_method


class FlowMatching:
    def __init__(self, cfg):
        self.cfg = cfg
        self.mc = cfg.method
        self.shape = cfg.data.shape
        self.num_classes = cfg.data.num_classes

    @staticmethod
    def validate(cfg) -> None:
        if cfg.model.arch != "dit":
            raise ConfigError(f"method flow needs model.arch dit, got {cfg.model.arch!r}")

    @staticmethod
    def prepare(cfg, data):
        return cfg

    def draw_time(self, rng, n_stages: int | None = None) -> torch.Tensor:
        shape = () if n_stages is None else (n_stages,)
        if self.mc.time_sampler == "uniform":
            return rng.rand(*shape)
        return logit_normal_from_normal(rng.randn(*shape), self.mc.t_loc, self.mc.t_scale)

    def loss(self, model, x1: torch.Tensor, y: torch.Tensor, rng):
        x0 = rng.randn(*self.shape).to(x1.dtype)
        t = self.draw_time(rng).to(x1.dtype)
        y = drop_labels(y, self.mc.label_dropout, self.num_classes, rng.rand())
        v = model(interpolate(x1, x0, t), t, y)
        loss = (v.float() - velocity_target(x1, x0)).pow(2).mean()
        return loss, {}

    @torch.no_grad()
    def sample(self, model, y: torch.Tensor, *, generator: torch.Generator, nfe: int | None = None,
               cfg_scale: float | None = None, cfg_interval=None, previews: bool = False,
               solver: str | None = None, shift: float | None = None) -> SampleResult:
        """``nfe`` backbone evaluations of ``solver`` on a grid shifted by ``shift``
        (defaults: the run's ``method.nfe``, ``method.solver``, ``method.shift``)."""
        spec, shift, scale, interval = sampling_settings(self.mc, solver=solver, shift=shift, cfg_scale=cfg_scale,
                                                         cfg_interval=cfg_interval)
        grid = time_grid(spec.intervals(self.mc.nfe if nfe is None else nfe), shift)
        guided = CFG(model, y, scale, interval)
        x = torch.randn(y.shape[0], *self.shape, generator=generator).to(y.device)
        x, n = spec.integrate(GuidedVelocity(guided), x, grid)
        return SampleResult(x=x, nfe=n)


register_method("flow", MethodConfig, FlowMatching)
