"""The space a run's model generates in: pixels, or the latents of an autoencoder.

A run with ``data.autoencoder`` set generates latents: ``data.image_size`` and
``data.channels`` describe the latent, and the pixel images are the dataset's at the
autoencoder's own size. Everything in between (every method, solver and the SideNet) works
on the latent tensor unchanged; this module is the only place that crosses between the two:

* :func:`load_codec`: the autoencoder, a run of ``progflow train-ae`` (its latest EMA
  weights) or ``diffusers:FOLDER``, an ``AutoencoderKL`` saved locally with
  ``save_pretrained`` (safetensors only; ``pip install progflow[diffusers]``). Its
  ``image_shape``, ``latent_shape`` and the sha256 of its weights.
* :func:`load_run_data`: a split of the run's data in model space. For a latent run the
  posterior means of the images are encoded once and cached in
  ``$PROGFLOW_CACHE/latents/``, keyed by the autoencoder's weight hash, the hash of the
  images and labels, and the split (a cache made with other weights or other data is rebuilt,
  never trusted). A run is trained on latents scaled to unit variance: the scale,
  ``1 / std`` of the training latents, is fixed in ``data.latent_scale`` when training starts,
  with the weight hash in ``data.latent_hash``.
* :func:`to_pixels` / :func:`to_model_space`: samples (and previews) are decoded before they
  are written or scored; images are encoded before an edit inverts them.

>>> from progflow.config import DataConfig
>>> bool(is_latent(DataConfig())), bool(is_latent(DataConfig(autoencoder="runs/ae", image_size=8, channels=4)))
(False, True)
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from progflow.data.base import ImageData
from progflow.errors import CheckpointError, ConfigError, DataError

DIFFUSERS = "diffusers:"
ENCODE_BATCH = 256


def is_latent(data) -> bool:
    return bool(data.autoencoder)


@dataclass
class Codec:
    """An autoencoder as progflow uses it: posterior-mean ``encode`` and ``decode`` on model
    range [-1, 1] images, without gradients."""

    name: str
    module: torch.nn.Module
    image_shape: tuple[int, int, int]
    latent_shape: tuple[int, int, int]
    weights_hash: str
    _encode: object
    _decode: object

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self._encode(x.to(next(self.module.parameters()).device)).float()

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._decode(z.to(next(self.module.parameters()).device)).float()


def _run_codec(path: Path) -> Codec:
    from progflow.checkpoint import weights_hash
    from progflow.runs import load_run

    cfg, model, _ = load_run(path)
    if cfg.model.arch != "autoencoder":
        raise ConfigError(f"data.autoencoder {path} is a {cfg.method.name} run, not an autoencoder; train one "
                          "with `progflow train-ae`")
    return Codec(str(path), model, tuple(cfg.data.shape), model.latent_shape, weights_hash(model),
                 lambda x: model.encode(x)[0], model.decode)


def _diffusers_codec(folder: Path) -> Codec:
    from progflow.checkpoint import check_safetensors, weights_hash

    conf = folder / "config.json"
    try:
        meta = json.loads(conf.read_text())
    except FileNotFoundError:
        raise ConfigError(f"data.autoencoder: {folder} is not a saved diffusers model ({conf} is missing)") from None
    except (OSError, ValueError):
        raise ConfigError(f"data.autoencoder: {conf} is not readable JSON") from None
    if not isinstance(meta, dict) or meta.get("_class_name") != "AutoencoderKL":
        got = meta.get("_class_name") if isinstance(meta, dict) else None
        raise ConfigError(f"data.autoencoder: {folder} holds a {got or 'model of unknown class'}, not an AutoencoderKL")
    weights = folder / "diffusion_pytorch_model.safetensors"
    if not weights.exists():
        raise ConfigError(f"data.autoencoder: {folder} has no diffusion_pytorch_model.safetensors (progflow loads "
                          "safetensors only, never pickled weights)")
    check_safetensors(weights)
    try:
        from diffusers import AutoencoderKL
    except ImportError:
        raise ConfigError("data.autoencoder diffusers:... needs the diffusers package: pip install "
                          "'progflow[diffusers]'") from None
    try:
        vae = AutoencoderKL.from_pretrained(str(folder), use_safetensors=True, local_files_only=True).eval()
    except (OSError, ValueError, RuntimeError, TypeError) as e:
        raise ConfigError(f"data.autoencoder: {folder} could not be loaded as an AutoencoderKL: "
                          f"{str(e).splitlines()[0]}") from None
    c = vae.config
    size = c.sample_size if isinstance(c.sample_size, int) else c.sample_size[0]
    factor = 2 ** (len(c.block_out_channels) - 1)
    return Codec(DIFFUSERS + str(folder), vae, (c.in_channels, size, size),
                 (c.latent_channels, size // factor, size // factor), weights_hash(vae),
                 lambda x: vae.encode(x).latent_dist.mean, lambda z: vae.decode(z).sample)


@functools.lru_cache(maxsize=4)
def _cached_codec(spec: str, stamp) -> Codec:
    if spec.startswith(DIFFUSERS):
        return _diffusers_codec(Path(spec[len(DIFFUSERS):]))
    return _run_codec(Path(spec))


def _stamp(spec: str):
    """What changes when the autoencoder's weights do (its newest checkpoint / weights file)."""
    root = Path(spec[len(DIFFUSERS):]) if spec.startswith(DIFFUSERS) else Path(spec) / "ckpt"
    try:
        return max((p.stat().st_mtime_ns, str(p)) for p in root.iterdir())
    except (FileNotFoundError, ValueError, NotADirectoryError):
        return None


def load_codec(spec: str) -> Codec:
    """The autoencoder ``spec`` names (a train-ae run directory or ``diffusers:FOLDER``),
    kept loaded while its weights stay the same."""
    if not spec.startswith(DIFFUSERS) and not Path(spec).is_dir():
        raise ConfigError(f"data.autoencoder {spec} does not exist (train it with `progflow train-ae --out {spec}`)")
    try:
        return _cached_codec(spec, _stamp(spec))
    except CheckpointError as e:
        raise ConfigError(f"data.autoencoder: {e}") from None


def check_codec(data, codec: Codec) -> None:
    """The config's model space must be the autoencoder's latent."""
    want = (data.channels, data.image_size, data.image_size)
    if tuple(codec.latent_shape) != want:
        c, s, _ = codec.latent_shape
        raise ConfigError(f"data.autoencoder {codec.name} makes latents of {c}x{s}x{s} (channels x side), but the "
                          f"config describes {want[0]}x{want[1]}x{want[2]}: set data.channels={c} "
                          f"data.image_size={s} (and patch sizes that divide {s})")


# ---- the latent cache ---------------------------------------------------------------------
def _cache_root() -> Path:
    from progflow.eval.classifier import cache_dir

    return cache_dir() / "latents"


def _data_hash(data: ImageData) -> str:
    h = hashlib.sha256()
    for t in (data.images, data.labels):
        h.update(f"{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def encoded_latents(codec: Codec, data: ImageData, split: str, progress: bool = False) -> tuple[torch.Tensor, bool]:
    """``(posterior means of data.images, read from the cache)``; encoded and cached when the
    cache has none for this autoencoder, data and split."""
    from safetensors import safe_open
    from safetensors.torch import save

    from progflow.checkpoint import atomic_write_bytes, check_safetensors
    from progflow.data import to_model_range

    key = json.dumps({"autoencoder": codec.weights_hash, "data": _data_hash(data), "split": split}, sort_keys=True)
    path = _cache_root() / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"
    if path.exists():
        try:
            check_safetensors(path)
            with safe_open(str(path), "pt") as f:
                if (f.metadata() or {}).get("key") == key:
                    return f.get_tensor("latents"), True
        except (CheckpointError, OSError, ValueError, RuntimeError):
            pass  # broken or foreign: rebuilt below
    chunks = []
    for start in tqdm(range(0, len(data), ENCODE_BATCH), disable=not progress, desc=f"encode {split}", unit="batch",
                      delay=1.0):
        chunks.append(codec.encode(to_model_range(data.images[start:start + ENCODE_BATCH])).cpu())
    z = torch.cat(chunks).contiguous()
    if not torch.isfinite(z).all():
        raise DataError(f"the autoencoder {codec.name} gave non-finite latents for the {split} split")
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save({"latents": z}, metadata={"key": key}))
    return z, False


def latent_scale(z: torch.Tensor) -> float:
    """1 / std of the latents (over every entry): the scale that gives them unit variance."""
    std = float(z.double().std())
    if not std > 0:
        raise DataError("the autoencoder's latents have zero variance: it cannot be trained on")
    return 1.0 / std


def load_run_data(cfg, split: str = "train", *, data_dir=None, progress: bool = False):
    """``(data, cfg)``: the ``split`` of the run's data in model space. Pixels: the dataset
    as :func:`progflow.data.load_dataset` builds it, ``cfg`` unchanged. Latents: float
    latents (scaled by ``data.latent_scale``) in place of the images; a config without a scale
    yet (a fresh run, ``split`` train) gets it and the autoencoder's weight hash."""
    from progflow.data import load_dataset

    d = cfg.data
    kwargs = {"data_dir": data_dir or d.data_dir, "n": d.n, "seed": cfg.seed}
    if not is_latent(d):
        data = load_dataset(d.dataset, split=split, image_size=d.image_size, channels=d.channels,
                            frames=d.frames or 8, **kwargs)
        return data, cfg
    codec = _run_codec_of(d)
    check_codec(d, codec)
    c, s, _ = codec.image_shape
    pixels = load_dataset(d.dataset, split=split, image_size=s, channels=c, **kwargs)
    z, _ = encoded_latents(codec, pixels, split, progress=progress)
    if not d.latent_scale:
        if split != "train":
            raise ConfigError("data.latent_scale is not set: the scale comes from the training split")
        cfg = cfg.with_overrides({"data.latent_scale": latent_scale(z), "data.latent_hash": codec.weights_hash})
    return LatentData(z * cfg.data.latent_scale, pixels.labels, pixels.num_classes, pixels.crop,
                      pixels.class_names), cfg


class LatentData(ImageData):
    """:class:`~progflow.data.ImageData` holding float latents ``(N, C, h, w)`` in place of
    uint8 images (``to_model_range`` passes them through)."""

    def __post_init__(self) -> None:
        if not self.images.is_floating_point() or self.images.dim() != 4:
            raise ValueError(f"LatentData.images must be float (N, C, h, w); got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        self.labels = self.labels.to(torch.int64)
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]


def _run_codec_of(data) -> Codec:
    """The run's autoencoder, refused when its weights are not the ones the run was trained with."""
    codec = load_codec(data.autoencoder)
    if data.latent_hash and data.latent_hash != codec.weights_hash:
        raise ConfigError(f"data.autoencoder {codec.name} has other weights than the ones this run was trained with "
                          f"(hash {codec.weights_hash[:12]}, the run's {data.latent_hash[:12]}); its latents would "
                          "decode wrongly")
    return codec


def pixel_geometry(data) -> tuple[int, int]:
    """``(channels, side)`` of the run's images: the autoencoder's for a latent run."""
    if not is_latent(data):
        return data.channels, data.image_size
    c, s, _ = load_codec(data.autoencoder).image_shape
    return c, s


def to_pixels(data, x):
    """Model-space samples (a tensor, or a list of them) as images in [-1, 1]: decoded for a
    latent run (unscaled first), unchanged for a pixel run."""
    if not is_latent(data):
        return x
    if isinstance(x, (list, tuple)):
        return [to_pixels(data, v) for v in x]
    return _run_codec_of(data).decode(x.float() / data.latent_scale).to(x.device)


def to_model_space(data, x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] as the run's model sees them: encoded and scaled for a latent run."""
    if not is_latent(data):
        return x
    return (_run_codec_of(data).encode(x) * data.latent_scale).to(x.device)


def codec_info(spec: str) -> dict:
    codec = load_codec(spec)
    return {"autoencoder": codec.name, "image_shape": list(codec.image_shape), "latent_shape": list(codec.latent_shape),
            "weights_hash": codec.weights_hash, "params": sum(p.numel() for p in codec.module.parameters())}


__all__ = ["Codec", "LatentData", "check_codec", "encoded_latents", "is_latent", "latent_scale", "load_codec",
           "load_run_data", "pixel_geometry", "to_model_space", "to_pixels"]
