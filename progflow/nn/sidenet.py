"""SideNet of the BA-solver (methods.md section 4): a small conv net that predicts the
backbone's velocity at a nearby time from the velocity at the current time.

``side(x, v, t, [h_1, ..., h_n], y) -> [v(t + h_1), ..., v(t + h_n)]`` with every output
``v + h_i * f(x, v, t, h_i, y)``; the last layer of ``f`` starts at zero, so an untrained
SideNet returns ``v`` for every offset (Euler's constant-velocity assumption).

State layout. ``x`` and ``v`` are one tensor (base runs) or a list of stage tensors (DFM,
coarse to fine). Every stage is cut into square patches whose size puts it on one common
``G x G`` grid (``G = finest side / patch``; a 16px and a 32px stage with patch 2 both land
on 16x16 with patches 1 and 2), as the DFM backbone's per-stage patch embeddings do; the
patch channels of all stages, for ``x`` and ``v``, are concatenated. Axes between the
channel and the spatial ones (video frames) are folded into channels. The output is split
back per stage by the inverse patch map, so the round trip loses nothing.

Times. ``t`` and ``h`` carry one value per stage (``(B, S)``): each stage has its own time
on a staged schedule and moves by its own offset over an interval; a stage that does not
move (``h_s = 0``, e.g. a DFM stage that has not started) gets exactly its input velocity
back. The embedding of ``t`` concatenates sinusoidal features of every stage's time.

Network, a small U: ``f`` = 3x3 conv on the patch channels of ``(x, v)`` at ``G x G``
(width/2 channels) -> 2x2 strided conv to ``G/2 x G/2`` (width) -> residual block (FiLM
from ``t`` and the class) -> one self-attention block -> residual block -> 2x2 transposed
conv back to ``G x G``, added to the first features -> FiLM from ``h`` -> zero-initialised
3x3 conv to patch channels. The fine grid keeps pixel detail in the output (patch 2 fits
much better than patch 4 at the same width), the half-size trunk keeps the cost of patch 4.
Only the last FiLM and conv see ``h``, so one call for several offsets (the predictor's
three Gauss-Lobatto nodes) runs the trunk once.

>>> import torch
>>> net = SideNet([(1, 32, 32)], num_classes=10, width=16)
>>> x, v = torch.randn(2, 1, 32, 32), torch.randn(2, 1, 32, 32)
>>> out = net(x, v, torch.full((2, 1), 0.3), [torch.full((2, 1), 0.1)], torch.zeros(2, dtype=torch.long))
>>> bool(torch.equal(out[0], v))
True
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from progflow.errors import ConfigError
from progflow.nn.layers import Attention, patchify, timestep_embedding, unpatchify
from progflow.paths import expand_time

Shape = tuple[int, ...]


@dataclass(frozen=True)
class SideNetConfig:
    """Size of a SideNet. ``width`` is the conv width (the size setting: 32 is about 2% of
    the ``s`` backbone), ``patch`` the finest stage's patch (sets the common grid)."""

    width: int = 32
    emb: int = 64  # conditioning vector width
    freq: int = 32  # sinusoidal features per time value
    patch: int = 2
    heads: int = 2

    def __post_init__(self):
        for name in ("width", "emb", "freq", "patch", "heads"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ConfigError(f"sidenet.{name} must be a positive integer; got {v!r}")
        if self.width % self.heads:
            raise ConfigError(f"sidenet.width {self.width} is not divisible by sidenet.heads {self.heads}")
        if self.width % 8:
            raise ConfigError(f"sidenet.width must be a multiple of 8 (group norm); got {self.width}")


def _groups(width: int) -> int:
    return 8 if width % 8 == 0 else 1


class FiLMResBlock(nn.Module):
    """``x + conv(SiLU(FiLM(norm(conv(SiLU(x))), c)))`` on ``(B, W, G, G)`` (one norm per
    block: group norms are a large share of the run time of a net this small)."""

    def __init__(self, width: int, emb: int):
        super().__init__()
        self.norm = nn.GroupNorm(_groups(width), width)
        self.conv1, self.conv2 = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)
        self.film = nn.Linear(emb, 2 * width)

    def forward(self, x: torch.Tensor, c_BE: torch.Tensor) -> torch.Tensor:
        scale, shift = self.film(c_BE)[:, :, None, None].chunk(2, dim=1)
        h = self.norm(self.conv1(F.silu(x))) * (1 + scale) + shift
        return x + self.conv2(F.silu(h))


class SideNet(nn.Module):
    """``forward(x, v, t_BS, hs, y_B) -> [v_out per offset]``; see the module docstring.

    ``stage_shapes``: one sample's shape per stage, ``(C, H, W)`` or ``(C, T, H, W)``,
    coarse to fine (one entry for a base run). ``num_classes``: label ``num_classes`` is
    the null class (unconditional branch of CFG).
    """

    def __init__(self, stage_shapes: list[Shape], num_classes: int, width: int = 32, emb: int = 64, freq: int = 32,
                 patch: int = 2, heads: int = 2):
        super().__init__()
        self.stage_shapes = [tuple(s) for s in stage_shapes]
        self.num_classes = num_classes
        self.freq = freq
        finest = self.stage_shapes[-1]
        if finest[-1] != finest[-2] or finest[-1] % patch:
            raise ConfigError(f"sidenet.patch {patch} does not divide the {finest[-2]}x{finest[-1]} samples")
        self.grid = finest[-1] // patch
        self.patches, self.folded = [], []
        for s in self.stage_shapes:
            if s[-1] != s[-2] or s[-1] % self.grid:
                raise ConfigError(f"a {s[-2]}x{s[-1]} stage does not fit the SideNet's {self.grid}x{self.grid} grid "
                                  f"(sidenet.patch {patch})")
            self.patches.append(s[-1] // self.grid)
            self.folded.append(math.prod(s[:-2]))  # channels (x frames)
        self.out_ch = [c * p * p for c, p in zip(self.folded, self.patches)]
        S = len(self.stage_shapes)
        self.t_mlp = nn.Sequential(nn.Linear(S * freq, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.h_mlp = nn.Sequential(nn.Linear(S * freq, emb), nn.SiLU(), nn.Linear(emb, emb))
        self.y_embed = nn.Embedding(num_classes + 1, emb)
        if self.grid % 2:
            raise ConfigError(f"the SideNet's {self.grid}x{self.grid} grid (sidenet.patch {patch}) must be even: "
                              "its trunk runs at half that")
        fine = width // 2
        self.conv_in = nn.Conv2d(2 * sum(self.out_ch), fine, 3, padding=1)
        self.down = nn.Conv2d(fine, width, 2, stride=2)
        self.block1 = FiLMResBlock(width, emb)
        self.attn_norm = nn.GroupNorm(_groups(width), width)
        self.attn = Attention(width, heads)
        self.block2 = FiLMResBlock(width, emb)
        self.up = nn.ConvTranspose2d(width, fine, 2, stride=2)
        self.out_norm = nn.GroupNorm(_groups(fine), fine)
        self.out_film = nn.Linear(emb, 2 * fine)
        self.conv_out = nn.Conv2d(fine, sum(self.out_ch), 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)
        nn.init.zeros_(self.conv_out.bias)

    # ---- state <-> common grid ----------------------------------------------------------------
    def _to_grid(self, stages: list[torch.Tensor]) -> torch.Tensor:
        """Stages ``(B, C, [T,] H_s, W_s)`` -> patch channels on the common grid ``(B, K, G, G)``."""
        parts = []
        for s, p in zip(stages, self.patches):
            s = s.reshape(s.shape[0], -1, *s.shape[-2:])
            parts.append(patchify(s, (p, p)))  # (B, G*G, C*p*p)
        tok = torch.cat(parts, dim=-1)
        return tok.transpose(1, 2).reshape(tok.shape[0], -1, self.grid, self.grid)

    def _from_grid(self, g_BKGG: torch.Tensor) -> list[torch.Tensor]:
        tok = g_BKGG.flatten(2).transpose(1, 2)
        out = []
        for shape, c, p, part in zip(self.stage_shapes, self.folded, self.patches, tok.split(self.out_ch, dim=-1)):
            img = unpatchify(part, c, (self.grid, self.grid), (p, p))
            out.append(img.reshape(img.shape[0], *shape))
        return out

    def _embed_times(self, t_BS: torch.Tensor, mlp: nn.Module) -> torch.Tensor:
        B, S = t_BS.shape
        feats = timestep_embedding(t_BS.reshape(-1), self.freq).reshape(B, S * self.freq)
        return mlp(feats.to(self.conv_in.weight.dtype))

    # ---- forward --------------------------------------------------------------------------------
    def forward(self, x, v, t_BS: torch.Tensor, hs: list[torch.Tensor], y_B: torch.Tensor):
        """Velocities at ``t + h`` for every ``h_BS`` in ``hs``; each like ``v`` (tensor or list)."""
        single = isinstance(v, torch.Tensor)
        xs, vs = ([x], [v]) if single else (list(x), list(v))
        B = vs[0].shape[0]
        c_ty = self._embed_times(t_BS, self.t_mlp) + self.y_embed(y_B)
        fine = self.conv_in(torch.cat([self._to_grid(xs), self._to_grid(vs)], dim=1).to(self.conv_in.weight.dtype))
        feat = self.block1(self.down(F.silu(fine)), c_ty)
        tok = self.attn_norm(feat).flatten(2).transpose(1, 2)
        feat = feat + self.attn(tok).transpose(1, 2).reshape(feat.shape)
        feat = fine + self.up(self.block2(feat, c_ty))
        n = len(hs)
        h_all = torch.cat(list(hs))  # (n*B, S)
        c_h = self._embed_times(h_all, self.h_mlp) + c_ty.repeat(n, 1)
        scale, shift = self.out_film(c_h)[:, :, None, None].chunk(2, dim=1)
        normed = self.out_norm(feat).repeat(n, 1, 1, 1)
        f = self._from_grid(self.conv_out(F.silu(normed * (1 + scale) + shift)))
        outs = []
        for i, h_BS in enumerate(hs):
            o = [vs_ + expand_time(h_BS[:, s], vs_) * f_[i * B:(i + 1) * B].to(vs_.dtype)
                 for s, (vs_, f_) in enumerate(zip(vs, f))]
            outs.append(o[0] if single else o)
        return outs


def build_sidenet(stage_shapes: list[Shape], num_classes: int, cfg: SideNetConfig) -> SideNet:
    return SideNet(stage_shapes, num_classes, width=cfg.width, emb=cfg.emb, freq=cfg.freq, patch=cfg.patch,
                   heads=cfg.heads)
