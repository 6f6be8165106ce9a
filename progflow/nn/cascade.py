"""The two networks of a cascade (methods.md section 2, "Cascaded"): a DiT on the coarse
image and a super-resolution DiT on the full image, held in one module so that one run
directory, one checkpoint and one optimizer carry both.

* ``low``: a plain :class:`~progflow.nn.dit.DiT` at ``method.coarse_size`` with patch
  ``model.low_patch`` (derived so that it has the full model's token grid: 16px with
  patch 2 and 32px with patch 4 both give 8x8 tokens).
* ``sr``: :class:`ConditionedDiT`, a DiT at full size whose patch embedding reads the
  noisy image and the (noise-augmented, upsampled) coarse image stacked on the channel
  axis, ``2C`` channels in and ``C`` out, so the token count stays the base model's; its
  conditioning adds an embedding of the augmentation level to time and class.

``model(x, t, y) -> v`` runs ``low``; ``model(x, t, y, cond, aug) -> v`` runs ``sr``. Both
go through the module's ``forward`` so that DDP sees every call; a training step uses one
of the two (``idle_parameters`` tells the trainer to let DDP look for the unused one).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn as nn

from progflow.config import DataConfig, ModelConfig
from progflow.errors import ConfigError
from progflow.nn.dit import DiT, dit_fields
from progflow.nn.layers import PatchEmbed, TimestepEmbedder
from progflow.registry import register_arch


@dataclass(frozen=True)
class CascadeModelConfig(ModelConfig):
    """``model.arch = "cascade"``: width/depth/heads/patch of both models (``patch`` is the
    super-resolution model's) plus the low-resolution model's patch (0 = derived)."""

    arch: str = "cascade"
    low_patch: int = 0


def default_low_patch(data: DataConfig, model: ModelConfig, coarse: int) -> int:
    """The patch giving the coarse model the full model's token grid: ``coarse * patch / size``."""
    side = data.image_size // model.patch
    if coarse % side:
        raise ConfigError(f"method.coarse_size {coarse} cannot be cut into the {side}x{side} token grid of "
                          f"model.patch {model.patch}; set model.low_patch")
    return coarse // side


class ConditionedDiT(DiT):
    """A DiT whose input is ``[x, cond]`` on the channel axis and whose conditioning is
    ``TimeEmb(t) + ClassEmb(y) + AugEmb(aug)``; the output has ``data.channels`` channels."""

    def __init__(self, data: DataConfig, model: ModelConfig):
        super().__init__(data, model)
        self.embed = PatchEmbed(2 * data.channels, model.width, self.patch)
        self.aug_embed = TimestepEmbedder(model.width)

    def example_inputs(self, batch: int = 1) -> tuple:
        x, t, y = super().example_inputs(batch)
        return x, t, y, torch.zeros_like(x), torch.full((batch,), 0.1)

    def forward(self, x, t_B, y_B, cond, aug_B):  # (B, C, H, W) twice, then (B,)
        c = self.t_embed(t_B) + self.y_embed(y_B) + self.aug_embed(aug_B)
        return self.finish(self.run_blocks(self.embed(torch.cat([x, cond], dim=1)), c), c)


class CascadeNet(nn.Module):
    idle_parameters = True  # each training step trains one of the two models

    def __init__(self, data: DataConfig, model: CascadeModelConfig, coarse: int, low_share: float = 0.8):
        super().__init__()
        if data.frames:
            raise ConfigError("the cascade is for images; data.frames must be 0")
        self.coarse, self.low_share = coarse, low_share
        low_patch = model.low_patch or default_low_patch(data, model, coarse)
        self.low = DiT(dataclasses.replace(data, image_size=coarse), dit_fields(model, patch=low_patch))
        self.sr = ConditionedDiT(data, dit_fields(model))
        self.grid, self.num_classes = self.sr.grid, data.num_classes

    def cost_parts(self) -> dict[str, str]:
        return {"low-res model": "low", "super-resolution model": "sr"}

    def example_passes(self) -> list[tuple[float, tuple]]:
        """An average training step: ``(share of the steps, inputs of one pass)`` per model."""
        return [(self.low_share, self.low.example_inputs()), (1.0 - self.low_share, self.sr.example_inputs())]

    def forward(self, x, t_B, y_B, cond=None, aug_B=None):
        return self.low(x, t_B, y_B) if cond is None else self.sr(x, t_B, y_B, cond, aug_B)


register_arch("cascade", CascadeModelConfig,
              lambda cfg: CascadeNet(cfg.data, cfg.model, cfg.method.coarse_size, cfg.method.train_split))
