"""ODE solvers: they see only a callable ``velocity(x, t)`` and a float64 time grid.

Every solver is registered here under its name with two facts the sampling code needs:
how many grid intervals a requested NFE buys (``intervals(nfe)``, raising a
:class:`~progflow.errors.ConfigError` that lists the NFEs it can spend when it cannot
spend this one exactly) and the NFE those intervals cost (``nfe(intervals)``). Methods
never name a solver: they call :func:`get_solver` with the name from the config or the
command line and integrate with ``spec.integrate(velocity, x, grid)``.

>>> spec = get_solver("euler")
>>> spec.intervals(10), spec.nfe(10)
(10, 10)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from progflow.errors import ConfigError
from progflow.solvers.ode import euler


@dataclass(frozen=True)
class SolverSpec:
    name: str
    integrate: Callable  # (velocity, x, grid, callback=None) -> (x, nfe)
    nfe: Callable[[int], int]  # grid intervals -> velocity evaluations
    min_nfe: int = 1
    description: str = ""

    def intervals(self, nfe: int) -> int:
        """The number of grid intervals that costs exactly ``nfe``; ConfigError otherwise."""
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
            raise ConfigError(f"nfe must be a positive integer; got {nfe!r}")
        n = 1
        while self.nfe(n) < nfe:
            n += 1
        if self.nfe(n) != nfe:
            can = [self.nfe(k) for k in range(1, n + 3)]
            raise ConfigError(f"solver {self.name} cannot spend exactly {nfe} NFE; it can spend "
                              f"{', '.join(map(str, can))}, ...")
        return n


SOLVERS: dict[str, SolverSpec] = {}


def register_solver(spec: SolverSpec) -> None:
    SOLVERS[spec.name] = spec


register_solver(SolverSpec("euler", euler, nfe=lambda n: n, description="explicit Euler, 1 NFE per interval"))


def solver_names() -> list[str]:
    return sorted(SOLVERS)


def get_solver(name: "str | SolverSpec") -> SolverSpec:
    """The registered solver ``name``; a :class:`SolverSpec` passes through (a solver built
    for one run, e.g. with a fitted network, is handed to the method this way)."""
    if isinstance(name, SolverSpec):
        return name
    if name not in SOLVERS:
        raise ConfigError(f"unknown solver {name!r}; choose from {', '.join(solver_names())}")
    return SOLVERS[name]


__all__ = ["SOLVERS", "SolverSpec", "euler", "get_solver", "register_solver", "solver_names"]
