"""DFM backbone (methods.md section 2): one DiT trunk shared by all stages of a decomposition.

Changes to the single-scale DiT (:mod:`progflow.nn.dit`), everything else shared through
:class:`~progflow.nn.dit.DiTTrunk`:

* one patch embedding per stage, with patch sizes chosen so that every stage gives the
  same token grid as the finest stage with ``model.patch`` (e.g. 8px stage with patch 1,
  16px with patch 2, 32px with patch 4: 8x8 tokens each); the per-stage token embeddings
  are summed into one sequence;
* one timestep embedder per stage; ``c = sum_s TimeEmb_s(t_s) + ClassEmb(y) + StageEmb(q)``
  with ``q`` the active (latest-entered) stage index;
* one zero-initialised adaLN final layer per stage on the shared final tokens.

``model(x_stages, t_BS, y_B, active_B) -> v_stages``: ``x_stages[s]`` is ``(B, *stage_shape_s)``,
``t_BS`` the per-sample per-stage times ``(B, S)``. Stages that have not started are fed
zeros with ``t = 0`` by the caller. Videos ``(B, C, T, H, W)`` use 3-D patches
``(model.temporal_patch, p_s, p_s)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from dataclasses import dataclass

from progflow.config import DataConfig, ModelConfig
from progflow.decompose import Decomposition, build_decomposition, sample_stage_shapes
from progflow.errors import ConfigError
from progflow.nn.dit import DiTTrunk, patch_shape, token_grid
from progflow.nn.layers import FinalLayer, PatchEmbed, TimestepEmbedder, unpatchify
from progflow.registry import register_arch

Shape = tuple[int, ...]


@dataclass(frozen=True)
class DFMModelConfig(ModelConfig):
    """``model.arch = "dfm"``: the DiT fields plus one spatial patch per stage."""

    arch: str = "dfm"
    stage_patches: tuple[int, ...] = ()  # spatial patch per stage, coarse to fine; () = derived


def default_stage_patches(data: DataConfig, model: ModelConfig, decomp: Decomposition) -> tuple[int, ...]:
    """Spatial patch per stage giving every stage the token grid ``image_size / model.patch``:
    ``p_s = size_s * model.patch / image_size``. Raises ConfigError when one is not an integer."""
    side = data.image_size // model.patch
    patches = []
    for s, shape in enumerate(sample_stage_shapes(decomp, data.shape), start=1):
        size = shape[-1]
        if size % side:
            raise ConfigError(
                f"stage {s} is {size}px, which no integer patch cuts into the {side}x{side} token grid of "
                f"model.patch {model.patch}; use a model.patch divisible by 2**(stages-1) or set model.stage_patches"
            )
        patches.append(size // side)
    return tuple(patches)


def stage_layout(
    data: DataConfig, model: ModelConfig, decomp: Decomposition
) -> tuple[list[Shape], list[Shape], Shape]:
    """Per-stage sample shapes, per-stage patch shapes and the common token grid.

    Uses ``model.stage_patches`` (or :func:`default_stage_patches` when empty) and checks
    that every stage gives the same token grid, equal to the base DiT's grid
    ``data.shape / patch_shape(model.patch)``. Raises ConfigError otherwise.
    """
    try:
        shapes = sample_stage_shapes(decomp, data.shape)
    except ValueError as e:
        raise ConfigError(f"data.image_size {data.image_size}: {e}") from None
    spatial = model.stage_patches or default_stage_patches(data, model, decomp)
    if len(spatial) != decomp.num_stages:
        raise ConfigError(f"model.stage_patches has {len(spatial)} entries for {decomp.num_stages} stages")
    if any(not isinstance(p, int) or p < 1 for p in spatial):
        raise ConfigError(f"model.stage_patches must be positive integers; got {list(spatial)}")
    target = token_grid(data.shape, patch_shape(data, model))
    patches = [patch_shape(data, model, p) for p in spatial]
    for s, (shape, patch) in enumerate(zip(shapes, patches), start=1):
        if any(n % p for n, p in zip(shape[1:], patch)):
            raise ConfigError(f"stage {s} of shape {shape[1:]} is not divisible by its patch {patch}")
        grid = token_grid(shape, patch)
        if grid != target:
            raise ConfigError(
                f"unequal token grids: stage {s} ({shape[-1]}px, patch {patch[-1]}) gives {grid}, the finest "
                f"stage with model.patch {model.patch} gives {target}; model.stage_patches={list(spatial)}"
            )
    return shapes, patches, target


class DFMDiT(DiTTrunk):
    """Multi-stage DiT for DFM.

    ``decomposition`` is a :class:`~progflow.decompose.Decomposition` or a name
    (``"laplacian"``, ``"haar"``, ``"identity"``); with a name, the number of stages is
    ``stages`` or ``len(model.stage_patches)``. Only the decomposition's stage shapes are
    used; the split itself belongs to the training method.

    >>> from dataclasses import dataclass

from progflow.config import DataConfig, ModelConfig
    >>> net = DFMDiT(DataConfig(), DFMModelConfig(size="xs", stage_patches=(2, 4)))
    >>> x = [torch.zeros(3, 1, 16, 16), torch.zeros(3, 1, 32, 32)]
    >>> [tuple(v.shape) for v in net(x, torch.zeros(3, 2), torch.zeros(3, dtype=torch.long))]
    [(3, 1, 16, 16), (3, 1, 32, 32)]
    """

    def __init__(self, data: DataConfig, model: ModelConfig, decomposition: str | Decomposition = "laplacian",
                 stages: int | None = None):
        if isinstance(decomposition, str):
            n = stages or len(model.stage_patches)
            if not n:
                raise ConfigError("DFMDiT needs the number of stages: set model.stage_patches or pass stages=")
            decomposition = build_decomposition(decomposition, n)
        shapes, patches, grid = stage_layout(data, model, decomposition)
        super().__init__(model, grid, data.num_classes)
        self.num_stages = decomposition.num_stages
        self.stage_shapes = shapes  # per sample, (C_s, [T,] H_s, W_s)
        self.patches = patches
        w = model.width
        self.embed = nn.ModuleList(PatchEmbed(shape[0], w, patch) for shape, patch in zip(shapes, patches))
        self.t_embed = nn.ModuleList(TimestepEmbedder(w) for _ in shapes)  # replaces the trunk's single one
        self.stage_embed = nn.Embedding(self.num_stages, w)
        nn.init.normal_(self.stage_embed.weight, std=0.02)
        self.final = nn.ModuleList(
            FinalLayer(w, shape[0] * math.prod(patch)) for shape, patch in zip(shapes, patches)
        )

    def example_inputs(self, batch: int = 1) -> tuple:
        """Inputs of one forward pass with every stage active (zeros, ``t = 0.5``, class 0)."""
        S = self.num_stages
        x = [torch.zeros(batch, *shape) for shape in self.stage_shapes]
        return (x, torch.full((batch, S), 0.5), torch.zeros(batch, dtype=torch.long),
                torch.full((batch,), S - 1, dtype=torch.long))

    @staticmethod
    def active_from_time(t_BS: torch.Tensor) -> torch.Tensor:
        """Index of the last stage with ``t > 0`` per sample (0 when none has started)."""
        S = t_BS.shape[1]
        ranks = torch.arange(1, S + 1, device=t_BS.device)
        return ((t_BS > 0) * ranks).amax(dim=1).clamp(min=1) - 1

    def forward(self, x_stages, t_BS: torch.Tensor, y_B: torch.Tensor,
                active_B: torch.Tensor | None = None) -> list[torch.Tensor]:
        S = self.num_stages
        if len(x_stages) != S:
            raise ValueError(f"expected {S} stage tensors, got {len(x_stages)}")
        if t_BS.ndim != 2 or t_BS.shape[1] != S:
            raise ValueError(f"t_BS must be (B, {S}), got {tuple(t_BS.shape)}")
        if active_B is None:
            active_B = self.active_from_time(t_BS)
        c_BD = self.y_embed(y_B) + self.stage_embed(active_B.long())
        for s in range(S):
            c_BD = c_BD + self.t_embed[s](t_BS[:, s])
        tokens_BLD = sum(embed(x) for embed, x in zip(self.embed, x_stages))
        h_BLD = self.run_blocks(tokens_BLD, c_BD)
        return [
            unpatchify(final(h_BLD, c_BD), shape[0], self.grid, patch)
            for final, shape, patch in zip(self.final, self.stage_shapes, self.patches)
        ]


register_arch("dfm", DFMModelConfig, lambda cfg: DFMDiT(cfg.data, cfg.model, decomposition=cfg.method.decomposition,
                                                         stages=cfg.method.stages))
