"""Name -> implementation look-up for methods and network architectures.

The lower layers (:mod:`progflow.config`, :mod:`progflow.nn.dit`, the solvers) know no
method by name. A method module registers itself when imported::

    register_method("dfm", DFMConfig, DecomposableFlowMatching)
    register_arch("dfm", DFMModelConfig, build_dfm_model)

and look-ups import every module of :mod:`progflow.methods` and :mod:`progflow.nn` once
(so adding a method means adding its files, nothing else). The config class of a method
or an architecture is a subclass of ``MethodConfig`` / ``ModelConfig`` holding its own
fields; the JSON stays flat (``{"name": "dfm", "stages": 2, ...}``).
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Callable

from progflow.errors import ConfigError


@dataclass(frozen=True)
class Entry:
    config_cls: type
    impl: object  # a method class, or a ``build(cfg) -> nn.Module`` function


METHODS: dict[str, Entry] = {}
ARCHS: dict[str, Entry] = {}
_loaded = False


def register_method(name: str, config_cls: type, method_cls: type) -> None:
    METHODS[name] = Entry(config_cls, method_cls)


def register_arch(name: str, config_cls: type, build: Callable) -> None:
    ARCHS[name] = Entry(config_cls, build)


def load_plugins() -> None:
    """Import every module of ``progflow.methods`` and ``progflow.nn`` (once)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for package in ("progflow.nn", "progflow.methods"):
        pkg = importlib.import_module(package)
        for mod in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{package}.{mod.name}")


def _get(table: dict[str, Entry], name, what: str) -> Entry:
    if not isinstance(name, str) or name not in table:
        load_plugins()
    if not isinstance(name, str) or name not in table:
        from progflow.checks import shown

        raise ConfigError(f"{what} must be one of {', '.join(sorted(table))}; got {shown(name)}")
    return table[name]


def method_entry(name: str) -> Entry:
    return _get(METHODS, name, "method.name")


def arch_entry(name: str) -> Entry:
    return _get(ARCHS, name, "model.arch")


def method_names() -> list[str]:
    load_plugins()
    return sorted(METHODS)


def arch_names() -> list[str]:
    load_plugins()
    return sorted(ARCHS)
