"""A small convolutional KL autoencoder, the optional latent representation of a run.

``encode(x) -> (mean, logvar)`` maps images ``(B, C, H, W)`` in [-1, 1] to a Gaussian
posterior over latents ``(B, latent_channels, H / f, W / f)`` (``f = model.factor``, a power
of two: one stride-2 convolution per factor of two); ``decode(z)`` maps latents back to
images. Encoder and decoder mirror each other: a 3x3 stem, per resolution a residual block
(GroupNorm, SiLU, 3x3 conv, twice) and a resampling conv (stride-2 conv down, nearest
upsampling + 3x3 conv up), widths doubling per level up to ``4 * width``, and a 3x3 head.
No attention: at 64px with factor 4 the receptive field of the convolutions covers the
16x16 latent grid's neighbourhoods, and the model stays fast on a CPU.

The architecture registers as ``model.arch = "autoencoder"``; the training objective is
the ``autoencoder`` method (:mod:`progflow.methods.autoencoder`), so ``progflow train-ae``
is the trainer of every other run (checkpoints, exact resume, DDP).

>>> import torch
>>> from progflow.config import DataConfig
>>> ae = Autoencoder(DataConfig(dataset="synthetic", image_size=16, channels=3),
...                  AutoencoderModelConfig(arch="autoencoder", width=8, latent_channels=4, factor=4))
>>> mean, logvar = ae.encode(torch.zeros(2, 3, 16, 16))
>>> tuple(mean.shape), tuple(ae.decode(mean).shape)
((2, 4, 4, 4), (2, 3, 16, 16))
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from progflow.config import ModelConfig
from progflow.errors import ConfigError
from progflow.registry import register_arch


@dataclass(frozen=True)
class AutoencoderModelConfig(ModelConfig):
    """``width``: channels at full resolution (doubling per level, at most 4x);
    ``latent_channels`` and ``factor`` (a power of two) set the latent's shape. The
    transformer fields of :class:`ModelConfig` (depth, heads, patch) are not used."""

    size: str = "xs"
    heads: int = 1
    patch: int = 1
    latent_channels: int = 4
    factor: int = 4

    def __post_init__(self):
        super().__post_init__()
        if self.latent_channels < 1:
            raise ConfigError(f"model.latent_channels must be positive; got {self.latent_channels}")
        if self.factor < 2 or self.factor & (self.factor - 1):
            raise ConfigError(f"model.factor must be a power of two of at least 2; got {self.factor}")


def _groups(c: int) -> int:
    return next(g for g in (8, 4, 2, 1) if c % g == 0)


class ResBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        self.n1, self.c1 = nn.GroupNorm(_groups(c_in), c_in), nn.Conv2d(c_in, c_out, 3, padding=1)
        self.n2, self.c2 = nn.GroupNorm(_groups(c_out), c_out), nn.Conv2d(c_out, c_out, 3, padding=1)
        self.skip = nn.Conv2d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x):
        h = self.c1(F.silu(self.n1(x)))
        return self.skip(x) + self.c2(F.silu(self.n2(h)))


class Autoencoder(nn.Module):
    def __init__(self, data, model: AutoencoderModelConfig):
        super().__init__()
        if data.frames:
            raise ConfigError("the autoencoder is built for images; this config is a video config")
        if data.image_size % model.factor:
            raise ConfigError(f"data.image_size {data.image_size} is not divisible by the autoencoder's "
                              f"model.factor {model.factor}")
        levels = model.factor.bit_length() - 1
        widths = [model.width * min(2**i, 4) for i in range(levels + 1)]
        self.image_channels, self.image_size = data.channels, data.image_size
        self.latent_channels, self.factor = model.latent_channels, model.factor
        enc = [nn.Conv2d(data.channels, widths[0], 3, padding=1)]
        for i in range(levels):
            enc += [ResBlock(widths[i], widths[i]), nn.Conv2d(widths[i], widths[i + 1], 3, stride=2, padding=1)]
        enc += [ResBlock(widths[-1], widths[-1]), nn.GroupNorm(_groups(widths[-1]), widths[-1]), nn.SiLU(),
                nn.Conv2d(widths[-1], 2 * model.latent_channels, 3, padding=1)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Conv2d(model.latent_channels, widths[-1], 3, padding=1), ResBlock(widths[-1], widths[-1])]
        for i in reversed(range(levels)):
            dec += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(widths[i + 1], widths[i], 3, padding=1),
                    ResBlock(widths[i], widths[i])]
        dec += [nn.GroupNorm(_groups(widths[0]), widths[0]), nn.SiLU(), nn.Conv2d(widths[0], data.channels, 3, padding=1)]
        self.decoder = nn.Sequential(*dec)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.image_size // self.factor
        return (self.latent_channels, side, side)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior ``(mean, logvar)``; logvar clamped to [-30, 20] as in latent diffusion."""
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def cost_summary(self) -> dict:
        """Parameters and forward FLOPs per image of each half (``progflow info``)."""
        from torch.utils.flop_counter import FlopCounterMode

        out = {"image_shape": [self.image_channels, self.image_size, self.image_size],
               "latent_shape": list(self.latent_shape), "params": sum(p.numel() for p in self.parameters())}
        x, z = torch.zeros(1, self.image_channels, self.image_size, self.image_size), torch.zeros(1, *self.latent_shape)
        for name, part, arg in (("encoder", self.encoder, x), ("decoder", self.decoder, z)):
            counter = FlopCounterMode(display=False)
            with torch.no_grad(), counter:
                part(arg)
            out[f"{name}_params"] = sum(p.numel() for p in part.parameters())
            out[f"{name}_flops"] = int(counter.get_total_flops())
        return out

    def forward(self, x: torch.Tensor, eps: torch.Tensor, half: bool = False):
        """The training pass: ``(mean, logvar, D(z), D(pool(z)) or None)`` with the draw
        ``z = mean + exp(logvar / 2) eps`` (one call, so DDP sees every parameter's use)."""
        mean, logvar = self.encode(x)
        z = mean + (0.5 * logvar).exp() * eps
        return mean, logvar, self.decode(z), self.decode(F.avg_pool2d(z, 2)) if half else None


register_arch("autoencoder", AutoencoderModelConfig, lambda cfg: Autoencoder(cfg.data, cfg.model))
