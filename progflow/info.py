"""Size and cost of a configured model next to its base DiT twin (``progflow info``).

``model_info(cfg)`` builds the configured backbone and the matching single-scale DiT
(same width, depth, heads and finest-stage patch, so the same token count) and reports
parameters and forward FLOPs for one sample (image or clip), counted by
``torch.utils.flop_counter.FlopCounterMode`` (matmuls, convolutions and attention; a
multiply-add counts 2 FLOPs; elementwise ops are not counted). The forward pass is the
one ``model.example_inputs()`` describes, i.e. one training pass per sample.

Sampling cost per image: FLOPs of one ``method.sample`` call for one sample at the
method's ``nfe`` without guidance (guidance doubles every method alike), against the base
twin at 40 NFE. A model with a ``cost_parts() -> {label: attribute}`` hook (networks made
of separately run parts) also gets per part: parameters, training-pass FLOPs, sampling
FLOPs and how often the part ran while sampling one image.

>>> info = model_info("fmnist-dfm-xs")
>>> info["tokens"], info["base_tokens"]
(64, 64)
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch.utils.flop_counter import FlopCounterMode

from progflow.config import MethodConfig, ModelConfig, patch_dim
from progflow.nn.dit import DiT, build_model, count_parameters, dit_fields


def base_model_config(model: ModelConfig) -> ModelConfig:
    """The plain DiT fields of any architecture's model config (its base twin); a config
    class with a ``base_twin()`` method names its own (e.g. the DiT of its ``size``)."""
    if hasattr(model, "base_twin"):
        return model.base_twin()
    return dit_fields(model)


def forward_flops(model, inputs: tuple) -> int:
    """FLOPs of one forward pass ``model(*inputs)``."""
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*inputs)
    return int(counter.get_total_flops())


def _flops_by_part(counter: FlopCounterMode, model, parts: dict[str, str]) -> dict[str, int]:
    """FLOPs counted inside each part, called through the model or on its own."""
    counts = counter.get_flop_counts()
    root = type(model).__name__
    return {label: int(sum(counts.get(f"{root}.{attr}", counts.get(type(getattr(model, attr)).__name__, {})).values()))
            for label, attr in parts.items()}


def sampling_cost(cfg, model, nfe: int | None = None) -> dict:
    """FLOPs and part calls of sampling one image with ``cfg``'s method (guidance 1)."""
    from progflow.methods import build_method

    parts = model.cost_parts() if hasattr(model, "cost_parts") else {}
    calls = dict.fromkeys(parts, 0)
    hooks = [getattr(model, attr).register_forward_hook(lambda *_, label=label: calls.__setitem__(label, calls[label] + 1))
             for label, attr in parts.items()]
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            res = build_method(cfg).sample(model, torch.zeros(1, dtype=torch.long), generator=torch.Generator().manual_seed(0),
                                           nfe=nfe, cfg_scale=1.0)
    finally:
        for h in hooks:
            h.remove()
    out = {"nfe": res.nfe, "flops": int(counter.get_total_flops())}
    if parts:
        out["parts"] = {label: {"calls": calls[label], "flops": f} for label, f in
                        _flops_by_part(counter, model, parts).items()}
    return out


def training_flops(model, parts: dict[str, str]) -> tuple[int, dict[str, int]]:
    """FLOPs of one training pass per sample, in all and per part. A model whose training
    steps differ (a cascade trains one of its two networks per step) lists them with their
    shares in ``example_passes() -> [(share, inputs), ...]``; the FLOPs are the average."""
    passes = model.example_passes() if hasattr(model, "example_passes") else [(1.0, model.example_inputs())]
    total, by_part = 0.0, dict.fromkeys(parts, 0.0)
    for share, inputs in passes:
        counter = FlopCounterMode(display=False)
        with torch.no_grad(), counter:
            model(*inputs)
        total += share * counter.get_total_flops()
        for label, f in _flops_by_part(counter, model, parts).items():
            by_part[label] += share * f
    return round(total), {label: round(f) for label, f in by_part.items()}


def model_info(cfg) -> dict:
    """Parameters and forward FLOPs per sample of ``cfg``'s model and of its base DiT twin.

    ``cfg`` is a :class:`~progflow.config.TrainConfig` or a preset name.
    """
    if isinstance(cfg, str):
        from progflow.presets import preset_config

        cfg = preset_config(cfg)
    model = build_model(cfg).eval()
    if hasattr(model, "cost_summary"):  # not a generator (the autoencoder): its own parts and FLOPs
        return {"arch": cfg.model.arch, "method": cfg.method.name, **model.cost_summary()}
    base = DiT(cfg.data, base_model_config(cfg.model)).eval()
    params, base_params = count_parameters(model), count_parameters(base)
    parts = model.cost_parts() if hasattr(model, "cost_parts") else {}
    flops, train = training_flops(model, parts)
    base_flops = forward_flops(base, base.example_inputs())
    sample = sampling_cost(cfg, model)
    base_sample = sampling_cost(dataclasses.replace(cfg, model=base_model_config(cfg.model), method=MethodConfig(nfe=40)), base)
    extra = {}
    if parts:
        extra["parts"] = {label: {"params": count_parameters(getattr(model, attr)), "flops": train[label],
                                  "sample_calls": sample["parts"][label]["calls"],
                                  "sample_flops": sample["parts"][label]["flops"]} for label, attr in parts.items()}
    return {
        "arch": cfg.model.arch,
        "method": cfg.method.name,
        "stages": getattr(cfg.method, "stages", 1),
        "sample_shape": list(cfg.data.shape),
        "width": cfg.model.width,
        "patch_dim": patch_dim(cfg.data, cfg.model),  # numbers per token; must not exceed the width
        "tokens": math.prod(model.grid),
        "base_tokens": math.prod(base.grid),
        "params": params,
        "base_params": base_params,
        "param_ratio": params / base_params,
        "flops": flops,
        "base_flops": base_flops,
        "flop_ratio": flops / base_flops,
        **extra,
        "sample_nfe": sample["nfe"],
        "sample_flops": sample["flops"],
        "base_sample_nfe": base_sample["nfe"],
        "base_sample_flops": base_sample["flops"],
        "sample_flop_ratio": sample["flops"] / base_sample["flops"],
    }
