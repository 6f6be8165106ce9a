"""What a solver is to the rest of progflow: :class:`SolverSpec`, its integrate function and its
NFE rule. Its own module so that solvers defined apart (:mod:`progflow.solvers.ba`) and the
registry in :mod:`progflow.solvers` both build on it without importing each other."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from progflow.errors import ConfigError


@dataclass(frozen=True)
class SolverSpec:
    name: str
    integrate: Callable  # (velocity, x, grid, callback=None) -> (x, nfe)
    nfe: Callable[[int], int]  # grid intervals -> velocity evaluations (fixed-grid solvers)
    min_nfe: int = 1
    description: str = ""
    adaptive: bool = False  # its cost is set by tolerances, not by an NFE budget
    options: dict = field(default_factory=dict)  # what it was configured with (reported)
    configure: Callable | None = None  # (**options) -> SolverSpec, for solvers that take options
    bind: Callable | None = None  # (spec, run_dir, backbone) -> SolverSpec using what was fitted to that run
    backward: bool = True  # integrates a decreasing grid (data -> noise, for inversion) at its stated order

    def for_run(self, run_dir, backbone) -> "SolverSpec":
        """This solver for one run: a solver with a fitted network loads and checks it here."""
        return self if self.bind is None else self.bind(self, run_dir, backbone)

    def intervals(self, nfe: int) -> int:
        """The number of grid intervals that costs exactly ``nfe``; ConfigError otherwise.
        An adaptive solver integrates one interval whatever ``nfe`` says."""
        if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < 1:
            raise ConfigError(f"nfe must be a positive integer; got {nfe!r}")
        if self.adaptive:
            return 1
        if nfe < self.min_nfe:
            raise ConfigError(f"solver {self.name} needs at least {self.min_nfe} NFE; got {nfe}")
        n = 1
        while self.nfe(n) < nfe:
            n += 1
        if self.nfe(n) != nfe:
            can = [self.nfe(k) for k in range(1, n + 3)]
            raise ConfigError(f"solver {self.name} cannot spend exactly {nfe} NFE; it can spend "
                              f"{', '.join(map(str, can))}, ...")
        return n
