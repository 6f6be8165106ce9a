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
