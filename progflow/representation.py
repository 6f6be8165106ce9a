"""The space a scale-wise generator works in, and its pyramid of scales.

A *representation* turns images into a map of tokens and back: ``encode(x_BCHW) ->
map_BChw`` and ``decode(map_BChw) -> x_BCHW``. Today it is the image cut into
``p x p`` patches (:class:`PatchTokens`: a 32x32x1 image with patch 4 is an 8x8 map of
16-channel tokens); an autoencoder's latent would be another class with the same
``channels``, ``side``, ``encode`` and ``decode``, and the methods using it do not change.

Scales are area-downsamplings of the finest map to smaller sides
(:func:`downsample`); :func:`upsample` (nearest) goes back, so
``downsample(upsample(m, s), side(m)) == m`` exactly.

>>> rep = PatchTokens(channels=1, image_size=32, patch=4)
>>> x = torch.randn(2, 1, 32, 32)
>>> m = rep.encode(x)
>>> tuple(m.shape), bool(torch.equal(rep.decode(m), x))
((2, 16, 8, 8), True)
>>> [tuple(downsample(m, s).shape[-2:]) for s in (1, 2, 4, 8)]
[(1, 1), (2, 2), (4, 4), (8, 8)]
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from progflow.nn.layers import patchify, unpatchify


class PatchTokens:
    """Pixels in non-overlapping ``patch x patch`` patches: ``(B, C, H, W) <-> (B, C p^2, H/p, W/p)``.

    Token features are ordered (C, p_row, p_col) as in :func:`progflow.nn.layers.patchify`.
    """

    def __init__(self, channels: int, image_size: int, patch: int):
        if image_size % patch:
            raise ValueError(f"image size {image_size} is not divisible by patch {patch}")
        self.image_channels, self.patch = channels, patch
        self.channels = channels * patch * patch
        self.side = image_size // patch

    def encode(self, x_BCHW: torch.Tensor) -> torch.Tensor:
        tokens_BLK = patchify(x_BCHW, (self.patch, self.patch))
        return map_from_tokens(tokens_BLK, self.side)

    def decode(self, map_BKhw: torch.Tensor) -> torch.Tensor:
        return unpatchify(tokens_from_map(map_BKhw), self.image_channels, (self.side, self.side),
                          (self.patch, self.patch))


def build_representation(data, model) -> PatchTokens:
    """The representation of a run's config: patches of ``model.patch`` pixels."""
    return PatchTokens(data.channels, data.image_size, model.patch)


def tokens_from_map(map_BKhw: torch.Tensor) -> torch.Tensor:
    """``(B, K, h, w) -> (B, h*w, K)``, row-major positions."""
    return map_BKhw.flatten(2).transpose(1, 2)


def map_from_tokens(tokens_BLK: torch.Tensor, side: int) -> torch.Tensor:
    """Inverse of :func:`tokens_from_map` for a square ``side x side`` map."""
    B, L, K = tokens_BLK.shape
    return tokens_BLK.transpose(1, 2).reshape(B, K, side, side)


def downsample(map_BKhw: torch.Tensor, side: int) -> torch.Tensor:
    """Area (mean) downsampling to ``side x side``; ``side`` must divide the map's side."""
    n = map_BKhw.shape[-1]
    if n % side:
        raise ValueError(f"side {side} does not divide the map's side {n}")
    return map_BKhw if side == n else F.avg_pool2d(map_BKhw, n // side)


def upsample(map_BKhw: torch.Tensor, side: int) -> torch.Tensor:
    """Nearest-neighbour upsampling to ``side x side`` (each token repeated in its block)."""
    return map_BKhw if map_BKhw.shape[-1] == side else F.interpolate(map_BKhw, size=(side, side), mode="nearest")
