"""DiT/SiT backbone for images ``(B, C, H, W)`` and videos ``(B, C, T, H, W)``.

``model(x, t, y) -> v``: a pure velocity network (no guidance, no solver). Conditioning
``c = TimestepEmbedder(t) + LabelEmbedder(y)``; label ``num_classes`` is the null class.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from progflow.config import DataConfig, ModelConfig
from progflow.registry import arch_entry, register_arch
from progflow.nn.layers import (
    AdaLNZeroBlock,
    FinalLayer,
    LabelEmbedder,
    PatchEmbed,
    TimestepEmbedder,
    sincos_pos_embed,
    unpatchify,
)


def patch_shape(data: DataConfig, model: ModelConfig, spatial_patch: int | None = None) -> tuple[int, ...]:
    p = spatial_patch or model.patch
    return (model.temporal_patch, p, p) if data.frames else (p, p)


def token_grid(sample_shape: tuple[int, ...], patch: tuple[int, ...]) -> tuple[int, ...]:
    """Token grid for one sample ``(C, *S)`` cut in patches ``patch``."""
    return tuple(s // p for s, p in zip(sample_shape[1:], patch))


class DiTTrunk(nn.Module):
    """The shared part of every DiT variant: conditioning embedders, position embedding,
    the adaLN-Zero blocks and the final adaLN. Subclasses own input embedding and heads."""

    def __init__(self, model: ModelConfig, grid: tuple[int, ...], num_classes: int):
        super().__init__()
        self.grid = grid
        self.num_classes = num_classes
        self.t_embed = TimestepEmbedder(model.width)
        self.y_embed = LabelEmbedder(num_classes, model.width)
        self.register_buffer("pos", sincos_pos_embed(model.width, grid)[None], persistent=False)
        self.blocks = nn.ModuleList(AdaLNZeroBlock(model.width, model.heads, model.mlp_ratio) for _ in range(model.depth))

    def run_blocks(self, tokens_BLD: torch.Tensor, c_BD: torch.Tensor) -> torch.Tensor:
        x = tokens_BLD + self.pos.to(tokens_BLD.dtype)
        for block in self.blocks:
            x = block(x, c_BD)
        return x


class DiT(DiTTrunk):
    """Single-scale DiT: patch embed -> blocks -> adaLN final layer -> unpatchify."""

    def __init__(self, data: DataConfig, model: ModelConfig):
        self.patch = patch_shape(data, model)
        super().__init__(model, token_grid(data.shape, self.patch), data.num_classes)
        self.channels = data.channels
        self.embed = PatchEmbed(data.channels, model.width, self.patch)
        self.final = FinalLayer(model.width, data.channels * math.prod(self.patch))

    def example_inputs(self, batch: int = 1) -> tuple:
        """Inputs of one forward pass (zeros, ``t = 0.5``, class 0), e.g. to count FLOPs."""
        shape = (self.channels, *(g * p for g, p in zip(self.grid, self.patch)))
        return torch.zeros(batch, *shape), torch.full((batch,), 0.5), torch.zeros(batch, dtype=torch.long)

    def forward(self, x: torch.Tensor, t_B: torch.Tensor, y_B: torch.Tensor) -> torch.Tensor:
        c = self.t_embed(t_B) + self.y_embed(y_B)
        return self.finish(self.run_blocks(self.embed(x), c), c)

    def finish(self, h_BLD: torch.Tensor, c_BD: torch.Tensor) -> torch.Tensor:
        """Final adaLN layer and unpatchify: tokens -> ``(B, C, *S)``."""
        return unpatchify(self.final(h_BLD, c_BD), self.channels, self.grid, self.patch)


def dit_fields(model: ModelConfig, **changes) -> ModelConfig:
    """The plain DiT fields of any architecture's model config, with ``changes``."""
    import dataclasses

    fields = {f.name: getattr(model, f.name) for f in dataclasses.fields(ModelConfig)}
    return ModelConfig(**{**fields, "arch": "dit", **changes})


def build_model(cfg) -> nn.Module:
    """Build the backbone of a :class:`~progflow.config.TrainConfig` (``model.arch``,
    looked up in :mod:`progflow.registry`)."""
    return arch_entry(cfg.model.arch).impl(cfg)


register_arch("dit", ModelConfig, lambda cfg: DiT(cfg.data, cfg.model))


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
