"""Named run presets: data x model x method x budget. They feed ``--preset`` choices.

A preset is a dict of config overrides; ``preset_config(name)`` builds the TrainConfig.
"""

from __future__ import annotations

from progflow.config import TrainConfig
from progflow.errors import ConfigError

_FMNIST = {"data": {"dataset": "fashion-mnist", "image_size": 32, "channels": 1}}
# 64px RGB emoji, 9 categories; patch 4: 16x16 tokens of 48 numbers (xs width 64, s width 192)
_EMOJI = {"data": {"dataset": "emoji", "image_size": 64, "channels": 3, "num_classes": 9}}
_BUDGET = {
    # lr 1e-3 with clipping is what the demo and the quality benchmark ran with
    "xs": {"steps": 2000, "batch_size": 64, "lr": 1e-3},
    "s": {"steps": 1500, "batch_size": 64, "lr": 1e-3},
    "b": {"steps": 20000, "batch_size": 128},
}

PRESETS: dict[str, dict] = {}
for _size in ("xs", "s", "b"):
    PRESETS[f"fmnist-base-{_size}"] = {
        **_FMNIST,
        "model": {"arch": "dit", "size": _size, "patch": 4},
        "method": {"name": "flow"},
        **_BUDGET[_size],
    }
for _size in ("xs", "s"):
    PRESETS[f"emoji-base-{_size}"] = {
        **_EMOJI,
        "model": {"arch": "dit", "size": _size, "patch": 4},
        "method": {"name": "flow"},
        **_BUDGET[_size],
    }
# Latent twins: the 16x16x4 latent of the emoji-ae run (4x downsampling; `progflow train-ae`
# writes it to runs/emoji-ae; --set data.autoencoder=... picks another). Patch 2: 8x8 tokens of
# 16 numbers, a quarter of the pixel presets' 256 tokens.
_EMOJI_LATENT = {"data": {"dataset": "emoji", "image_size": 16, "channels": 4, "num_classes": 9,
                          "autoencoder": "runs/emoji-ae"}}
for _size in ("xs", "s"):
    PRESETS[f"emoji-latent-base-{_size}"] = {**PRESETS[f"emoji-base-{_size}"], **_EMOJI_LATENT,
                                            "model": {"arch": "dit", "size": _size, "patch": 2}}


def register_preset(name: str, overrides: dict) -> None:
    PRESETS[name] = overrides


def _merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def preset_config(name: str, **overrides) -> TrainConfig:
    """Build the preset's TrainConfig; keyword overrides replace its top-level fields."""
    _load_method_presets()
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose from {', '.join(sorted(PRESETS))}")
    d = _merge(PRESETS[name], {"preset": name, **overrides})
    return TrainConfig.from_dict(d)


def preset_names() -> list[str]:
    _load_method_presets()
    return sorted(PRESETS)


def _load_method_presets() -> None:
    """Methods living in their own modules register their presets on import."""
    from progflow.registry import load_plugins

    load_plugins()
