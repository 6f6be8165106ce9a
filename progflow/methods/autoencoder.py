"""Training objective of the latent autoencoder (``progflow train-ae``), registered as a
method so that the one trainer of progflow (checkpoints, exact resume, DDP, logging) trains
it like any generator.

Per image ``x`` (model range [-1, 1]), with the posterior ``(m, log s^2) = E(x)`` and a
reparameterised draw ``z = m + s * eps``:

* reconstruction: mean absolute error ``|D(z) - x|`` over pixels;
* KL to ``N(0, I)``, summed over latent entries and divided by the number of pixel values,
  so ``kl_weight`` means the same at every image and latent size;
* scale equivariance (``equivariance > 0``): the decoder applied to the 2x2-average-pooled
  latent should give the 2x2-average-pooled image, ``|D(pool(z)) - pool(x)|``. This is the
  property the DFM paper finds helps a Laplacian decomposition of latents: the coarse stage of
  a latent pyramid then decodes to the coarse image.

Loss = reconstruction + ``kl_weight`` KL + ``equivariance`` x equivariance term. There is no
sampler: ``progflow eval-ae`` scores reconstructions (PSNR, FD).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from progflow.config import MethodConfig
from progflow.errors import ConfigError, ProgflowError
from progflow.registry import register_method


@dataclass(frozen=True)
class AutoencoderConfig(MethodConfig):
    kl_weight: float = 1e-4
    equivariance: float = 0.0  # weight of the scale-equivariance term (0: off)

    def __post_init__(self):
        super().__post_init__()
        for name in ("kl_weight", "equivariance"):
            if getattr(self, name) < 0:
                raise ConfigError(f"method.{name} must be non-negative; got {getattr(self, name)}")


class AutoencoderObjective:
    def __init__(self, cfg):
        self.cfg, self.mc = cfg, cfg.method

    @staticmethod
    def validate(cfg) -> None:
        if cfg.model.arch != "autoencoder":
            raise ConfigError(f"method autoencoder needs model.arch autoencoder, got {cfg.model.arch!r}")
        if cfg.data.autoencoder:
            raise ConfigError("an autoencoder trains on pixels: data.autoencoder must be empty")
        if cfg.sample_every:
            raise ConfigError("an autoencoder has no sampler: set sample_every to 0 (progflow eval-ae scores it)")

    @staticmethod
    def prepare(cfg, data):
        return cfg

    def loss(self, model, x1: torch.Tensor, y: torch.Tensor, rng):
        shape = getattr(model, "module", model).latent_shape  # (DDP wraps the model: one forward call)
        mean, logvar, rec, half = model(x1, rng.randn(*shape).to(x1.dtype), half=bool(self.mc.equivariance))
        rec = (rec.float() - x1).abs().mean()
        kl = 0.5 * (mean.float().pow(2) + logvar.float().exp() - 1.0 - logvar.float()).flatten(1).sum(1).mean()
        kl = kl / x1[0].numel()
        loss = rec + self.mc.kl_weight * kl
        stats = {"rec": rec.detach(), "kl": kl.detach()}
        if half is not None:
            eq = (half.float() - F.avg_pool2d(x1, 2)).abs().mean()
            loss = loss + self.mc.equivariance * eq
            stats["equivariance"] = eq.detach()
        return loss, stats

    def sample(self, *args, **kwargs):
        raise ProgflowError("an autoencoder run does not sample; score it with `progflow eval-ae RUN`, or train a "
                            "generator on its latents (data.autoencoder = RUN)")


# ---- presets: a 4x autoencoder for each dataset; emoji also with the equivariance term ------------
def _register_presets() -> None:
    from progflow.presets import register_preset

    ae = {"model": {"arch": "autoencoder", "width": 16, "latent_channels": 4, "factor": 4},
          "method": {"name": "autoencoder", "kl_weight": 1e-4}, "steps": 3000, "batch_size": 32, "lr": 1e-3,
          "warmup": 100, "sample_every": 0, "ckpt_every": 500, "ema_decay": 0.999}
    emoji = {"data": {"dataset": "emoji", "image_size": 64, "channels": 3, "num_classes": 9}}
    register_preset("emoji-ae", {**emoji, **ae})
    register_preset("emoji-ae-eq", {**emoji, **ae, "method": {**ae["method"], "equivariance": 0.5}})
    register_preset("fmnist-ae", {"data": {"dataset": "fashion-mnist", "image_size": 32, "channels": 1},
                                  **ae, "model": {**ae["model"], "width": 8}})


register_method("autoencoder", AutoencoderConfig, AutoencoderObjective)
_register_presets()
