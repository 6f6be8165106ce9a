"""Building blocks shared by every transformer backbone in progflow.

Shapes: images ``x_BCHW``, videos ``x_BCTHW``; tokens ``tokens_BLD`` (batch, length, width);
conditioning vectors ``c_BD``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def timestep_embedding(t_B: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of a per-sample time ``t`` in [0, 1] (scaled by 1000 first)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t_B.device) / half)
    args = 1000.0 * t_B.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class TimestepEmbedder(nn.Module):
    """Sinusoidal features of ``t`` followed by a two-layer MLP."""

    def __init__(self, width: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, width), nn.SiLU(), nn.Linear(width, width))

    def forward(self, t_B: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t_B, self.freq_dim).to(self.mlp[0].weight.dtype)
        return self.mlp(emb)


class LabelEmbedder(nn.Module):
    """Class embedding table with one extra row, index ``num_classes``, for the null class.

    Label dropout for classifier-free guidance is done by the training method (it owns the
    randomness), which replaces labels by ``num_classes`` before calling the model.
    """

    def __init__(self, num_classes: int, width: int):
        super().__init__()
        self.num_classes = num_classes
        self.table = nn.Embedding(num_classes + 1, width)

    def forward(self, y_B: torch.Tensor) -> torch.Tensor:
        return self.table(y_B)


def modulate(x_BLD: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """adaLN modulation; ``shift``/``scale`` are ``(B, D)`` (one per sample) or ``(B, L, D)`` (per token)."""
    if shift.ndim == 2:
        shift, scale = shift[:, None], scale[:, None]
    return x_BLD * (1 + scale) + shift


class Attention(nn.Module):
    """Multi-head self-attention over tokens with ``F.scaled_dot_product_attention``."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x_BLD: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        """With a ``cache`` dict (autoregressive generation), the keys and values of earlier
        calls are prepended to this call's and the result stored back; ``attn_mask`` is then
        ``(L, L_cached + L)``."""
        B, L, D = x_BLD.shape
        q, k, v = self.qkv(x_BLD).reshape(B, L, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        return self.proj(out.transpose(1, 2).reshape(B, L, D))


class Mlp(nn.Module):
    def __init__(self, width: int, ratio: float = 4.0):
        super().__init__()
        hidden = int(width * ratio)
        self.fc1, self.fc2 = nn.Linear(width, hidden), nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class AdaLNZeroBlock(nn.Module):
    """Transformer block with adaLN-Zero: 6 modulation vectors (shift/scale/gate for the
    attention and the MLP) from the conditioning; the modulation layer starts at zero so
    every block is the identity at initialisation."""

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(width, mlp_ratio)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 6 * width))
        nn.init.zeros_(self.ada[1].weight)
        nn.init.zeros_(self.ada[1].bias)

    def forward(self, x_BLD: torch.Tensor, c: torch.Tensor, attn_mask: torch.Tensor | None = None,
                cache: dict | None = None) -> torch.Tensor:
        """``c`` is ``(B, D)`` or, for spatial adaLN, ``(B, L, D)``; ``cache`` as in :class:`Attention`."""
        s1, sc1, g1, s2, sc2, g2 = self.ada(c).chunk(6, dim=-1)
        if c.ndim == 2:
            g1, g2 = g1[:, None], g2[:, None]
        x_BLD = x_BLD + g1 * self.attn(modulate(self.norm1(x_BLD), s1, sc1), attn_mask, cache)
        return x_BLD + g2 * self.mlp(modulate(self.norm2(x_BLD), s2, sc2))


class FinalLayer(nn.Module):
    """adaLN (shift/scale) then a zero-initialised linear head to ``out_dim`` per token."""

    def __init__(self, width: int, out_dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.ada = nn.Sequential(nn.SiLU(), nn.Linear(width, 2 * width))
        self.linear = nn.Linear(width, out_dim)
        for layer in (self.ada[1], self.linear):
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, x_BLD: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.ada(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x_BLD), shift, scale))


def patchify(x: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """``(B, C, *S)`` -> ``(B, L, C * prod(patch))`` for 2-D (H, W) or 3-D (T, H, W) spatial axes.

    Tokens are in row-major order of the token grid; each token's features are ordered
    (C, p_1, p_2, ...). :func:`unpatchify` is the exact inverse.
    """
    B, C, *S = x.shape
    if len(S) != len(patch) or any(s % p for s, p in zip(S, patch)):
        raise ValueError(f"spatial shape {tuple(S)} is not divisible by patch {tuple(patch)}")
    grid = [s // p for s, p in zip(S, patch)]
    shape = [B, C]
    for g, p in zip(grid, patch):
        shape += [g, p]
    x = x.reshape(shape)
    n = len(S)
    grid_axes = [2 + 2 * i for i in range(n)]
    patch_axes = [3 + 2 * i for i in range(n)]
    x = x.permute(0, *grid_axes, 1, *patch_axes)
    return x.reshape(B, math.prod(grid), C * math.prod(patch))


def unpatchify(tokens_BLK: torch.Tensor, channels: int, grid: tuple[int, ...], patch: tuple[int, ...]) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, L, C * prod(patch))`` -> ``(B, C, *grid * patch)``."""
    B = tokens_BLK.shape[0]
    n = len(grid)
    x = tokens_BLK.reshape(B, *grid, channels, *patch)
    # axes now: 0, grid 1..n, channel n+1, patch n+2..2n+1 -> B, C, g1, p1, g2, p2, ...
    order = [0, n + 1]
    for i in range(n):
        order += [1 + i, n + 2 + i]
    x = x.permute(order)
    return x.reshape(B, channels, *[g * p for g, p in zip(grid, patch)])


def sincos_pos_embed(width: int, grid: tuple[int, ...]) -> torch.Tensor:
    """Fixed sin-cos position embedding ``(L, width)`` for a 1-, 2- or 3-D token grid.

    The width is split evenly over the axes (each axis gets an even share, the rest zero).
    """
    n = len(grid)
    per_axis = (width // n) // 2 * 2
    coords = torch.meshgrid(*[torch.arange(g, dtype=torch.float64) for g in grid], indexing="ij")
    parts = []
    for c in coords:
        omega = 1.0 / 10000 ** (torch.arange(per_axis // 2, dtype=torch.float64) / max(per_axis // 2, 1))
        out = c.reshape(-1, 1) * omega[None]
        parts += [torch.sin(out), torch.cos(out)]
    emb = torch.cat(parts, dim=1)
    if emb.shape[1] < width:
        emb = F.pad(emb, (0, width - emb.shape[1]))
    return emb.float()


class PatchEmbed(nn.Module):
    """Linear patch embedding (a strided convolution) for 2-D images or 3-D videos."""

    def __init__(self, channels: int, width: int, patch: tuple[int, ...]):
        super().__init__()
        self.patch = tuple(patch)
        conv = nn.Conv2d if len(patch) == 2 else nn.Conv3d
        self.proj = conv(channels, width, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)
