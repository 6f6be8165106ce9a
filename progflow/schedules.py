"""Time grids for samplers (float64, from 0 = noise to 1 = data).

>>> uniform_grid(4).tolist()
[0.0, 0.25, 0.5, 0.75, 1.0]
"""

from __future__ import annotations

import math

import torch

from progflow.errors import ConfigError


def uniform_grid(n: int) -> torch.Tensor:
    """``n`` equal steps from 0 to 1: a float64 tensor of ``n + 1`` times."""
    if n < 1:
        raise ValueError(f"a time grid needs at least one step, got {n}")
    return torch.linspace(0.0, 1.0, n + 1, dtype=torch.float64)


def shift_time(t: torch.Tensor, shift: float) -> torch.Tensor:
    """SD3-style shift in our convention: ``t' = t / (t + s * (1 - t))``.

    ``s > 1`` spends more of the grid near the noise end (small ``t``).
    """
    return t / (t + shift * (1 - t))


def shifted_grid(n: int, shift: float) -> torch.Tensor:
    """A uniform grid of ``n`` steps passed through :func:`shift_time`."""
    if shift <= 0:
        raise ValueError(f"grid shift must be positive, got {shift}")
    return shift_time(uniform_grid(n), shift)


def time_grid(n: int, shift: float = 1.0) -> torch.Tensor:
    """``n`` intervals from 0 to 1, uniform for ``shift == 1``, else :func:`shifted_grid`.
    A shift that is not a positive number is the caller's input error (ConfigError)."""
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not 0 < shift < math.inf:
        raise ConfigError(f"shift must be a positive number; got {shift!r}")
    return uniform_grid(n) if shift == 1.0 else shifted_grid(n, shift)


def segment_grid(start: torch.Tensor, end: torch.Tensor, n: int, shift: float = 1.0) -> torch.Tensor:
    """``n + 1`` rows on the straight segment from grid row ``start`` to ``end`` (per-stage
    times ``(S,)``), spaced like :func:`time_grid` ``(n, shift)``: a ``(n + 1, S)`` grid.

    >>> segment_grid(torch.tensor([0.7, 0.0], dtype=torch.float64), torch.ones(2, dtype=torch.float64), 2).tolist()
    [[0.7, 0.0], [0.85, 0.5], [1.0, 1.0]]
    """
    return start + time_grid(n, shift)[:, None] * (end - start)


# ---- multi-stage DFM schedule (methods.md section 2) --------------------------------------


def dfm_schedule(stage_steps, thresholds) -> torch.Tensor:
    """Per-stage times for DFM sampling: a float64 ``(K + 1, S)`` grid, ``K = sum(stage_steps)``.

    Sampling runs in ``S`` phases; phase ``j`` has ``stage_steps[j-1]`` Euler steps and
    stage ``j`` enters (from pure noise, ``t = 0``) at its start. Rule, for every stage
    ``j`` with entry step ``k_j = stage_steps[0] + ... + stage_steps[j-2]``:

    * before ``k_j`` its time is 0 (not started);
    * during its own phase it runs linearly from 0 to ``thresholds[j-1]`` (the last stage,
      which has no threshold, runs 0 -> 1);
    * from the end of its phase it runs linearly from its threshold to 1 over *all* the
      remaining steps, so every stage reaches exactly 1 at step ``K``.

    So stage ``j + 1`` enters exactly when stage ``j`` -- the latest-entered stage --
    reaches its threshold ``tau_j`` (one threshold per transition, each in (0, 1)), and
    an earlier stage's time is piecewise linear with one kink, at the end of its own
    phase. Equivalently, at each phase boundary every earlier stage continues linearly
    from where it is to 1 over the steps that are left (the same slope). With 2 stages,
    ``(30, 10)`` and ``tau = 0.7``: stage 1 goes 0 -> 0.7 in 30 steps, then stage 1
    0.7 -> 1 and stage 2 0 -> 1 in 10 joint steps.

    >>> g = dfm_schedule((3, 2), (0.6,))
    >>> [[round(v, 2) for v in row] for row in g.tolist()]
    [[0.0, 0.0], [0.2, 0.0], [0.4, 0.0], [0.6, 0.0], [0.8, 0.5], [1.0, 1.0]]
    """
    steps = [int(n) for n in stage_steps]
    taus = [float(t) for t in thresholds]
    S = len(steps)
    if S < 1 or any(n < 1 for n in steps):
        raise ValueError(f"stage_steps must be positive integers, one per stage; got {list(stage_steps)}")
    if len(taus) != S - 1 or any(not 0.0 < t < 1.0 for t in taus):
        raise ValueError(f"{S} stages need {S - 1} thresholds in (0, 1); got {list(thresholds)}")
    K = sum(steps)
    grid = torch.zeros(K + 1, S, dtype=torch.float64)
    k = torch.arange(K + 1, dtype=torch.float64)
    start = 0
    for j in range(S):
        end = start + steps[j]
        tau = taus[j] if j < S - 1 else 1.0
        rise = tau * (k - start) / steps[j]  # 0 -> tau over the stage's own phase
        tail = tau + (1.0 - tau) * (k - end) / max(K - end, 1)  # tau -> 1 over the rest
        col = torch.where(k <= end, rise, tail).clamp(min=0.0)
        col[K] = 1.0  # exact end point
        grid[:, j] = col
        start = end
    return grid


def dfm_active(stage_steps) -> torch.Tensor:
    """Which stages are active during each step: a bool ``(K, S)`` mask.

    Stage ``j`` is active in step ``k`` (from grid row ``k`` to ``k + 1``) once it has
    entered, i.e. in its own phase and after. On the entering step its time is still 0,
    so activity cannot be read from the grid; the latest-entered stage of step ``k`` is
    ``dfm_active(steps)[k].sum() - 1``.

    >>> dfm_active((2, 1)).int().tolist()
    [[1, 0], [1, 0], [1, 1]]
    """
    steps = [int(n) for n in stage_steps]
    phase = torch.repeat_interleave(torch.arange(len(steps)), torch.tensor(steps))  # (K,)
    return torch.arange(len(steps))[None, :] <= phase[:, None]


def split_steps(total: int, weights) -> tuple[int, ...]:
    """Split ``total`` steps over phases in proportion to ``weights`` (largest remainder),
    at least one step each, and at least two each when ``total`` allows it.
    ``split_steps(40, (3, 1)) == (30, 10)``, ``split_steps(5, (3, 1)) == (3, 2)``.

    Why two: a phase enters its stage (or scale) from pure noise at ``t = 0``, where a
    model trained with logit-normal times has seen almost no examples; its velocity there
    is poor (a trained 2-stage DFM overshoots the noise by half), and a single step takes
    it at face value all the way to ``t = 1``: with ``(4, 1)`` at 5 NFE that DFM's samples
    land 0.73 RMS from the 100-step ones, with ``(3, 2)`` 0.12."""
    w = [float(x) for x in weights]
    n = len(w)
    if total < n:
        raise ValueError(f"{total} steps cannot cover {n} phases (at least one step each)")
    least = 2 if total >= 2 * n else 1
    exact = [total * x / sum(w) for x in w]
    out = [max(least, int(e)) for e in exact]
    by_remainder = sorted(range(n), key=lambda i: (-(exact[i] - int(exact[i])), i))
    for i in by_remainder[: max(total - sum(out), 0)]:
        out[i] += 1
    while sum(out) > total:  # the minimum per phase overshot: take from the largest
        out[max(range(n), key=lambda i: (out[i], -i))] -= 1
    return tuple(out)


def phase_intervals(spec, nfe: int, weights, what: str) -> tuple[int, ...]:
    """Grid intervals per phase when every phase is a separate solve of ``spec`` (a
    :class:`~progflow.solvers.SolverSpec`) and all of them together must cost exactly
    ``nfe``: the smallest total ``N`` of intervals, split over the phases in proportion to
    ``weights`` (:func:`split_steps`), whose cost ``sum_j spec.nfe(n_j)`` is ``nfe``.
    An adaptive solver gets one interval per phase. ConfigError, naming ``what`` (e.g.
    "DFM's 2 sampling phases") and the costs it can reach, when no ``N`` fits.
    """
    n_phases = len(weights)
    if spec.adaptive:
        return (1,) * n_phases
    if not isinstance(nfe, int) or isinstance(nfe, bool) or nfe < n_phases:
        raise ConfigError(f"nfe {nfe!r} cannot cover {what}")
    costs = []
    for total in range(n_phases, nfe + 1):
        phases = split_steps(total, weights)
        costs.append(sum(spec.nfe(n) for n in phases))
        if costs[-1] == nfe:
            return phases
        if costs[-1] > nfe:
            break
    near = sorted(set(costs))[-4:]
    raise ConfigError(f"solver {spec.name} cannot spend exactly {nfe} NFE over {what} "
                      f"(each phase is a separate solve); it can spend ..., {', '.join(map(str, near))}, ...")
