"""Classifier-free guidance as a wrapper around a pure backbone.

``v = v_u + w * (v_c - v_u)`` inside the guidance interval, ``v_c`` outside it. The
conditional and unconditional passes run as one batch (counted as one NFE).
Works for a tensor state and for a list of stage tensors (DFM).
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
