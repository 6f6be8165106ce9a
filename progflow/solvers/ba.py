"""BA-solver (methods.md section 4): bi-anchor interpolation with a fitted SideNet.

A SideNet ``side(x, v, t, [h...], y) -> [v(t + h)...]`` predicts the backbone velocity at
nearby times from the velocity at ``t`` (:mod:`progflow.nn.sidenet`). Over an interval
``[t, t + h]`` (``h`` signed: grids may run towards noise too) the 4-point Gauss-Lobatto
rule integrates the velocity at the nodes ``t, t + a h, t + (1 - a) h, t + h`` with
``a = (5 - sqrt 5) / 10`` and weights ``1/12, 5/12, 5/12, 1/12``; it is exact for
velocities polynomial in time up to degree 5.

**Bi-anchor** (``ba``), ``N`` intervals, ``N`` backbone NFE and ``2N - 1`` SideNet calls:

1. the start anchor ``v_0 = v(x, t)`` (the previous interval's end anchor, reused);
2. predictor: one SideNet call gives ``v_a, v_b, v_1`` at ``a h, (1 - a) h, h`` from the
   start anchor; ``x' = x + h (v_0 + 5 v_a + 5 v_b + v_1) / 12``;
3. the end anchor ``v_e = v(x', t + h)``, one backbone call;
4. corrector: a SideNet call from the end anchor back by ``-a h`` gives ``v_b'`` at
   ``(1 - a) h``; ``x <- x + h (v_0 + 5 v_a + 5 v_b' + v_e) / 12``;
5. ``v_e`` is the next interval's start anchor. The last interval stops after step 2.

Each interior node is predicted from the nearer anchor, a distance ``a h`` away. With an
untrained SideNet (every node equals its anchor) the step is
``x + h/2 (v_0 + v(x + h v_0, t + h))`` with the end velocity reused as the next start and
a last Euler step: :func:`heun_reused`, the stated training-free counterpart.

**Single anchor** (``ba1``, the ablation): only steps 1-2, with the start anchor computed
at the reached point; ``N`` NFE and ``N`` SideNet calls; untrained it is Euler.

CFG per node: the SideNet runs on the conditional and the unconditional velocity of an
anchor (both branches in one batched call) and the guided velocity is combined at every
node (``velocity.branches``, :class:`progflow.guidance.GuidedVelocity`). A velocity
without branches is used as it is, with its ``y`` labels (null labels without one).

A state is a tensor with a ``(K + 1,)`` grid or a list of stages with a ``(K + 1, S)``
grid (DFM): then ``h`` and every node time are per stage.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from progflow.checkpoint import weights_hash
from progflow.errors import ConfigError
from progflow.solvers.ode import lin
from progflow.solvers.spec import SolverSpec

ALPHA = (5.0 - math.sqrt(5.0)) / 10.0  # 0.2763932...
WEIGHTS = (1.0 / 12.0, 5.0 / 12.0, 5.0 / 12.0, 1.0 / 12.0)
SOLVER_DIR = "solver"  # RUN/solver/: the fitted SideNet


# ---- the SideNet as the solver calls it ---------------------------------------------------------
def _first(branch_v: list):
    return branch_v[0]


def anchor(velocity, x, t):
    """Backbone velocity at ``(x, t)`` as ``(parts, combine)``: a list of ``(v, labels)``
    per guidance branch and the function that combines branch velocities."""
    if hasattr(velocity, "branches"):
        return velocity.branches(x, t)
    return [(velocity(x, t), getattr(velocity, "y", None))], _first


def guided(a) -> object:
    parts, combine = a
    return combine([v for v, _ in parts])


def _cat(states: list):
    if isinstance(states[0], torch.Tensor):
        return torch.cat(states)
    return [torch.cat(s) for s in zip(*states)]


def _chunk(state, n: int) -> list:
    if isinstance(state, torch.Tensor):
        return list(state.chunk(n))
    per_stage = [s.chunk(n) for s in state]
    return [[p[i] for p in per_stage] for i in range(n)]


class Side:
    """A SideNet (or any ``net(x, v, t_BS, hs_BS, y_B) -> list``, e.g. an oracle in tests)
    called on grid rows, every guidance branch in one batch; counts its calls."""

    def __init__(self, net, num_classes: int):
        self.net, self.num_classes, self.calls = net, num_classes, 0

    def nodes(self, x, a, t: torch.Tensor, offsets: list[torch.Tensor]) -> list:
        """Guided velocities at ``t + h`` for each offset row ``h`` from anchor ``a`` at ``(x, t)``."""
        parts, combine = a
        n = len(parts)
        v = _cat([p[0] for p in parts])
        B = (v if isinstance(v, torch.Tensor) else v[0]).shape[0] // n
        device = (v if isinstance(v, torch.Tensor) else v[0]).device
        y = torch.cat([p[1] if p[1] is not None else torch.full((B,), self.num_classes, dtype=torch.long,
                                                                     device=device) for p in parts])
        dtype = (v if isinstance(v, torch.Tensor) else v[0]).dtype
        rows = lambda r: torch.as_tensor(r).to(device=device, dtype=dtype).reshape(1, -1).expand(n * B, -1)
        with torch.no_grad():
            outs = self.net(_cat([x] * n), v, rows(t), [rows(h) for h in offsets], y)
        self.calls += 1
        return [combine(_chunk(o, n)) for o in outs]


# ---- samplers ---------------------------------------------------------------------------------------
def _quadrature(x, h, v0, va, vb, v1):
    w0, w1, w2, w3 = WEIGHTS
    return lin((1.0, x), (w0 * h, v0), (w1 * h, va), (w2 * h, vb), (w3 * h, v1))


def _check(grid: torch.Tensor) -> int:
    if grid.dtype != torch.float64:
        raise ValueError("time grids are float64")
    return grid.shape[0] - 1


def bi_anchor(velocity, x, grid: torch.Tensor, side: Side, callback=None):
    """Bi-anchor steps over ``grid`` (module docstring); returns ``(x, backbone NFE)``."""
    n = _check(grid)
    a = anchor(velocity, x, grid[0])
    nfe = 1
    for k in range(n):
        t, h = grid[k], grid[k + 1] - grid[k]
        v0 = guided(a)
        va, vb, v1 = side.nodes(x, a, t, [ALPHA * h, (1 - ALPHA) * h, h])
        x_pred = _quadrature(x, h, v0, va, vb, v1)
        if k < n - 1:
            e = anchor(velocity, x_pred, grid[k + 1])
            nfe += 1
            (vb,) = side.nodes(x_pred, e, grid[k + 1], [-ALPHA * h])
            x_pred = _quadrature(x, h, v0, va, vb, guided(e))
            a = e
        x = x_pred
        if callback is not None:
            callback(k, x)
    return x, nfe


def single_anchor(velocity, x, grid: torch.Tensor, side: Side, callback=None):
    """Single-anchor steps: backbone at the start of every interval, the SideNet for the
    other three Gauss-Lobatto nodes; ``N`` NFE, ``N`` SideNet calls."""
    n = _check(grid)
    for k in range(n):
        t, h = grid[k], grid[k + 1] - grid[k]
        a = anchor(velocity, x, t)
        va, vb, v1 = side.nodes(x, a, t, [ALPHA * h, (1 - ALPHA) * h, h])
        x = _quadrature(x, h, guided(a), va, vb, v1)
        if callback is not None:
            callback(k, x)
    return x, n


def heun_reused(velocity, x, grid: torch.Tensor, callback=None):
    """What :func:`bi_anchor` does with an untrained SideNet, written out: Heun's corrector
    ``x + h/2 (v_0 + v(x + h v_0, t + h))`` with the end velocity (taken at the Euler
    predictor) reused as the next interval's start, and a last Euler step; ``N`` NFE."""
    n = _check(grid)
    v0 = velocity(x, grid[0])
    for k in range(n):
        h = grid[k + 1] - grid[k]
        x_pred = lin((1.0, x), (h, v0))
        if k < n - 1:
            ve = velocity(x_pred, grid[k + 1])
            x_pred = lin((1.0, x), (h / 2, v0), (h / 2, ve))
            v0 = ve
        x = x_pred
        if callback is not None:
            callback(k, x)
    return x, n


# ---- solver specs ------------------------------------------------------------------------------------
NAMES = {"ba": False, "ba1": True}  # name -> single anchor


def ba_spec(side: Side | None, single: bool = False, source: str = ""):
    """A :class:`~progflow.solvers.SolverSpec` integrating with ``side``; ``side=None``
    gives the registered placeholder whose integrate explains how to get a SideNet."""
    name = "ba1" if single else "ba"
    if side is None:
        def integrate(velocity, x, grid, callback=None):
            raise ConfigError(f"solver {name} needs a SideNet fitted to the run: run `progflow fit-solver RUN` "
                              "first and sample through the run (progflow sample RUN --solver ba)")
    else:
        fn = single_anchor if single else bi_anchor

        def integrate(velocity, x, grid, callback=None):
            return fn(velocity, x, grid, side, callback)

        integrate.side = side  # its call counter: SideNet calls, reported apart from the NFE

    what = "single-anchor (ablation)" if single else "bi-anchor"
    calls = "N" if single else "2N - 1"
    return SolverSpec(name, integrate, nfe=lambda n: n, min_nfe=2, bind=bind_run_solver,
                      description=f"BA-solver, {what}: a fitted SideNet fills Gauss-Lobatto nodes; N intervals cost "
                                  f"N NFE + {calls} SideNet calls",
                      options={"sidenet": source} if source else {})


def registered_specs() -> list:
    return [ba_spec(None, single) for single in NAMES.values()]


# ---- the fitted SideNet of a run -------------------------------------------------------------------------
def read_solver_record(solver_dir: Path) -> dict:
    f = Path(solver_dir) / "solver.json"
    try:
        return json.loads(f.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{solver_dir.parent} has no fitted SideNet ({f} is missing): run "
                          f"`progflow fit-solver {solver_dir.parent}` first") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise ConfigError(f"{f} is corrupt (not JSON)") from None


def load_sidenet(solver_dir: Path, backbone: torch.nn.Module, ema: bool = True):
    """``(sidenet, record)`` from ``solver_dir`` (default ``RUN/solver``), EMA weights,
    refusing a SideNet fitted to other backbone weights."""
    from progflow import checkpoint as ckpt
    from progflow.nn.sidenet import SideNetConfig, build_sidenet

    solver_dir = Path(solver_dir)
    record = read_solver_record(solver_dir)
    have = weights_hash(backbone)
    if record.get("backbone_hash") != have:
        raise ConfigError(f"the SideNet in {solver_dir} was fitted to other backbone weights (hash "
                          f"{str(record.get('backbone_hash'))[:12]}, these are {have[:12]}); fit it again with "
                          f"`progflow fit-solver {solver_dir.parent}`")
    found = ckpt.list_checkpoints(solver_dir / "ckpt")
    if not found:
        raise ConfigError(f"{solver_dir} has no SideNet checkpoint: run `progflow fit-solver {solver_dir.parent}`")
    # the fit's config says the SideNet's size; only that part is read (the fitting settings
    # belong to progflow.fit_solver, which sits above the solvers)
    try:
        size = SideNetConfig(**json.loads((solver_dir / "config.json").read_text())["sidenet"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{solver_dir / 'config.json'} is not a fit-solver config ({e})") from None
    part = "ema" if ema else "model"
    tensors, _ = ckpt.load_checkpoint(found[-1], parts=(part,))
    net = build_sidenet([tuple(s) for s in record["stage_shapes"]], record["num_classes"], size)
    ckpt.load_state_dict_checked(net, tensors[part], found[-1] / f"{part}.safetensors")
    p = next(backbone.parameters())
    return net.to(device=p.device).eval(), record


def bind_run_solver(spec, run_dir: Path, backbone: torch.nn.Module, solver_dir: Path | None = None):
    """The spec ``spec`` (ba or ba1) bound to the SideNet fitted to ``run_dir``'s backbone."""
    solver_dir = Path(solver_dir) if solver_dir else Path(run_dir) / SOLVER_DIR
    net, record = load_sidenet(solver_dir, backbone)
    return ba_spec(Side(net, record["num_classes"]), NAMES[spec.name], source=str(solver_dir))
