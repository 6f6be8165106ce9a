"""Training methods: each owns its loss and its sampler, built on paths, solvers and nets.

A method class has:
- ``validate(cfg)``: config checks beyond the field ranges (raise ConfigError);
- ``prepare(cfg, data) -> cfg``: fill data-derived config (e.g. stage statistics), once;
- ``loss(model, x1, y, rng) -> (loss, stats)`` with ``rng`` a :class:`progflow.rng.BatchRandom`;
- ``sample(model, y, *, generator, nfe, cfg_scale, cfg_interval, previews) -> SampleResult``.
"""

from __future__ import annotations

from progflow.methods.base import SampleResult


def method_class(name: str):
    if name == "flow":
        from progflow.methods.flow import FlowMatching

        return FlowMatching
    if name == "dfm":
        from progflow.methods.dfm import DecomposableFlowMatching

        return DecomposableFlowMatching
    raise ValueError(f"unknown method {name!r}")


def build_method(cfg):
    return method_class(cfg.method.name)(cfg)


def validate_config(cfg) -> None:
    method_class(cfg.method.name).validate(cfg)


__all__ = ["SampleResult", "build_method", "method_class", "validate_config"]
