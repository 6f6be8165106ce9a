"""Pieces shared by the training methods."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class SampleResult:
    x: torch.Tensor  # final samples in model range [-1, 1], (B, C, H, W) or (B, C, T, H, W)
    nfe: int  # backbone evaluations per sample
    previews: list[torch.Tensor] = field(default_factory=list)  # partial results, coarse to fine


def drop_labels(y: torch.Tensor, p: float, num_classes: int, u: torch.Tensor) -> torch.Tensor:
    """Replace labels by the null class ``num_classes`` where the uniform draw ``u < p``."""
    return torch.where(u < p, torch.full_like(y, num_classes), y)


def sampling_settings(mc, *, solver=None, shift=None, cfg_scale=None, cfg_interval=None):
    """``(solver spec, shift, cfg scale, cfg interval)`` of one sampling call: each argument
    that is None takes the run's ``method.*`` default. Every method's ``sample`` starts here,
    so a default cannot be resolved two ways (e.g. a shift applied from the config twice)."""
    from progflow.solvers import get_solver  # (solvers import nothing of the methods)

    return (get_solver(solver or mc.solver), mc.shift if shift is None else shift,
            mc.cfg_scale if cfg_scale is None else cfg_scale, mc.cfg_interval if cfg_interval is None else cfg_interval)
