"""Typed, frozen run configuration, validated at construction.

A :class:`TrainConfig` is everything a run needs: data, model, method and optimisation.
It is saved as JSON in the run directory and inside every checkpoint, so a checkpoint
alone rebuilds its model. The command line mirrors it one to one: top-level fields are
flags (``--steps``, ``--batch-size``), nested fields are ``--set model.depth=4``.

>>> cfg = TrainConfig(steps=10)
>>> TrainConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import dataclasses
import functools
import json
import types
import typing
from dataclasses import dataclass, field, fields
from typing import Any, Literal

import yaml

from progflow.checks import MAX_NFE, MAX_SEED, check_device_name, is_finite, is_number, shown
from progflow.errors import ConfigError

DatasetKind = Literal["fashion-mnist", "folder", "synthetic", "moving-fmnist", "emoji"]

# Model sizes: width, depth, heads. Parameter counts at 32x32, patch 4, 1 channel:
# xs ~0.3M, s ~4.1M, b ~21M.
MODEL_SIZES: dict[str, tuple[int, int, int]] = {
    "xs": (64, 4, 4),
    "s": (192, 6, 3),
    "b": (384, 12, 6),
}


def _check_choice(value, name: str, options) -> None:
    if value not in options:
        raise ConfigError(f"{name} must be one of {', '.join(map(str, options))}; got {value!r}")


def _check_positive(obj, *names: str, allow_zero: bool = False) -> None:
    for n in names:
        v = getattr(obj, n)
        if is_number(v) and not is_finite(v):
            raise ConfigError(f"{n} must be a finite number; got {v!r}")
        if not is_number(v) or v < 0 or (v == 0 and not allow_zero):
            raise ConfigError(f"{n} must be {'non-negative' if allow_zero else 'positive'}; got {shown(v)}")


@functools.cache
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def _plural(desc: str) -> str:
    """ "a finite number" -> "finite numbers" """
    return desc.split(" ", 1)[1] + "s" if desc.startswith(("a ", "an ")) else desc


def _problem(v, tp) -> str | None:
    """What ``v`` should be to have the annotated type ``tp`` (None: it has it)."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is bool:
        return None if isinstance(v, bool) else "true or false"
    if tp is int:
        return None if isinstance(v, int) and not isinstance(v, bool) else "an integer"
    if tp is float:
        return None if is_finite(v) else "a finite number"
    if tp is str:
        return None if isinstance(v, str) else "a string"
    if origin is Literal:
        return None if isinstance(v, str) and v in args else f"one of {', '.join(map(str, args))}"
    if origin in (typing.Union, types.UnionType):
        problems = [_problem(v, a) for a in args if a is not type(None)]
        return None if v is None and type(None) in args or None in problems else " or ".join(problems)
    if origin is tuple:
        variadic = len(args) == 2 and args[1] is Ellipsis
        want = f"a list of {'' if variadic else f'{len(args)} '}{_plural(_problem(None, args[0]))}"
        if not isinstance(v, (tuple, list)):
            return want
        items = args[:1] * len(v) if variadic else args
        return want if len(v) != len(items) or any(_problem(x, a) for x, a in zip(v, items)) else None
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return None if isinstance(v, tp) else f"a {tp.__name__}"
    return None


def check_fields(obj, prefix: str = "") -> None:
    """Every field of the dataclass ``obj`` holds its annotated type, floats finite
    (``float`` fields take ints too); anything else is a ConfigError naming the field."""
    hints = _hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        problem = _problem(v, hints[f.name])
        if problem:
            raise ConfigError(f"{prefix}{f.name} must be {problem}; got {shown(v)}")


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetKind = "fashion-mnist"
    data_dir: str | None = None  # None: $PROGFLOW_DATA or the Debian package's folder
    image_size: int = 32
    channels: int = 1
    frames: int = 0  # 0 for images, the clip length for video
    n: int = 0  # size of generated datasets (synthetic, moving-fmnist); 0 = default
    num_classes: int = 10
    # Latent runs (progflow.latent): the autoencoder whose latents the model generates, a run
    # directory of `progflow train-ae` or "diffusers:FOLDER" (a saved AutoencoderKL); "" for
    # pixels. image_size and channels then describe the latent (16 and 4 for 64px RGB at factor
    # 4); the pixel images are the dataset's at the autoencoder's own size.
    autoencoder: str = ""
    latent_scale: float = 0.0  # 1 / std of the training latents, set when training starts
    latent_hash: str = ""  # sha256 of the autoencoder weights the run was trained with

    def __post_init__(self):
        check_fields(self, "data.")
        _check_choice(self.dataset, "data.dataset", typing.get_args(DatasetKind))
        _check_positive(self, "image_size", "channels", "num_classes")
        _check_positive(self, "frames", "n", "latent_scale", allow_zero=True)
        if self.autoencoder and self.frames:
            raise ConfigError("data.autoencoder: latent runs are image runs; this config is a video config")
        if self.dataset == "moving-fmnist" and self.frames < 2:
            raise ConfigError("data.frames must be at least 2 for the moving-fmnist video dataset")

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of one sample: ``(C, H, W)`` or ``(C, T, H, W)``."""
        s = self.image_size
        return (self.channels, self.frames, s, s) if self.frames else (self.channels, s, s)


def _check_registered(obj, name: str, entry) -> None:
    """The config class must be the one registered for its name (``DFMConfig`` for ``dfm``)."""
    if type(obj) is not entry.config_cls:
        raise ConfigError(f"{name} {getattr(obj, 'arch', getattr(obj, 'name', ''))!r} takes a "
                          f"{entry.config_cls.__name__}, not a {type(obj).__name__}")


@dataclass(frozen=True)
class ModelConfig:
    """Fields every backbone has. An architecture with more fields registers a subclass
    (:func:`progflow.registry.register_arch`); ``arch`` picks it when a config is read."""

    arch: str = "dit"
    size: str = "s"  # a key of MODEL_SIZES; width/depth/heads of 0 take its values
    width: int = 0
    depth: int = 0
    heads: int = 0
    mlp_ratio: float = 4.0
    patch: int = 4  # spatial patch of the finest (or only) stage
    temporal_patch: int = 1  # video only

    def __post_init__(self):
        from progflow.registry import arch_entry

        check_fields(self, "model.")
        _check_registered(self, "model.arch", arch_entry(self.arch))
        _check_choice(self.size, "model.size", tuple(MODEL_SIZES))
        w, d, h = MODEL_SIZES[self.size]
        for name, default in (("width", w), ("depth", d), ("heads", h)):
            if getattr(self, name) == 0:
                object.__setattr__(self, name, default)
        _check_positive(self, "width", "depth", "heads", "mlp_ratio", "patch", "temporal_patch")
        if self.width % self.heads:
            raise ConfigError(f"model.width {self.width} is not divisible by model.heads {self.heads}")


def patch_dim(data: DataConfig, model: ModelConfig) -> int:
    """Numbers in one token of the finest stage: channels x patch^2 (x temporal patch for video)."""
    return data.channels * model.patch**2 * (model.temporal_patch if data.frames else 1)


@dataclass(frozen=True)
class MethodConfig:
    """Fields every method has (plain flow matching uses exactly these). A method with
    more fields registers a subclass (:func:`progflow.registry.register_method`)."""

    name: str = "flow"
    time_sampler: Literal["uniform", "logit-normal"] = "logit-normal"
    t_loc: float = 0.0
    t_scale: float = 1.0
    label_dropout: float = 0.1
    # Sampling defaults (the sample command can override them).
    nfe: int = 40
    cfg_scale: float = 1.0
    cfg_interval: tuple[float, float] = (0.0, 1.0)
    solver: str = "euler"  # a name of progflow.solvers
    shift: float = 1.0  # SD3-style time-grid shift; 1 = uniform grid

    def __post_init__(self):
        from progflow.registry import method_entry

        check_fields(self, "method.")
        _check_registered(self, "method.name", method_entry(self.name))
        _check_choice(self.time_sampler, "method.time_sampler", ("uniform", "logit-normal"))
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"method.label_dropout must be in [0, 1); got {self.label_dropout}")
        _check_positive(self, "t_scale", "nfe", "shift")
        if self.nfe > MAX_NFE:
            raise ConfigError(f"method.nfe must be at most {MAX_NFE}; got {shown(self.nfe)}")
        lo, hi = self.cfg_interval
        if not 0.0 <= lo <= hi <= 1.0:
            raise ConfigError(f"method.cfg_interval must satisfy 0 <= lo <= hi <= 1; got {self.cfg_interval}")
        from progflow.solvers import solver_names

        _check_choice(self.solver, "method.solver", solver_names())


class SavedConfig:
    """What a config dataclass saved beside its run shares: ``to_dict`` and the sorted JSON."""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


@dataclass(frozen=True)
class TrainConfig(SavedConfig):
    preset: str = ""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    steps: int = 1000
    batch_size: int = 64
    lr: float = 5e-4
    warmup: int = 100
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0 disables clipping
    ema_decay: float = 0.999
    bf16: bool = False
    # torch.compile the model for training (inductor; a compile of about a minute first, then a faster
    # step on larger models). Its numerics differ from eager at float rounding, so a run keeps it on resume.
    compile: bool = False
    seed: int = 0
    device: str = "cpu"
    log_every: int = 10
    sample_every: int = 500  # 0 disables the sample grids
    ckpt_every: int = 500
    keep_last: int = 2

    # Fields that may change when a run is resumed: they do not change the trajectory.
    RESUMABLE_CHANGES = ("steps", "log_every", "sample_every", "ckpt_every", "keep_last", "device", "preset")

    def __post_init__(self):
        check_fields(self)
        check_device_name(self.device)
        _check_positive(self, "steps", "batch_size", "lr", "log_every", "ckpt_every", "keep_last")
        _check_positive(self, "warmup", "weight_decay", "grad_clip", "sample_every", "seed", allow_zero=True)
        if self.seed > MAX_SEED:
            raise ConfigError(f"seed must be at most {MAX_SEED} (seeds are 32-bit); got {shown(self.seed)}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1); got {self.ema_decay}")
        d, m = self.data, self.model
        if d.image_size % m.patch:
            raise ConfigError(f"data.image_size {d.image_size} is not divisible by model.patch {m.patch}")
        if d.frames and d.frames % m.temporal_patch:
            raise ConfigError(f"data.frames {d.frames} is not divisible by model.temporal_patch {m.temporal_patch}")
        if patch_dim(d, m) > m.width:
            raise ConfigError(f"a token carries {patch_dim(d, m)} numbers (data.channels {d.channels} x patch "
                              f"{m.patch}x{m.patch}{f' x {m.temporal_patch} frames' if d.frames else ''}) but "
                              f"model.width is {m.width}: the model cannot see all the noise it must remove; use a "
                              f"smaller model.patch or a width of at least {patch_dim(d, m)}")
        from progflow.methods import validate_config  # the method checks its own fields

        validate_config(self)

    # ---- serialisation (to_dict, to_json: SavedConfig) -------------------------------
    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        return _build(cls, d, "")

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)

    def with_overrides(self, overrides: dict[str, Any]) -> "TrainConfig":
        """Apply ``{"model.depth": 4, "steps": 10}``-style dotted overrides."""
        d = self.to_dict()
        for key, value in overrides.items():
            node = d
            *parents, leaf = key.split(".")
            for p in parents:
                if not isinstance(node.get(p), dict):
                    raise ConfigError(f"unknown config field {key!r}")
                node = node[p]
            if leaf not in node:
                raise ConfigError(f"unknown config field {key!r}")
            node[leaf] = value
        return TrainConfig.from_dict(d)


def _section_class(name: str, d: dict):
    """The dataclass of a nested section; model and method depend on their arch / name."""
    from progflow.registry import arch_entry, method_entry

    if name == "data":
        return DataConfig
    if name == "model":
        return arch_entry(d.get("arch", "dit") if isinstance(d, dict) else "dit").config_cls
    return method_entry(d.get("name", "flow") if isinstance(d, dict) else "flow").config_cls


_NESTED = ("data", "model", "method")

# Configs saved before methods and architectures registered their own config classes wrote
# every DFM field into every model / method section; in a section whose class lacks them
# they must hold these "not used" values, and are then dropped (so old runs still load).
_LEGACY_UNUSED = {
    "model.": {"stage_patches": []},
    "method.": {"decomposition": "laplacian", "stages": 1, "stage_probs": [], "earlier_loc": 1.5,
                "earlier_scale": 1.0, "per_sample_stage": True, "tied_times": False, "standardize": False,
                "stage_std": [], "thresholds": [], "stage_steps": []},
}


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or 'root'} must be a mapping; got {shown(d)}")
    names = {f.name for f in fields(cls)}
    legacy = _LEGACY_UNUSED.get(prefix, {})
    d = {k: v for k, v in d.items() if k in names or k not in legacy or list(_listify(v)) != _listify(legacy[k])}
    unknown = set(d) - names
    if unknown:
        raise ConfigError(f"unknown config field(s): {', '.join(sorted(prefix + u for u in unknown))}")
    kwargs = {}
    for f in fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        if f.name in _NESTED and cls is TrainConfig:
            v = _build(_section_class(f.name, v), v, f.name + ".")
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = _coerce(v, f, prefix)
    try:
        return cls(**kwargs)
    except TypeError as e:  # wrong argument types surface here
        raise ConfigError(f"invalid config {prefix or 'root'}: {e}") from None


def _listify(v):
    return list(v) if isinstance(v, (list, tuple)) else [v]


def _coerce(v, f, prefix):
    """Light type coercion for values from the command line or JSON (ints for floats etc.)."""
    t = f.type if isinstance(f.type, str) else str(f.type)
    if t == "float":
        return _int_to_float(v, prefix + f.name)
    if t in ("int", "bool") and isinstance(v, str):
        want = "an integer" if t == "int" else "true or false"
        raise ConfigError(f"{prefix}{f.name} must be {want}; got {shown(v)}")
    if t.startswith("tuple[float") and isinstance(v, tuple):
        return tuple(_int_to_float(x, prefix + f.name) for x in v)
    return v


def _int_to_float(v, name: str):
    """Ints become floats (a JSON ``1`` for ``1.0``); anything else is left for check_fields."""
    if isinstance(v, int) and not isinstance(v, bool):
        try:
            return float(v)
        except OverflowError:
            raise ConfigError(f"{name} must be a finite number; got an integer of {v.bit_length()} bits") from None
    return v


def parse_override(text: str) -> tuple[str, Any]:
    """``"model.depth=4"`` -> ``("model.depth", 4)``; values are YAML (``[0.9, 0.1]``, ``true``)."""
    if "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError:
        raise ConfigError(f"--set {key}: cannot parse value {raw!r}") from None
    if isinstance(value, str) and "," in value:  # 0.9,0.1 as a shorthand for a list
        try:
            value = [yaml.safe_load(p) for p in value.split(",")]
        except yaml.YAMLError:
            pass
    return key.strip(), value
