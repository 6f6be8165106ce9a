"""Fixed-grid ODE solvers for ``dx/dt = v(x, t)``, time from 0 (noise) to 1 (data).

A solver is stage-agnostic: ``x`` is a tensor, or a list of stage tensors (DFM) with a grid
of shape ``(K + 1, S)`` that gives every stage its own time at every step.
Solvers return ``(x, nfe)``: the end state and the number of velocity evaluations.

>>> import torch
>>> from progflow.schedules import uniform_grid
>>> x, nfe = euler(lambda x, t: torch.ones_like(x), torch.zeros(1), uniform_grid(4))
>>> x.item(), nfe
(1.0, 4)
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

State = Union[torch.Tensor, Sequence[torch.Tensor]]
Velocity = Callable[[State, torch.Tensor], State]


def _axpy(x: State, dt: torch.Tensor, v: State) -> State:
    """``x + dt * v`` for a tensor (scalar ``dt``) or a list of stages (``dt`` per stage)."""
    if isinstance(x, torch.Tensor):
        return x + float(dt) * v
    return [xs + float(d) * vs for xs, d, vs in zip(x, dt, v)]


def euler(velocity: Velocity, x: State, grid: torch.Tensor, callback=None) -> tuple[State, int]:
    """Explicit Euler: ``x <- x + (t_{k+1} - t_k) * v(x, t_k)`` over a float64 ``grid``.

    ``grid`` is ``(K + 1,)`` for one tensor or ``(K + 1, S)`` for a list of S stages.
    ``callback(k, x)`` is called after every step (for previews).
    """
    if grid.dtype != torch.float64:
        raise ValueError("time grids are float64")
    for k in range(grid.shape[0] - 1):
        v = velocity(x, grid[k])
        x = _axpy(x, grid[k + 1] - grid[k], v)
        if callback is not None:
            callback(k, x)
    return x, grid.shape[0] - 1
