"""The Pyramidal Flow backbone: one DiT trunk that works at every resolution of the pyramid.

A sample is, at any moment, at one resolution (its time window's; see
:mod:`progflow.methods.pyramidal`). Every resolution has its own patch embedding and its
own zero-initialised final layer, with patch sizes chosen as DFM's (``model.stage_patches``,
:func:`progflow.nn.dfm.stage_layout`) so that every resolution gives the base model's token
grid: 16px with patch 2 and 32px with patch 4 are both 8x8 tokens. The trunk, the time and
class embedders are shared; the time is the global time, which also tells the window.

``model(x, t_B, y_B, window) -> v``: ``x`` is ``(B, C, H_k, W_k)`` for the one window
``window`` of the whole batch (the method groups a training batch by window).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from progflow.config import DataConfig
from progflow.decompose import LaplacianPyramid
from progflow.errors import ConfigError
from progflow.nn.dfm import DFMModelConfig, stage_layout
from progflow.nn.dit import DiTTrunk
from progflow.nn.layers import FinalLayer, PatchEmbed, unpatchify
from progflow.registry import register_arch


@dataclass(frozen=True)
class PyramidalModelConfig(DFMModelConfig):
    """``model.arch = "pyramidal"``: the DiT fields plus one spatial patch per resolution,
    coarse to fine (``stage_patches``; empty = derived for equal token grids)."""

    arch: str = "pyramidal"


class PyramidalDiT(DiTTrunk):
    idle_parameters = True  # a batch may hold no sample of some window

    def __init__(self, data: DataConfig, model: PyramidalModelConfig, windows: int):
        if data.frames:
            raise ConfigError("Pyramidal Flow is for images; data.frames must be 0")
        shapes, patches, grid = stage_layout(data, model, LaplacianPyramid(windows))
        super().__init__(model, grid, data.num_classes)
        self.shapes, self.patches, self.channels = shapes, patches, data.channels
        w = model.width
        self.embed = nn.ModuleList(PatchEmbed(s[0], w, p) for s, p in zip(shapes, patches))
        self.final = nn.ModuleList(FinalLayer(w, s[0] * math.prod(p)) for s, p in zip(shapes, patches))

    def example_inputs(self, batch: int = 1) -> tuple:
        """One training pass at the finest resolution (every window costs the same)."""
        k = len(self.shapes) - 1
        return (torch.zeros(batch, *self.shapes[k]), torch.full((batch,), 0.5), torch.zeros(batch, dtype=torch.long), k)

    def forward(self, x: torch.Tensor, t_B: torch.Tensor, y_B: torch.Tensor, window: int) -> torch.Tensor:
        c = self.t_embed(t_B) + self.y_embed(y_B)
        h = self.run_blocks(self.embed[window](x), c)
        return unpatchify(self.final[window](h, c), self.channels, self.grid, self.patches[window])


register_arch("pyramidal", PyramidalModelConfig,
              lambda cfg: PyramidalDiT(cfg.data, cfg.model, len(cfg.method.boundaries) + 1))
