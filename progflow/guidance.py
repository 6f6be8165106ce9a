"""Classifier-free guidance as a wrapper around a pure backbone.

``v = v_u + w * (v_c - v_u)`` inside the guidance interval, ``v_c`` outside it. The
conditional and unconditional passes run as one batch (counted as one NFE).
Works for a tensor state and for a list of stage tensors (DFM).

:class:`GuidedVelocity` is what a method hands to a solver: the guided ``velocity(x, t)``
for a grid row ``t``, plus what a solver with its own network per guidance branch needs
(``branches``, ``y``). Plain solvers just call it.
"""

from __future__ import annotations

import torch


def _double(x):
    if isinstance(x, torch.Tensor):
        return torch.cat([x, x])
    return [torch.cat([s, s]) for s in x]


def _combine(v, scale: float):
    if isinstance(v, torch.Tensor):
        vc, vu = v.chunk(2)
        return vu + scale * (vc - vu)
    return [_combine(s, scale) for s in v]


class CFG:
    """Guided velocity ``(x, t) -> v`` for labels ``y``.

    ``t`` is the per-sample time ``(B,)`` or per-sample-per-stage ``(B, S)``; ``guide_time``
    (a float) decides whether the step lies in ``interval``.
    """

    def __init__(self, model, y: torch.Tensor, scale: float = 1.0, interval=(0.0, 1.0), null_class: int | None = None):
        self.model = model
        self.y = y
        self.scale = float(scale)
        self.interval = tuple(interval)
        self.null = torch.full_like(y, model.num_classes if null_class is None else null_class)

    def active(self, guide_time: float) -> bool:
        lo, hi = self.interval
        return self.scale != 1.0 and lo <= guide_time <= hi

    def __call__(self, x, t: torch.Tensor, guide_time: float):
        if not self.active(guide_time):
            return self.model(x, t, self.y)
        v = self.model(_double(x), torch.cat([t, t]), torch.cat([self.y, self.null]))
        return _combine(v, self.scale)

    def branches(self, x, t: torch.Tensor, guide_time: float):
        """``([(v_c, y), (v_u, null)], combine)`` inside the interval (one batched call),
        ``([(v_c, y)], first)`` outside it; ``combine(list of branch velocities)`` is the
        guided velocity, so ``combine([v for v, _ in parts]) == self(x, t, guide_time)``."""
        if not self.active(guide_time):
            return [(self.model(x, t, self.y), self.y)], _first
        v = self.model(_double(x), torch.cat([t, t]), torch.cat([self.y, self.null]))
        halves = _halves(v)
        return [(halves[0], self.y), (halves[1], self.null)], self.combine

    def combine(self, branch_v: list):
        """``v_u + w (v_c - v_u)`` from ``[v_c, v_u]`` (tensors or lists of stages)."""
        return _combine(_concat(branch_v), self.scale)


def _first(branch_v: list):
    return branch_v[0]


def _halves(v):
    if isinstance(v, torch.Tensor):
        return list(v.chunk(2))
    pairs = [s.chunk(2) for s in v]
    return [[p[0] for p in pairs], [p[1] for p in pairs]]


def _concat(branch_v: list):
    if isinstance(branch_v[0], torch.Tensor):
        return torch.cat(branch_v)
    return [torch.cat(stages) for stages in zip(*branch_v)]


class GuidedVelocity:
    """The velocity a method hands to a solver, ``velocity(x, t) -> v``, around a :class:`CFG`.

    ``t`` is a grid row: a 0-dim time for a tensor state, ``(S,)`` per-stage times for a
    list of ``S`` stages; or per-sample rows, ``(B,)`` / ``(B, S)`` (used to fit solver
    networks at many times at once; guidance must then be on or off for every sample).
    ``lead`` is the stage whose time decides the guidance interval (``None`` for a tensor
    state). ``finish(v)`` post-processes every velocity (e.g. zeroing stages that have not
    started); ``prepare(x)`` the state before the backbone sees it; ``observe(v)`` sees every
    guided velocity computed (e.g. to keep the last one for previews).

    Besides the call: ``y`` (the labels), ``null`` (the unconditional label) and
    ``branches(x, t) -> (parts, combine)`` with ``parts`` a list of ``(v_branch, labels)``
    (conditional and unconditional inside the guidance interval, conditional only outside)
    and ``combine(list of branch velocities) -> guided v``: a solver that runs its own
    network on each branch combines the results per node this way.
    """

    def __init__(self, guided: CFG, lead: int | None = None, prepare=None, finish=None, observe=None):
        self.guided, self.lead = guided, lead
        self.prepare = prepare or (lambda x: x)
        self.finish = finish or (lambda v: v)
        self.observe = observe

    @property
    def y(self) -> torch.Tensor:
        return self.guided.y

    @property
    def null(self) -> torch.Tensor:
        return self.guided.null

    def _inputs(self, x, t: torch.Tensor):
        t = torch.as_tensor(t)
        B = self.y.shape[0]
        row = t.ndim == (0 if self.lead is None else 1)
        t_in = t.to(device=self.y.device, dtype=torch.float32)
        t_in = t_in.expand(B, *t.shape) if row else t_in
        lead = t if self.lead is None else t[..., self.lead]
        if row:
            return self.prepare(x), t_in, float(lead)
        first, last = float(lead.min()), float(lead.max())
        lo, hi = self.guided.interval
        if self.guided.scale != 1.0 and not (lo <= first and last <= hi) and not (last < lo or first > hi):
            raise ValueError("per-sample times must all lie inside or all outside the guidance interval")
        return self.prepare(x), t_in, first

    def __call__(self, x, t: torch.Tensor):
        x_in, t_in, guide_time = self._inputs(x, t)
        v = self.finish(self.guided(x_in, t_in, guide_time))
        if self.observe is not None:
            self.observe(v)
        return v

    def branches(self, x, t: torch.Tensor):
        x_in, t_in, guide_time = self._inputs(x, t)
        parts, combine = self.guided.branches(x_in, t_in, guide_time)
        parts = [(self.finish(v), y) for v, y in parts]
        if self.observe is not None:
            self.observe(combine([v for v, _ in parts]))
        return parts, combine
