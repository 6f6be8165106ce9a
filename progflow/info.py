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

from progflow.nn.dit import DiT, build_model, count_parameters


def _dummy_inputs(model, cfg) -> tuple:
    y = torch.zeros(1, dtype=torch.long)
    if cfg.model.arch == "dfm":
        S = model.num_stages
        x = [torch.zeros(1, *shape) for shape in model.stage_shapes]
        return x, torch.full((1, S), 0.5), y, torch.full((1,), S - 1, dtype=torch.long)
    return torch.zeros(1, *cfg.data.shape), torch.full((1,), 0.5), y


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
    base_cfg = dataclasses.replace(cfg.model, arch="dit", stage_patches=())
    base = DiT(cfg.data, base_cfg).eval()
    params, base_params = count_parameters(model), count_parameters(base)
    flops = forward_flops(model, _dummy_inputs(model, cfg))
    base_inputs = (torch.zeros(1, *cfg.data.shape), torch.full((1,), 0.5), torch.zeros(1, dtype=torch.long))
    base_flops = forward_flops(base, base_inputs)
    return {
        "arch": cfg.model.arch,
        "method": cfg.method.name,
        "stages": cfg.method.stages if cfg.model.arch == "dfm" else 1,
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
