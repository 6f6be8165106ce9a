"""Fixed-grid ODE solvers for ``dx/dt = v(x, t)``, time from 0 (noise) to 1 (data).

Every solver has the same signature, ``solver(velocity, x, grid, callback=None) -> (x, nfe)``:
``velocity(x, t)`` is the only thing it calls, ``grid`` is a float64 time grid and ``nfe``
is the exact number of velocity evaluations it spent. A solver is stage-agnostic: ``x`` is
a tensor with a ``(K + 1,)`` grid, or a list of stage tensors (DFM) with a ``(K + 1, S)``
grid that gives every stage its own time at every row; then every step size, every
intermediate time and every multistep ratio below is taken per stage (stage ``s`` sees
``t_k[s]`` and ``h_k[s] = t_{k+1}[s] - t_k[s]``). ``callback(k, x)`` runs after interval ``k``.

With ``h_k = t_{k+1} - t_k`` and ``N`` intervals:

===========  ================================================================  =========
solver       update                                                            NFE
===========  ================================================================  =========
euler        ``x + h v(x, t)``                                                 ``N``
midpoint     ``x + h v(x + h/2 v(x, t), t + h/2)``                             ``2N``
heun         predictor ``x' = x + h v0``, ``x + h/2 (v0 + v(x', t + h))``;     ``2N - 1``
             the last interval keeps the predictor (no corrector)
rk4          classical Runge-Kutta 4 (weights 1/6, 1/3, 1/3, 1/6)              ``4N``
ab2          Adams-Bashforth 2 for variable steps, first step Euler            ``N``
dpmpp2m      DPM-Solver++(2M) on the data prediction, see :func:`dpmpp2m`      ``N``
===========  ================================================================  =========

>>> import torch
>>> from progflow.schedules import uniform_grid
>>> x, nfe = euler(lambda x, t: torch.ones_like(x), torch.zeros(1), uniform_grid(4))
>>> x.item(), nfe
(1.0, 4)
>>> x, nfe = heun(lambda x, t: 2 * t * torch.ones_like(x), torch.zeros(1), uniform_grid(4))
>>> round(x.item(), 4), nfe   # exact but for the last interval, an Euler step: 1 - h^2
(0.9375, 7)
"""

from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

State = Union[torch.Tensor, Sequence[torch.Tensor]]
Velocity = Callable[[State, torch.Tensor], State]


def _coef(c, s: int | None) -> float:
    """Coefficient ``c`` (number, 0-dim tensor, or one value per stage) for stage ``s``."""
    if isinstance(c, torch.Tensor) and c.ndim:
        return float(c[s])
    return float(c)


def lin(*terms) -> State:
    """``sum_i c_i * y_i`` for states ``y_i`` (all tensors or all lists of stages); for a
    list, a coefficient is a number or a ``(S,)`` tensor with one value per stage."""
    first = terms[0][1]
    if isinstance(first, torch.Tensor):
        return sum(_coef(c, None) * y for c, y in terms)
    return [sum(_coef(c, s) * y[s] for c, y in terms) for s in range(len(first))]


def _check(grid: torch.Tensor) -> int:
    if grid.dtype != torch.float64:
        raise ValueError("time grids are float64")
    return grid.shape[0] - 1


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """``num / den`` where ``den > 0`` and the quotient is finite, else 0 (per stage)."""
    q = num / torch.where(den > 0, den, torch.ones_like(den))
    return torch.where((den > 0) & torch.isfinite(q), q, torch.zeros_like(q))


def euler(velocity: Velocity, x: State, grid: torch.Tensor, callback=None) -> tuple[State, int]:
    """Explicit Euler: ``x <- x + h_k v(x, t_k)``; first order, ``N`` NFE."""
    n = _check(grid)
    for k in range(n):
        x = lin((1.0, x), (grid[k + 1] - grid[k], velocity(x, grid[k])))
        if callback is not None:
            callback(k, x)
    return x, n


def midpoint(velocity: Velocity, x: State, grid: torch.Tensor, callback=None) -> tuple[State, int]:
    """Explicit midpoint: a half Euler step, then the full step with the velocity found
    there. Second order, ``2N`` NFE (torchdiffeq's ``midpoint``)."""
    n = _check(grid)
    for k in range(n):
        t, h = grid[k], grid[k + 1] - grid[k]
        x_half = lin((1.0, x), (h / 2, velocity(x, t)))
        x = lin((1.0, x), (h, velocity(x_half, t + h / 2)))
        if callback is not None:
            callback(k, x)
    return x, 2 * n


def heun(velocity: Velocity, x: State, grid: torch.Tensor, callback=None) -> tuple[State, int]:
    """Heun (explicit trapezoid): Euler predictor ``x' = x + h v0``, corrector
    ``x + h/2 (v0 + v(x', t + h))``. The last interval stops after its predictor (as in
    EDM's sampler), so ``N`` intervals cost ``2N - 1`` NFE; second order (one Euler step
    adds an ``O(h^2)`` local error once)."""
    n = _check(grid)
    for k in range(n):
        t, h = grid[k], grid[k + 1] - grid[k]
        v0 = velocity(x, t)
        x_pred = lin((1.0, x), (h, v0))
        if k < n - 1:
            x_pred = lin((1.0, x), (h / 2, v0), (h / 2, velocity(x_pred, grid[k + 1])))
        x = x_pred
        if callback is not None:
            callback(k, x)
    return x, max(2 * n - 1, 0)


def rk4(velocity: Velocity, x: State, grid: torch.Tensor, callback=None) -> tuple[State, int]:
    """Classical fourth-order Runge-Kutta, ``4N`` NFE: stages at ``t``, ``t + h/2`` (twice)
    and ``t + h``, weights ``1/6, 1/3, 1/3, 1/6``. (torchdiffeq's ``rk4`` is the 3/8 rule,
    a different fourth-order method.)"""
    n = _check(grid)
    for k in range(n):
        t, h = grid[k], grid[k + 1] - grid[k]
        k1 = velocity(x, t)
        k2 = velocity(lin((1.0, x), (h / 2, k1)), t + h / 2)
        k3 = velocity(lin((1.0, x), (h / 2, k2)), t + h / 2)
        k4 = velocity(lin((1.0, x), (h, k3)), grid[k + 1])
        x = lin((1.0, x), (h / 6, k1), (h / 3, k2), (h / 3, k3), (h / 6, k4))
        if callback is not None:
            callback(k, x)
    return x, 4 * n


def ab2(velocity: Velocity, x: State, grid: torch.Tensor, callback=None) -> tuple[State, int]:
    """Adams-Bashforth 2 on a variable grid, one NFE per interval (``N``):
    ``x + h_k v_k + h_k^2 / (2 h_{k-1}) (v_k - v_{k-1})``, i.e. the integral of the line
    through the last two velocities. The first step has no history and is Euler; a stage
    that did not move in the previous step (``h_{k-1} = 0``) also takes an Euler step."""
    n = _check(grid)
    v_prev = h_prev = None
    for k in range(n):
        h = grid[k + 1] - grid[k]
        v = velocity(x, grid[k])
        if v_prev is None:
            x = lin((1.0, x), (h, v))
        else:
            c = _ratio(h * h, 2 * h_prev)
            x = lin((1.0, x), (h + c, v), (-c, v_prev))
        v_prev, h_prev = v, h
        if callback is not None:
            callback(k, x)
    return x, n


def _lambda(t: torch.Tensor) -> torch.Tensor:
    """Half log-SNR of the path ``x_t = t x1 + (1 - t) x0``: ``log(t / (1 - t))`` (+-inf at 1, 0)."""
    return torch.log(t) - torch.log1p(-t)


def dpmpp2m(velocity: Velocity, x: State, grid: torch.Tensor, callback=None) -> tuple[State, int]:
    """DPM-Solver++(2M) in flow form, one NFE per interval (``N``).

    Our path is ``x_t = alpha_t x1 + sigma_t x0`` with ``alpha_t = t``, ``sigma_t = 1 - t``
    and ``lambda_t = log(alpha_t / sigma_t) = log(t / (1 - t))``; the model's data
    prediction is ``D(x, t) = x + (1 - t) v(x, t)``. The exact solution from ``s`` to
    ``t`` is ``x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^l D dl``.
    Taking ``D`` constant gives DPM-Solver++(1),

        x_t = (sigma_t / sigma_s) x_s + alpha_t (1 - e^{-h}) D_s,   h = lambda_t - lambda_s,

    and ``alpha_t (1 - e^{-h}) = (t - s) / (1 - s)``, ``sigma_t / sigma_s = 1 - (t - s) / (1 - s)``;
    with ``D_s = x_s + (1 - s) v`` this *is* the Euler step ``x_s + (t - s) v``. The 2M
    update replaces ``D_s`` by the extrapolation, linear in ``lambda``, through the last two
    data predictions:

        D = D_k + (h_k / (2 h_{k-1})) (D_k - D_{k-1}),   h_k = lambda_{k+1} - lambda_k,

        x_{k+1} = (1 - b) x_k + b D,   b = (t_{k+1} - t_k) / (1 - t_k).

    Written with ``b`` instead of ``e^{-h}`` the coefficients are finite on the whole grid;
    only the ratio ``h_k / h_{k-1}`` meets the infinite ``lambda`` at the two ends:

    * **first steps** (``t = 0``, ``lambda = -inf``): step 0 has no history (first order).
      Step 1 starts from ``t_0 = 0`` so ``h_0 = +inf`` and the ratio tends to 0: the limit
      of the 2M update is again the first-order step. Second-order corrections start at
      step 2.
    * **last step** into ``t = 1`` (``lambda = +inf``, ``sigma = 0``): ``b = 1`` and
      ``x_1 = D``, but ``h_{N-1} = +inf`` so the extrapolated ``D`` diverges unless the
      last two predictions agree; the update has no finite limit. The last step therefore
      lands on the current data prediction ``x_1 = D_{N-1}`` (first order, the
      "lower order final" of DPM-Solver++; one first-order step keeps global order 2).

    A stage whose time does not move in a step (``h = 0``) keeps its state. On a grid
    with ``N = 3`` intervals from 0 to 1 the solver is exactly Euler.
    """
    n = _check(grid)
    d_prev = h_prev = None
    for k in range(n):
        t0, t1 = grid[k], grid[k + 1]
        v = velocity(x, t0)
        d = lin((1.0, x), (1.0 - t0, v))  # data prediction
        b = _ratio(t1 - t0, 1.0 - t0)
        h = _lambda(t1) - _lambda(t0)
        if d_prev is None:
            x = lin((1.0 - b, x), (b, d))
        else:
            r = _ratio(h, 2 * h_prev)  # 0 where h or h_prev is infinite (the ends) or h_prev = 0
            x = lin((1.0 - b, x), (b * (1 + r), d), (-b * r, d_prev))
        d_prev, h_prev = d, h
        if callback is not None:
            callback(k, x)
    return x, n
