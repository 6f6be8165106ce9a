"""Training methods: each owns its loss and its sampler, built on paths, solvers and nets.

A method lives in its own module here and registers itself on import
(:func:`progflow.registry.register_method`) with its config class, a subclass of
:class:`progflow.config.MethodConfig`. A method class has:

- ``validate(cfg)``: config checks beyond the field ranges (raise ConfigError);
- ``prepare(cfg, data) -> cfg``: fill data-derived config (e.g. stage statistics), once;
- ``loss(model, x1, y, rng) -> (loss, stats)`` with ``rng`` a :class:`progflow.rng.BatchRandom`;
- ``sample(model, y, *, generator, nfe, cfg_scale, cfg_interval, previews, solver, shift) -> SampleResult``.
"""

from __future__ import annotations

from progflow.methods.base import SampleResult
from progflow.registry import method_entry


def method_class(name: str):
    return method_entry(name).impl


def build_method(cfg):
    return method_class(cfg.method.name)(cfg)


def validate_config(cfg) -> None:
    method_class(cfg.method.name).validate(cfg)


__all__ = ["SampleResult", "build_method", "method_class", "validate_config"]
