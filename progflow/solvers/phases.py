"""The integrations a method's sampler runs, recorded without running them.

A method's ``sample`` calls ``spec.integrate(velocity, x, grid)`` once per sampling phase
(once for base flow matching; once per stage phase for DFM, which starts a stage from
fresh noise between phases). Handing it a recording spec gives those calls as
:class:`Phase` objects: the guided velocity (with its labels and guidance branches), the
state layout and the time grid. Code that needs the sampler's trajectory structure without
knowing the method -- fitting a solver network on it, inverting images along it -- works
on these.

Rule for a list state: a stage whose time is 0 at a phase's first row and moves during
the phase *enters* in that phase (the sampler sets it to fresh noise there); a stage
whose time is 0 on every row of the phase has not started and is held at zero.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from progflow.paths import interpolate


@dataclass
class Phase:
    velocity: object  # the method's velocity callable for this phase
    x: object  # the state the method handed over (tensor or list of stages)
    grid: torch.Tensor  # float64 (K + 1,) or (K + 1, S)

    @property
    def intervals(self) -> int:
        return self.grid.shape[0] - 1

    @property
    def staged(self) -> bool:
        return not isinstance(self.x, torch.Tensor)

    def columns(self) -> torch.Tensor:
        """The grid as ``(K + 1, S)`` (one column for a tensor state)."""
        return self.grid[:, None] if self.grid.ndim == 1 else self.grid

    def entering(self) -> list[int]:
        g = self.columns()
        return [s for s in range(g.shape[1]) if g[0, s] == 0 and g[-1, s] != 0]

    def started(self) -> list[int]:
        g = self.columns()
        return [s for s in range(g.shape[1]) if bool((g[:, s] != 0).any())]

    def lead(self) -> int:
        """The stage that moves most in this phase (its time parametrises the phase)."""
        g = self.columns()
        return int((g[-1] - g[0]).abs().argmax())


def record_phases(method, model, y: torch.Tensor, *, nfe: int | None = None, cfg_scale: float | None = None,
                  cfg_interval=None, shift: float | None = None, solver=None) -> list[Phase]:
    """The phases ``method.sample(model, y, ...)`` would integrate with ``solver`` (its NFE
    rule sets the grids; default Euler's, one NFE per interval); no backbone call is made."""
    import dataclasses

    from progflow.solvers import get_solver

    phases: list[Phase] = []

    def integrate(velocity, x, grid, callback=None):
        phases.append(Phase(velocity, x, grid))
        return x, 0

    spec = dataclasses.replace(get_solver(solver or "euler"), name="record", integrate=integrate, bind=None)
    method.sample(model, y, generator=torch.Generator().manual_seed(0), nfe=nfe, cfg_scale=cfg_scale,
                  cfg_interval=cfg_interval, solver=spec, shift=shift)
    return phases


# ---- images <-> solver states -----------------------------------------------------------------
def to_state(method, x: torch.Tensor):
    """An image batch as the solver state of ``method``: its stage split when the method
    samples a decomposition (``method.decomposition``), else the tensor itself."""
    dec = getattr(method, "decomposition", None)
    return list(dec.split(x)) if dec is not None else x


def from_state(method, state) -> torch.Tensor:
    dec = getattr(method, "decomposition", None)
    return dec.merge(list(state)) if dec is not None else state


def _stages(x) -> list[torch.Tensor]:
    return [x] if isinstance(x, torch.Tensor) else list(x)


def _unstages(stages: list[torch.Tensor], like):
    return stages[0] if isinstance(like, torch.Tensor) else stages


def path_state(phase: Phase, x1, x0, t: torch.Tensor):
    """The point of the path at per-sample times ``t`` (``(B,)`` or ``(B, S)``) in ``phase``:
    started stages ``t_s x1_s + (1 - t_s) x0_s``, stages not yet started zero."""
    t_BS = t[:, None] if t.ndim == 1 else t
    started = phase.started()
    out = [interpolate(a, b, t_BS[:, s]) if s in started else torch.zeros_like(a)
           for s, (a, b) in enumerate(zip(_stages(x1), _stages(x0)))]
    return _unstages(out, phase.x)


def integrate_phases(spec, phases: list[Phase], noise: list, *, backward: bool = False, state=None):
    """Run a method's phases with solver ``spec``.

    Forward (``backward=False``): from ``noise`` (one entry per phase: the entering stages'
    noise, a tensor for a tensor state, a list of stages otherwise), each phase's entering
    stages set to their noise, as the method's sampler does; returns ``(state, nfe)``.
    Backward: from ``state`` (e.g. :func:`to_state` of real images) along every phase's grid
    reversed, last phase first; after each phase the entering stages are read off as its
    noise and zeroed; returns ``(noise, nfe)`` in the forward format.
    """
    nfe = 0
    if not backward:
        x = None
        for ph, z in zip(phases, noise):
            stages = [torch.zeros_like(s) for s in _stages(ph.x)] if x is None else _stages(x)
            for s in ph.entering():
                stages[s] = _stages(z)[s]
            x, n = spec.integrate(ph.velocity, _unstages(stages, ph.x), ph.grid)
            nfe += n
        return x, nfe
    x, out = state, []
    for ph in reversed(phases):
        x, n = spec.integrate(ph.velocity, x, ph.grid.flip(0))
        nfe += n
        stages = _stages(x)
        z = [torch.zeros_like(s) for s in stages]
        for s in ph.entering():
            z[s] = stages[s]
            stages[s] = torch.zeros_like(stages[s])
        out.append(_unstages(z, ph.x))
        x = _unstages(stages, ph.x)
    return out[::-1], nfe
