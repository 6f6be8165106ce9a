"""Adaptive dopri5 through ``torchdiffeq``: the reference trajectory for the fixed-grid
solvers. Same signature as they have; the NFE it returns is what it spent (counted).

Only the grid's end points matter to an adaptive solver, except where a multi-stage grid
bends: a ``(K + 1, S)`` DFM grid is a polyline in the space of stage times, and dopri5
integrates each straight piece ``a -> b`` separately, along
``t(theta) = a + theta (b - a)``, ``theta`` from 0 to 1, with
``dx_s / dtheta = (b_s - a_s) v_s(x, t(theta))``. Rows inside a straight piece are only
reported (dense output) to ``callback``; they cost nothing.

>>> import torch
>>> from progflow.schedules import uniform_grid
>>> x, nfe = dopri5(lambda x, t: 3 * t ** 2 * torch.ones_like(x), torch.zeros(1, dtype=torch.float64),
...                 uniform_grid(1), rtol=1e-8, atol=1e-8)
>>> round(x.item(), 6), nfe > 0
(1.0, True)
"""

from __future__ import annotations

import math

import torch

from progflow.errors import ConfigError, ProgflowError
from progflow.solvers.ode import State, Velocity, lin

TOL_RANGE = (1e-12, 0.1)  # accepted rtol / atol
MAX_STEPS = 20_000  # accepted steps per straight piece before giving up
DEFAULT_RTOL = DEFAULT_ATOL = 1e-5


def check_tolerances(rtol: float, atol: float) -> None:
    lo, hi = TOL_RANGE
    for name, tol in (("rtol", rtol), ("atol", atol)):
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not (lo <= tol <= hi):
            raise ConfigError(f"dopri5 {name} must be a number in [{lo:g}, {hi:g}]; got {tol!r}")


def straight_pieces(grid: torch.Tensor) -> list[tuple[int, int]]:
    """Row ranges ``(i, j)`` of a float64 grid whose rows lie, in order, on one straight
    segment in stage-time space (all of a ``(K + 1,)`` grid that only moves forward)."""
    g = grid.reshape(grid.shape[0], -1)
    pieces, i = [], 0
    while i < g.shape[0] - 1:
        j = i + 1
        while j + 1 < g.shape[0]:
            u, w = g[j] - g[i], g[j + 1] - g[j]
            uu, ww, uw = float(u @ u), float(w @ w), float(u @ w)
            if uw <= 0 or abs(uw * uw - uu * ww) > 1e-12 * uu * ww:
                break
            j += 1
        pieces.append((i, j))
        i = j
    return pieces


def dopri5(velocity: Velocity, x: State, grid: torch.Tensor, callback=None, *,
           rtol: float = DEFAULT_RTOL, atol: float = DEFAULT_ATOL) -> tuple[State, int]:
    """Dormand-Prince 5(4) with torchdiffeq's step control (error norm: RMS over the whole
    state, so a batch shares its steps). Returns the state at the grid's last row and the
    number of velocity evaluations spent."""
    from torchdiffeq import odeint

    check_tolerances(rtol, atol)
    if grid.dtype != torch.float64:
        raise ValueError("time grids are float64")
    is_list = not isinstance(x, torch.Tensor)
    count = 0
    for i, j in straight_pieces(grid):
        a, b = grid[i], grid[j]
        span = b - a

        def f(theta, y, a=a, span=span):
            nonlocal count
            count += 1
            v = velocity(list(y) if is_list else y, a + float(theta) * span)
            return tuple(lin((span, v))) if is_list else lin((span, v))

        if callback is None:
            thetas = [0.0, 1.0]
        else:  # project the rows of this piece onto it
            d = span.reshape(-1)
            thetas = [float((grid[k] - a).reshape(-1) @ d / (d @ d)) for k in range(i, j + 1)]
        if not math.isfinite(sum(thetas)) or float(span.abs().max()) == 0.0:
            continue  # a row repeated: nothing moves
        ts = torch.tensor(thetas, dtype=torch.float64)
        try:
            sol = odeint(f, tuple(x) if is_list else x, ts, rtol=rtol, atol=atol, method="dopri5",
                         options={"max_num_steps": MAX_STEPS})
        except AssertionError as e:
            raise ProgflowError(f"dopri5 gave up ({e}) at rtol={rtol:g}, atol={atol:g}: the velocity is not smooth "
                                "enough for these tolerances") from None
        for m in range(1, len(thetas)):
            x = [s[m] for s in sol] if is_list else sol[m]
            if callback is not None:
                callback(i + m - 1, x)
    return x, count
