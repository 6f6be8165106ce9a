"""ODE solvers: they see only a callable ``velocity(x, t)`` and a float64 time grid.

Every solver is registered here under its name with the facts the sampling code needs:
how many grid intervals a requested NFE buys (``intervals(nfe)``, raising a
:class:`~progflow.errors.ConfigError` that lists the NFEs it can spend when it cannot
spend this one exactly) and the NFE those intervals cost (``nfe(intervals)``). Methods
never name a solver: they call :func:`get_solver` with the name from the config or the
command line and integrate with ``spec.integrate(velocity, x, grid)``, which returns the
end state and the NFE spent. A solver built for one run (e.g. with a fitted network) is
a :class:`SolverSpec` too and passes through :func:`get_solver` unchanged.

Fixed-grid solvers are in :mod:`progflow.solvers.ode`; the adaptive dopri5 (torchdiffeq)
in :mod:`progflow.solvers.adaptive`. An adaptive solver has no NFE budget: its grid is one
interval per straight piece, its tolerances (``get_solver("dopri5", rtol=..., atol=...)``)
set the cost and ``integrate`` reports what it spent.

>>> spec = get_solver("heun")
>>> spec.intervals(9), spec.nfe(5)
(5, 9)
>>> get_solver("dopri5", rtol=1e-6).options
{'rtol': 1e-06, 'atol': 1e-05}
"""

from __future__ import annotations

import functools

from progflow.errors import ConfigError
from progflow.solvers.adaptive import DEFAULT_ATOL, DEFAULT_RTOL, check_tolerances, dopri5
from progflow.solvers.ode import ab2, dpmpp2m, euler, heun, midpoint, rk4
from progflow.solvers.spec import SolverSpec


SOLVERS: dict[str, SolverSpec] = {}


def register_solver(spec: SolverSpec) -> None:
    SOLVERS[spec.name] = spec


def dopri5_spec(rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> SolverSpec:
    """dopri5 at the given tolerances (checked: each in ``adaptive.TOL_RANGE``)."""
    check_tolerances(rtol, atol)
    return SolverSpec("dopri5", functools.partial(dopri5, rtol=rtol, atol=atol), nfe=lambda n: 0, adaptive=True,
                      description="adaptive Dormand-Prince 5(4) via torchdiffeq; NFE set by rtol/atol",
                      options={"rtol": rtol, "atol": atol}, configure=dopri5_spec)


for _spec in (
    SolverSpec("euler", euler, nfe=lambda n: n, description="explicit Euler, 1 NFE per interval"),
    SolverSpec("midpoint", midpoint, nfe=lambda n: 2 * n, min_nfe=2, description="explicit midpoint, 2 NFE per interval"),
    SolverSpec("heun", heun, nfe=lambda n: 2 * n - 1,
               description="Heun predictor-corrector, 2 NFE per interval, the last one 1 (odd NFE)"),
    SolverSpec("rk4", rk4, nfe=lambda n: 4 * n, min_nfe=4, description="classical Runge-Kutta 4, 4 NFE per interval"),
    # ab2 and dpmpp2m fall back to first order on a decreasing grid (their step ratios are
    # taken for increasing time; dpmpp2m's data prediction cannot leave t = 1): no inversion
    SolverSpec("ab2", ab2, nfe=lambda n: n, description="Adams-Bashforth 2 (variable step), 1 NFE per interval",
               backward=False),
    SolverSpec("dpmpp2m", dpmpp2m, nfe=lambda n: n,
               description="DPM-Solver++(2M) on the data prediction, 1 NFE per interval", backward=False),
    dopri5_spec(),
):
    register_solver(_spec)

from progflow.solvers.ba import registered_specs as _ba_specs  # noqa: E402

for _spec in _ba_specs():  # ba, ba1: placeholders until bound to a run's fitted SideNet
    register_solver(_spec)


def solver_names() -> list[str]:
    return sorted(SOLVERS)


def get_solver(name: "str | SolverSpec", **options) -> SolverSpec:
    """The registered solver ``name`` (a :class:`SolverSpec` passes through), configured
    with ``options`` (``None`` values are ignored), e.g. ``get_solver("dopri5", rtol=1e-6)``."""
    spec = name
    if not isinstance(name, SolverSpec):
        if name not in SOLVERS:
            raise ConfigError(f"unknown solver {name!r}; choose from {', '.join(solver_names())}")
        spec = SOLVERS[name]
    options = {k: v for k, v in options.items() if v is not None}
    if not options:
        return spec
    if spec.configure is None:
        raise ConfigError(f"solver {spec.name} takes no options; got {', '.join(sorted(options))}")
    return spec.configure(**{**spec.options, **options})


__all__ = ["SOLVERS", "SolverSpec", "ab2", "dopri5", "dopri5_spec", "dpmpp2m", "euler", "get_solver", "heun",
           "midpoint", "register_solver", "rk4", "solver_names"]
