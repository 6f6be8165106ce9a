"""Fitting the BA-solver's SideNet on a frozen run: ``progflow fit-solver RUN [--steps N]``.

The backbone (EMA weights) is frozen; the SideNet learns to predict the backbone's velocity
at ``t + h`` from ``(x_t, v_t, t, h, y)`` by chained on-policy rollouts (methods.md section 4).
One optimizer step, for a batch whose data only pick the start points:

1. take the phases of the run's own sampler (:func:`progflow.solvers.phases.record_phases`:
   one for base runs, one per stage phase for DFM), draw a phase in proportion to its number
   of intervals and, per sample, a point uniformly over its grid rows: per-stage times ``t``;
2. start at ``x_t`` on the path of a training image (stages not yet started are zero),
   with labels dropped to the null class with probability ``label_dropout``;
3. a chain of ``chain`` links, each: a signed offset ``h`` (towards data or noise with
   probability 1/2, size from an exponential of mean ``offset_scale`` truncated at
   ``offset_max``, measured in the time of the phase's leading stage, kept inside the phase:
   the sign flips when it would leave it, then it is clipped); the SideNet gives velocities
   at ``a h, (1 - a) h, h`` (with gradient); the chain moves with their Gauss-Lobatto
   quadrature (no gradient); the backbone velocity at the reached point is the target of
   the ``h`` output and the next link's anchor (on-policy: the chain continues from where
   the SideNet took it);
4. loss: mean over links of the summed per-stage mean squared error.

Everything random in step ``k`` comes from ``(seed, k)``; the optimisation, EMA, logging,
checkpoints and exact resume are :func:`progflow.train.training_loop`, the loop
``progflow train`` uses. Output in ``RUN/solver/`` (or ``out``): ``config.json`` (this
:class:`FitConfig`), ``solver.json`` (hash of the backbone weights fitted to, sizes, fit
time), ``log.jsonl``, ``ckpt/step_*/``.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from progflow import checkpoint as ckpt
from progflow.checkpoint import weights_hash
from progflow.checks import MAX_NFE, check_count, check_out_dir, check_run_dir
from progflow.config import SavedConfig, _check_positive, check_fields, parse_override
from progflow.data import to_model_range
from progflow.errors import CheckpointError, ConfigError
from progflow.latent import load_run_data
from progflow.methods import build_method
from progflow.methods.base import drop_labels
from progflow.nn.dit import count_parameters
from progflow.nn.sidenet import SideNetConfig, build_sidenet
from progflow.paths import expand_time
from progflow.rng import BatchRandom, derive_seed
from progflow.runlock import run_lock
from progflow.solvers.ba import ALPHA, SOLVER_DIR, WEIGHTS
from progflow.solvers.phases import Phase, path_state, record_phases, to_state
from progflow.train import BatchOrder, check_resumable, resume_point, training_loop

FIT_STREAM = 11  # random stream of solver fitting, apart from the backbone's training draws


@dataclass(frozen=True)
class FitConfig(SavedConfig):
    """Settings of ``progflow fit-solver`` (flags mirror the top-level fields; the SideNet's
    size via ``--set sidenet.width=16``)."""

    sidenet: SideNetConfig = field(default_factory=SideNetConfig)
    steps: int = 200
    batch_size: int = 32
    chain: int = 8  # links per chain (K)
    offset_scale: float = 0.05  # mean of the exponential the offset sizes come from
    offset_max: float = 0.5  # truncation of the offset sizes
    nfe: int = 0  # grid whose rows pick start points (0: the run's method.nfe)
    label_dropout: float = 0.1
    lr: float = 3e-3
    warmup: int = 20
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    ema_decay: float = 0.99
    seed: int = 0
    device: str = "cpu"
    log_every: int = 10
    ckpt_every: int = 50
    keep_last: int = 2

    RESUMABLE_CHANGES = ("steps", "log_every", "ckpt_every", "keep_last", "device")

    def __post_init__(self):
        check_fields(self)
        _check_positive(self, "steps", "batch_size", "chain", "offset_scale", "offset_max", "lr", "log_every",
                        "ckpt_every", "keep_last")
        _check_positive(self, "nfe", "warmup", "weight_decay", "grad_clip", "seed", allow_zero=True)
        check_count(self.nfe, "nfe", minimum=0, maximum=MAX_NFE)
        if not 0.0 <= self.label_dropout < 1.0:
            raise ConfigError(f"label_dropout must be in [0, 1); got {self.label_dropout}")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError(f"ema_decay must be in [0, 1); got {self.ema_decay}")
        if self.offset_max > 1.0:
            raise ConfigError(f"offset_max must be at most 1 (the whole time axis); got {self.offset_max}")

    @classmethod
    def from_dict(cls, d: dict) -> "FitConfig":
        if not isinstance(d, dict):
            raise ConfigError("a solver-fit config must be a mapping")
        d = dict(d)
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ConfigError(f"unknown solver-fit field(s): {', '.join(sorted(unknown))}")
        side = d.pop("sidenet", {}) or {}
        side_names = {f.name for f in dataclasses.fields(SideNetConfig)}
        if not isinstance(side, dict) or set(side) - side_names:
            raise ConfigError(f"unknown sidenet field(s): {', '.join(sorted(set(side) - side_names))}")
        for k, v in d.items():
            if isinstance(v, int) and not isinstance(v, bool) and isinstance(getattr(cls, k, None), float):
                d[k] = float(v)
        try:
            return cls(sidenet=SideNetConfig(**side), **d)
        except TypeError as e:
            raise ConfigError(f"invalid solver-fit config: {e}") from None

    def with_overrides(self, overrides: dict) -> "FitConfig":
        d = self.to_dict()
        for key, value in overrides.items():
            node, leaf = d, key
            if "." in key:
                section, leaf = key.split(".", 1)
                if section != "sidenet":
                    raise ConfigError(f"unknown solver-fit field {key!r}")
                node = d["sidenet"]
            if leaf not in node:
                raise ConfigError(f"unknown solver-fit field {key!r}")
            node[leaf] = value
        return FitConfig.from_dict(d)


def sidenet_for(fit: FitConfig, stage_shapes, num_classes: int):
    return build_sidenet([tuple(s) for s in stage_shapes], num_classes, fit.sidenet)


def state_shapes(phases: list[Phase]) -> list[list[int]]:
    """Per-stage sample shapes of the solver state; ConfigError when phases differ (a
    method whose state changes shape between phases, e.g. scale by scale, is not covered)."""
    shapes = [[list(s.shape[1:]) for s in ([p.x] if isinstance(p.x, torch.Tensor) else p.x)] for p in phases]
    if any(s != shapes[0] for s in shapes):
        raise ConfigError("the BA-solver's SideNet needs one state layout for all sampling phases; this method "
                          "changes it between phases")
    return shapes[0]


# ---- the objective ---------------------------------------------------------------------------------
def _rows_at(phase: Phase, tau_B: torch.Tensor) -> torch.Tensor:
    """Per-sample grid rows ``(B, S)`` at lead-stage times ``tau``, linear between rows."""
    g = phase.columns()
    lead = g[:, phase.lead()]
    sign = 1.0 if lead[-1] >= lead[0] else -1.0
    key = (lead * sign).contiguous()
    tau = (tau_B.double() * sign).clamp(float(key[0]), float(key[-1]))
    hi = torch.searchsorted(key, tau).clamp(1, g.shape[0] - 1)
    lo = hi - 1
    span = (key[hi] - key[lo])
    w = torch.where(span > 0, (tau - key[lo]) / torch.where(span > 0, span, torch.ones_like(span)),
                    torch.zeros_like(tau))
    return g[lo] + w[:, None] * (g[hi] - g[lo])


def _time_arg(phase: Phase, t_BS: torch.Tensor) -> torch.Tensor:
    """Per-sample times in the form the phase's velocity takes: ``(B,)`` or ``(B, S)``."""
    return t_BS[:, 0] if not phase.staged else t_BS


def _quadrature(x, h_BS: torch.Tensor, vs: list):
    """``x + h (w_0 v_0 + ... + w_3 v_3)`` with a per-sample, per-stage ``h``."""
    if isinstance(x, torch.Tensor):
        return x + expand_time(h_BS[:, 0], x) * sum(w * v for w, v in zip(WEIGHTS, vs))
    return [xs + expand_time(h_BS[:, s], xs) * sum(w * v[s] for w, v in zip(WEIGHTS, vs))
            for s, xs in enumerate(x)]


def _sq_error(a, b) -> torch.Tensor:
    pairs = [(a, b)] if isinstance(a, torch.Tensor) else list(zip(a, b))
    return sum((p.float() - q.float()).pow(2).mean() for p, q in pairs)


def draw_offsets(rng: BatchRandom, tau: torch.Tensor, lo: float, hi: float, scale: float, cap: float) -> torch.Tensor:
    """Signed offsets of lead-stage time: sign +-1 with probability 1/2, size ~ exponential
    of mean ``scale`` truncated at ``cap`` (inverse CDF); the sign flips when the offset
    would leave ``[lo, hi]``, then the end point is clipped to it."""
    u, s = rng.rand().double(), rng.rand().double()
    size = -scale * torch.log1p(-u * (1.0 - torch.exp(torch.tensor(-cap / scale, dtype=torch.float64))))
    sign = torch.where(s < 0.5, -1.0, 1.0).double()
    out = (tau + sign * size > hi) | (tau + sign * size < lo)
    sign = torch.where(out, -sign, sign)
    return (tau + sign * size).clamp(lo, hi) - tau


class ChainObjective:
    """``objective(step) -> (loss, stats)`` for :func:`progflow.train.training_loop`."""

    def __init__(self, fit: FitConfig, cfg, method, backbone, sidenet, data):
        self.fit, self.cfg, self.method, self.backbone, self.net = fit, cfg, method, backbone, sidenet
        self.images, self.labels = data.images, data.labels
        self.order = BatchOrder(len(data), fit.batch_size, fit.seed)
        self.seed = derive_seed(fit.seed, FIT_STREAM)
        self.nfe = fit.nfe or None
        self.num_classes = cfg.data.num_classes

    def __call__(self, step: int):
        fit = self.fit
        B = fit.batch_size
        idx = self.order.indices(step)
        rng = BatchRandom(self.seed, step, B, slice(None), device=fit.device)
        x1 = to_model_range(self.images[idx]).to(fit.device)
        y = drop_labels(self.labels[idx].to(fit.device), fit.label_dropout, self.num_classes, rng.rand())
        phases = record_phases(self.method, self.backbone, y, nfe=self.nfe, cfg_scale=1.0)
        weights = [float(p.intervals) for p in phases]
        phase = phases[rng.categorical_shared([w / sum(weights) for w in weights])]
        g = phase.columns()
        lead = phase.lead()
        lo, hi = sorted((float(g[0, lead]), float(g[-1, lead])))
        rows = rng.rand().double() * phase.intervals
        t = _rows_at_fraction(phase, rows)
        tau = t[:, lead]
        x0 = [rng.randn(*s.shape[1:]) for s in ([phase.x] if not phase.staged else phase.x)]
        x = path_state(phase, to_state(self.method, x1), x0[0] if not phase.staged else x0, t.float())
        with torch.no_grad():
            v = phase.velocity(x, _time_arg(phase, t))
        loss = 0.0
        for _ in range(fit.chain):
            h_tau = draw_offsets(rng, tau, lo, hi, fit.offset_scale, fit.offset_max)
            t_next = _rows_at(phase, tau + h_tau)
            h = (t_next - t).float()
            node_a, node_b, node_1 = self.net(x, v, t.float(), [ALPHA * h, (1 - ALPHA) * h, h], y)
            with torch.no_grad():
                x = _quadrature(x, h, [v, _detach(node_a), _detach(node_b), _detach(node_1)])
                v_next = phase.velocity(x, _time_arg(phase, t_next))
            loss = loss + _sq_error(node_1, v_next)
            v, t, tau = v_next, t_next, tau + h_tau
        return loss / fit.chain, {}


@torch.no_grad()
def heldout_error(fit: FitConfig, cfg, method, backbone, net, data, batches: int = 4, seed: int = 12345) -> float:
    """The fitting loss of ``net`` on chains it was not fitted on: ``data`` (e.g. the test
    split) and a seed of their own pick start points and offsets; no label dropout."""
    fit = dataclasses.replace(fit, seed=seed, label_dropout=0.0)
    objective = ChainObjective(fit, cfg, method, backbone, net, data)
    return sum(float(objective(k)[0]) for k in range(batches)) / batches


def _rows_at_fraction(phase: Phase, rows: torch.Tensor) -> torch.Tensor:
    """Per-sample grid rows ``(B, S)`` at fractional row indices ``rows``."""
    g = phase.columns()
    lo = rows.floor().long().clamp(0, g.shape[0] - 2)
    w = (rows - lo.double()).clamp(0.0, 1.0)
    return g[lo] + w[:, None] * (g[lo + 1] - g[lo])


def _detach(state):
    return state.detach() if isinstance(state, torch.Tensor) else [s.detach() for s in state]


# ---- the command -----------------------------------------------------------------------------------
def check_resume(saved: FitConfig, wanted: FitConfig, solver_dir: Path) -> FitConfig:
    a, b = saved.to_dict(), wanted.to_dict()
    diffs = [k for k in a if k not in FitConfig.RESUMABLE_CHANGES and a[k] != b[k]]
    if diffs:
        raise CheckpointError(f"--resume: settings do not match the fit in {solver_dir} (differ in {', '.join(diffs)})")
    return dataclasses.replace(saved, **{k: getattr(wanted, k) for k in FitConfig.RESUMABLE_CHANGES})


def fit_solver(run_dir: str | Path, fit: FitConfig | None = None, *, out: str | Path | None = None,
               resume: bool = False, progress: bool = True) -> Path:
    """Fit a SideNet to the EMA backbone of ``run_dir`` into ``out`` (default ``RUN/solver``);
    returns the last checkpoint folder. Holds the writer lock of the run (of ``out`` when it
    lies outside the run) throughout."""
    run_dir = Path(run_dir)
    out = Path(out) if out else run_dir / SOLVER_DIR
    check_run_dir(run_dir)
    check_out_dir(out)
    inside = os.path.realpath(out).startswith(os.path.realpath(run_dir) + os.sep)
    with run_lock(run_dir if inside else out):
        return _fit_solver(run_dir, fit, out=out, resume=resume, progress=progress)


def _fit_solver(run_dir: Path, fit: FitConfig | None, *, out: Path, resume: bool, progress: bool) -> Path:
    from progflow.sampling import load_run

    fit = fit or FitConfig()
    cfg, backbone, backbone_ckpt = load_run(run_dir, device=fit.device)
    backbone.requires_grad_(False)
    ckpt_root = out / "ckpt"
    existing, tensors, state_in = resume_point(ckpt_root, resume, out)
    backbone_hash = weights_hash(backbone)
    record_path = out / "solver.json"
    prior_wall = 0.0
    if state_in is not None:
        try:
            saved = FitConfig.from_dict(json.loads((out / "config.json").read_text()))
            record = json.loads(record_path.read_text())
        except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(f"{out} is not a complete solver fit (config.json or solver.json missing)") from None
        fit = check_resume(saved, fit, out)
        if record.get("backbone_hash") != backbone_hash:
            raise CheckpointError(f"--resume: the fit in {out} was made for other backbone weights than "
                                  f"{backbone_ckpt}'s")
        prior_wall = float(record.get("fit_wall_s", 0.0))
    if cfg.data.frames:
        raise ConfigError("the BA-solver's SideNet is built for image runs; this run is a video run")
    data, _ = load_run_data(cfg, "train")
    method = build_method(cfg)
    phases = record_phases(method, backbone, torch.zeros(1, dtype=torch.long, device=fit.device), nfe=fit.nfe or None)
    shapes = state_shapes(phases)
    torch.manual_seed(derive_seed(fit.seed, 0))
    net = sidenet_for(fit, shapes, cfg.data.num_classes).to(fit.device)
    if state_in is not None:  # the whole saved state, before anything is written
        check_resumable(net, fit, (tensors, state_in), existing[-1], out / "log.jsonl")
    record = {"run": str(run_dir), "backbone_checkpoint": str(backbone_ckpt), "backbone_hash": backbone_hash,
              "stage_shapes": shapes, "num_classes": cfg.data.num_classes, "sidenet_params": count_parameters(net),
              "backbone_params": count_parameters(backbone),
              "param_share": count_parameters(net) / count_parameters(backbone), "fit_wall_s": prior_wall,
              "steps_done": state_in["step"] if state_in else 0}
    out.mkdir(parents=True, exist_ok=True)
    ckpt.atomic_write_text(out / "config.json", fit.to_json())
    ckpt.atomic_write_text(record_path, json.dumps(record, indent=2))

    objective = ChainObjective(fit, cfg, method, backbone, net, data)
    t0 = time.perf_counter()
    last = training_loop(fit, net, objective, ckpt_root=ckpt_root, log_path=out / "log.jsonl",
                         resumed=(tensors, state_in), last_saved=existing[-1] if existing else None,
                         extra_state=lambda step: {"fit_config": fit.to_dict(), "backbone_hash": backbone_hash},
                         progress=progress, desc="fit-solver")
    record.update(fit_wall_s=prior_wall + time.perf_counter() - t0, steps_done=ckpt.read_state(last)["step"])
    ckpt.atomic_write_text(record_path, json.dumps(record, indent=2))
    return last


def sidenet_info(cfg, run_dir: str | Path | None = None) -> dict:
    """Size of the SideNet fitted to ``run_dir`` (``RUN/solver``) or, without one, of the
    SideNet ``fit-solver`` would build with the default settings, against the backbone."""
    from progflow.nn.dit import build_model

    record = Path(run_dir) / SOLVER_DIR / "solver.json" if run_dir else None
    if record is not None and record.exists():
        try:
            rec = json.loads(record.read_text())
            fit = FitConfig.from_dict(json.loads((record.parent / "config.json").read_text()))
            return {"fitted": True, "width": fit.sidenet.width, "params": rec["sidenet_params"],
                    "share_of_backbone": rec["param_share"], "backbone_hash": rec["backbone_hash"],
                    "fit_wall_s": rec.get("fit_wall_s"), "steps": rec.get("steps_done")}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):  # JSONDecodeError is a ValueError
            raise CheckpointError(f"{record.parent} holds a corrupt solver fit (solver.json or config.json)") from None
    backbone = build_model(cfg)
    phases = record_phases(build_method(cfg), backbone, torch.zeros(1, dtype=torch.long))
    fit = FitConfig()
    net = sidenet_for(fit, state_shapes(phases), cfg.data.num_classes)
    return {"fitted": False, "width": fit.sidenet.width, "params": count_parameters(net),
            "share_of_backbone": count_parameters(net) / count_parameters(backbone)}


def fit_config_from_args(args) -> FitConfig:
    """A :class:`FitConfig` from ``--steps``-style flags and ``--set sidenet.width=16``."""
    fit = FitConfig()
    overrides = dict(parse_override(s) for s in getattr(args, "set", None) or [])
    for f in dataclasses.fields(FitConfig):
        v = getattr(args, f.name, None)
        if v is not None and f.name != "sidenet":
            overrides[f.name] = v
    return fit.with_overrides(overrides) if overrides else fit


__all__ = ["ChainObjective", "FitConfig", "fit_config_from_args", "fit_solver", "heldout_error", "sidenet_for",
           "sidenet_info"]
