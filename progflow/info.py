"""Size and cost of a configured model next to its base DiT twin (``progflow info``).

``model_info(cfg)`` builds the configured backbone and the matching single-scale DiT
(same width, depth, heads and finest-stage patch, so the same token count) and reports
parameters and forward FLOPs for one sample (image or clip), counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention; a
multiply-add counts 2 FLOPs; elementwise ops are not counted).

>>> info = model_info("fmnist-dfm-xs")
>>> info["tokens"], info["base_tokens"]
(64, 64)
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from progflow.config import ModelConfig
from progflow.nn.dit import DiT, build_model, count_parameters


def base_model_config(model: ModelConfig) -> ModelConfig:
    """The plain DiT fields of any architecture's model config (its base twin)."""
    return ModelConfig(**{f.name: getattr(model, f.name) for f in dataclasses.fields(ModelConfig)} | {"arch": "dit"})


def forward_flops(model, inputs: tuple) -> int:
    """FLOPs of one forward pass ``model(*inputs)``."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return int(counter.get_total_flops())


def model_info(cfg) -> dict:
    """Parameters and forward FLOPs per sample of ``cfg``'s model and of its base DiT twin.

    ``cfg`` is a :class:`~progflow.config.TrainConfig` or a preset name.
    """
    if isinstance(cfg, str):
        from progflow.presets import preset_config

        cfg = preset_config(cfg)
    model = build_model(cfg).eval()
    base = DiT(cfg.data, base_model_config(cfg.model)).eval()
    params, base_params = count_parameters(model), count_parameters(base)
    flops = forward_flops(model, model.example_inputs())
    base_flops = forward_flops(base, base.example_inputs())
    return {
        "arch": cfg.model.arch,
        "method": cfg.method.name,
        "stages": getattr(cfg.method, "stages", 1),
        "sample_shape": list(cfg.data.shape),
        "tokens": math.prod(model.grid),
        "base_tokens": math.prod(base.grid),
        "params": params,
        "base_params": base_params,
        "param_ratio": params / base_params,
        "flops": flops,
        "base_flops": base_flops,
        "flop_ratio": flops / base_flops,
    }
