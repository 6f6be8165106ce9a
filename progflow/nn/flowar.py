"""FlowAR networks (methods.md section 3): a scale-wise autoregressive transformer and a
small flow-matching head conditioned on its output through spatial adaLN.

Both work on token maps ``(B, C, s, s)`` of a representation (:mod:`progflow.representation`)
at the scale sides ``s_1 < ... < s_K`` (default 1, 2, 4, 8 for an 8x8 token grid); scale
``k`` has ``n_k = s_k^2`` tokens, and the scales are laid out one after another in a
sequence of ``L = sum_k n_k`` positions (85 by default).

* :class:`ScaleAR`: the input at scale 1 is the class embedding (the class token, repeated
  over scale 1's positions); at scale ``k > 1`` it is scale ``k - 1``'s map upsampled
  (nearest) to ``s_k`` and projected by one linear layer shared by all scales. Learned
  position embeddings plus a scale embedding; adaLN-Zero blocks conditioned on the class
  embedding; a block-causal mask (full attention within a scale, causal across scales).
  Its output at scale ``k``'s positions is the conditioning map ``cond_k``. With a
  key/value cache it runs one scale at a time (generation) and gives the same outputs as
  the teacher-forced pass over all scales.
* :class:`FlowHead`: a transformer over one scale's tokens (or several scales packed in
  one sequence with a block-diagonal mask, as in training), shared by all scales. Spatial
  adaLN: every token gets its own shift/scale/gate, ``Linear(SiLU(Linear(cond_k[token]) +
  TimeEmb(t_k)))``. With ``model.spatial_adaln = false`` (the ablation) the
  modulation is one vector per sample and scale (the mean over the scale's positions of
  ``Linear(cond_k)``, plus ``TimeEmb(t_k)``) and the per-position map is added to the input
  tokens instead. Output layers are zero-initialised.

``FlowARNet(scales, x_t, t_BK, y_B) -> v``: the teacher-forced training pass; ``scales``
are the clean maps (inputs of the AR transformer), ``x_t`` the noisy maps of every scale,
``t_BK`` their times; returns one velocity map per scale.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from progflow.config import ModelConfig
from progflow.errors import ConfigError
from progflow.nn.layers import AdaLNZeroBlock, FinalLayer, LabelEmbedder, TimestepEmbedder, sincos_pos_embed
from progflow.registry import register_arch
from progflow.representation import build_representation, map_from_tokens, tokens_from_map, upsample


@dataclass(frozen=True)
class FlowARModelConfig(ModelConfig):
    """``model.arch = "flowar"``: width/depth/heads (or ``size``) are the AR transformer's;
    the flow head has its own, 0 meaning the AR transformer's value (depth: 2)."""

    arch: str = "flowar"
    head_width: int = 0
    head_depth: int = 2
    head_heads: int = 0
    spatial_adaln: bool = True  # False: one modulation vector per sample and scale (ablation)

    def __post_init__(self):
        super().__post_init__()
        for name, default in (("head_width", self.width), ("head_heads", self.heads)):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, default)
        for name in ("head_width", "head_depth", "head_heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"model.{name} must be a positive integer; got {v!r}")
        if self.head_width > self.width:
            raise ConfigError(f"model.head_width {self.head_width} is wider than the AR transformer "
                              f"(model.width {self.width}); the flow head may be at most as wide")
        if self.head_width % self.head_heads:
            raise ConfigError(f"model.head_width {self.head_width} is not divisible by model.head_heads "
                              f"{self.head_heads}")

    def base_twin(self) -> ModelConfig:
        """The DiT FlowAR is measured against: the base model of the same ``size`` and patch."""
        return ModelConfig(size=self.size, mlp_ratio=self.mlp_ratio, patch=self.patch)


class ScaleLayout:
    """Where each scale sits in the packed sequence: sides, token counts, offsets."""

    def __init__(self, sides):
        self.sides = tuple(int(s) for s in sides)
        self.sizes = tuple(s * s for s in self.sides)
        self.offsets = tuple(sum(self.sizes[:k]) for k in range(len(self.sides) + 1))
        self.length = self.offsets[-1]
        self.scale_of_position = torch.repeat_interleave(torch.arange(len(self.sides)), torch.tensor(self.sizes))

    def span(self, first: int, last: int) -> slice:
        """Positions of scales ``first .. last - 1``."""
        return slice(self.offsets[first], self.offsets[last])

    def block_causal_mask(self) -> torch.Tensor:
        """``(L, L)`` bool, True where position i may attend to j: scale(j) <= scale(i)."""
        s = self.scale_of_position
        return s[None, :] <= s[:, None]

    def block_diagonal_mask(self, ks) -> torch.Tensor:
        """Attention only within each of the packed scales ``ks``."""
        s = torch.repeat_interleave(torch.arange(len(ks)), torch.tensor([self.sizes[k] for k in ks]))
        return s[None, :] == s[:, None]


class ScaleAR(nn.Module):
    """Block-causal transformer over the scales; returns the conditioning maps as tokens."""

    def __init__(self, layout: ScaleLayout, channels: int, model: FlowARModelConfig, num_classes: int):
        super().__init__()
        self.layout, self.num_classes = layout, num_classes
        w = model.width
        self.y_embed = LabelEmbedder(num_classes, w)
        self.in_proj = nn.Linear(channels, w)  # shared by every scale
        self.pos = nn.Parameter(torch.randn(layout.length, w) * 0.02)
        self.scale_embed = nn.Parameter(torch.randn(len(layout.sides), w) * 0.02)
        self.blocks = nn.ModuleList(AdaLNZeroBlock(w, model.heads, model.mlp_ratio) for _ in range(model.depth))
        self.norm = nn.LayerNorm(w, eps=1e-6)
        self.register_buffer("mask", layout.block_causal_mask(), persistent=False)

    def new_cache(self) -> list[dict]:
        return [{} for _ in self.blocks]

    def embed(self, k: int, prev_map: torch.Tensor | None, c_BD: torch.Tensor) -> torch.Tensor:
        """Input tokens of scale ``k``: the class token at scale 0, else the previous scale's map
        upsampled to this side and projected; plus position and scale embeddings."""
        lay = self.layout
        if k == 0:
            h = c_BD[:, None].expand(-1, lay.sizes[0], -1)
        else:
            h = self.in_proj(tokens_from_map(upsample(prev_map, lay.sides[k])))
        return h + self.pos[lay.span(k, k + 1)] + self.scale_embed[k]

    def forward(self, prev_maps: list, y_B: torch.Tensor, first: int = 0, cache: list[dict] | None = None):
        """Scales ``first .. first + len(prev_maps) - 1``; ``prev_maps[i]`` is the map of the scale
        before scale ``first + i`` (None for scale 0). Without a cache, ``first`` must be 0;
        with one, the earlier scales' keys and values come from it (and this call's are added).
        Returns ``(B, n, width)`` for the positions of these scales."""
        last = first + len(prev_maps)
        if cache is None and first:
            raise ValueError("scales after the first need the key/value cache of the earlier ones")
        c_BD = self.y_embed(y_B)
        h = torch.cat([self.embed(first + i, m, c_BD) for i, m in enumerate(prev_maps)], dim=1)
        span = self.layout.span(first, last)
        mask = self.mask[span, : span.stop]
        mask = None if bool(mask.all()) else mask
        for i, block in enumerate(self.blocks):
            h = block(h, c_BD, mask, None if cache is None else cache[i])
        return self.norm(h)


class FlowHead(nn.Module):
    """Flow-matching transformer over the tokens of one or more scales (packed)."""

    def __init__(self, layout: ScaleLayout, channels: int, model: FlowARModelConfig):
        super().__init__()
        self.layout, self.spatial = layout, model.spatial_adaln
        w = model.head_width
        self.in_proj = nn.Linear(channels, w)
        self.t_embed = TimestepEmbedder(w)
        self.cond_proj = nn.Linear(model.width, w)
        pos = torch.cat([sincos_pos_embed(w, (s, s)) for s in layout.sides])
        self.register_buffer("pos", pos, persistent=False)
        self.blocks = nn.ModuleList(AdaLNZeroBlock(w, model.head_heads, model.mlp_ratio)
                                    for _ in range(model.head_depth))
        self.final = FinalLayer(w, channels)

    def forward(self, x_BLC: torch.Tensor, t_BK: torch.Tensor, cond_BLD: torch.Tensor, ks) -> torch.Tensor:
        """``x_BLC``: noisy tokens of the scales ``ks`` packed in order; ``t_BK`` one time per
        sample and packed scale; ``cond_BLD`` the AR transformer's output at these positions.
        Returns the velocity tokens ``(B, L, C)``."""
        lay, ks = self.layout, list(ks)
        sizes = torch.tensor([lay.sizes[k] for k in ks], device=x_BLC.device)
        B = x_BLC.shape[0]
        t_emb = self.t_embed(t_BK.reshape(-1)).reshape(B, len(ks), -1).repeat_interleave(sizes, dim=1)
        cond = self.cond_proj(cond_BLD)
        pos = torch.cat([self.pos[lay.span(k, k + 1)] for k in ks])
        h = self.in_proj(x_BLC) + pos
        if self.spatial:
            c = cond + t_emb  # one modulation input per token
        else:  # per sample and scale: the scale's mean map; the map itself enters the input
            h = h + cond
            means = torch.stack([part.mean(1) for part in cond.split(sizes.tolist(), dim=1)], dim=1)
            c = means.repeat_interleave(sizes, dim=1) + t_emb
        mask = None if len(ks) == 1 else lay.block_diagonal_mask(ks).to(x_BLC.device)
        for block in self.blocks:
            h = block(h, c, mask)
        return self.final(h, c)


class FlowARNet(nn.Module):
    """The AR transformer and the flow head over the scales ``sides`` of a ``channels``-channel
    token map; ``grid`` is the finest map's (for :mod:`progflow.info`)."""

    def __init__(self, sides, channels: int, model: FlowARModelConfig, num_classes: int):
        super().__init__()
        self.layout = ScaleLayout(sides)
        self.sides, self.channels, self.num_classes = self.layout.sides, channels, num_classes
        self.grid = (self.sides[-1], self.sides[-1])
        self.ar = ScaleAR(self.layout, channels, model, num_classes)
        self.head = FlowHead(self.layout, channels, model)

    def cost_parts(self) -> dict[str, str]:
        """Sub-modules whose parameters, FLOPs and calls :mod:`progflow.info` reports apart."""
        return {"AR transformer": "ar", "flow head": "head"}

    def example_inputs(self, batch: int = 1) -> tuple:
        """One training pass (zeros, ``t = 0.5`` at every scale, class 0)."""
        maps = [torch.zeros(batch, self.channels, s, s) for s in self.sides]
        return maps, maps, torch.full((batch, len(self.sides)), 0.5), torch.zeros(batch, dtype=torch.long)

    def forward(self, scales: list, x_t: list, t_BK: torch.Tensor, y_B: torch.Tensor) -> list[torch.Tensor]:
        K = len(self.sides)
        cond = self.ar([None, *scales[:-1]], y_B)
        v = self.head(torch.cat([tokens_from_map(x) for x in x_t], dim=1), t_BK, cond, range(K))
        return [map_from_tokens(part, s) for part, s in zip(v.split(self.layout.sizes, dim=1), self.sides)]


def build_flowar_net(cfg) -> FlowARNet:
    if cfg.data.frames:
        raise ConfigError("FlowAR is for images; data.frames must be 0")
    rep = build_representation(cfg.data, cfg.model)
    return FlowARNet(cfg.method.scales, rep.channels, cfg.model, cfg.data.num_classes)


register_arch("flowar", FlowARModelConfig, build_flowar_net)
