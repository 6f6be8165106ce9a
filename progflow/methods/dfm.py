"""Decomposable Flow Matching (methods.md section 2).

A sample ``x1`` is split by a decomposition into ``S`` stages ``x1_s`` (coarse to fine,
a Laplacian pyramid by default, optionally standardised per stage). Every stage has its
own path ``x_{t_s} = t_s x1_s + (1 - t_s) x0_s`` and velocity target ``x1_s - x0_s``.

Training, per sample (or per batch with ``per_sample_stage=False``):

* active stage ``Q ~ stage_probs`` (default ``[0.9, 0.1]`` for 2 stages; for ``S``
  stages ``0.1`` for each later stage and the rest, ``1 - 0.1 (S - 1)``, for stage 1,
  uniform when ``S > 9``);
* ``t_Q ~ logit-normal(t_loc, t_scale)`` (or uniform), earlier stages
  ``t_s ~ logit-normal(earlier_loc, earlier_scale)`` (closer to data), later stages
  ``t_s = 0`` with their input zeroed and their loss masked (no loss, no gradient);
  with ``tied_times`` every active stage uses ``t_Q`` (the paper's ablation);
* ``loss = mean_b sum_{s <= Q_b} mean ||v_s - (x1_s - x0_s)||^2``.

Sampling: Euler on the multi-stage grid :func:`progflow.schedules.dfm_schedule`
(default ``stage_steps`` = ``method.nfe`` split ``3 : 1 : ... : 1``, i.e. ``(30, 10)``
for 2 stages; default thresholds ``0.7``). Stage ``j`` starts from fresh noise when its
phase begins; until then it is fed zeros with ``t = 0``. CFG acts on all stages, its
interval judged on the latest-entered stage's time.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

from progflow.decompose import Standardized, build_decomposition, estimate_stage_std, sample_stage_shapes
from progflow.config import MethodConfig
from progflow.errors import ConfigError
from progflow.guidance import CFG, GuidedVelocity
from progflow.methods.base import SampleResult, drop_labels, sampling_settings
from progflow.paths import expand_time, interpolate, logit_normal_from_normal, velocity_target
from progflow.presets import PRESETS, register_preset
from progflow.registry import register_method
from progflow.schedules import dfm_schedule, phase_intervals, segment_grid, split_steps, time_grid
from progflow.solvers import get_solver

STD_SUBSET = 512  # samples used to estimate per-stage scales
Decomposition = Literal["laplacian", "haar", "identity"]


@dataclass(frozen=True)
class DFMConfig(MethodConfig):
    """``method.name = "dfm"``: the common method fields plus DFM's own."""

    name: str = "dfm"
    decomposition: Decomposition = "laplacian"
    stages: int = 1
    stage_probs: tuple[float, ...] = ()
    earlier_loc: float = 1.5
    earlier_scale: float = 1.0
    per_sample_stage: bool = True
    tied_times: bool = False
    standardize: bool = False
    stage_std: tuple[float, ...] = ()  # estimated once from data when standardize is on
    thresholds: tuple[float, ...] = ()  # one per stage after the first
    stage_steps: tuple[int, ...] = ()  # steps per sampling phase, e.g. (30, 10)

    def __post_init__(self):
        super().__post_init__()
        if self.decomposition not in ("laplacian", "haar", "identity"):
            raise ConfigError(f"method.decomposition must be one of laplacian, haar, identity; "
                              f"got {self.decomposition!r}")
        if not isinstance(self.stages, int) or isinstance(self.stages, bool) or self.stages < 1:
            raise ConfigError(f"method.stages must be a positive integer; got {self.stages!r}")
        if self.stage_probs:
            if len(self.stage_probs) != self.stages:
                raise ConfigError(f"method.stage_probs has {len(self.stage_probs)} entries for {self.stages} stages")
            if any(p < 0 for p in self.stage_probs) or not math.isclose(sum(self.stage_probs), 1.0, abs_tol=1e-6):
                raise ConfigError(f"method.stage_probs must be non-negative and sum to 1; got {list(self.stage_probs)}")


def default_stage_probs(stages: int) -> tuple[float, ...]:
    """``[1 - 0.1 (S-1), 0.1, ..., 0.1]`` (``[0.9, 0.1]`` for 2 stages); uniform for ``S > 9``."""
    if stages > 9:
        return (1.0 / stages,) * stages
    return (round(1.0 - 0.1 * (stages - 1), 10),) + (0.1,) * (stages - 1)


def default_thresholds(stages: int) -> tuple[float, ...]:
    return (0.7,) * (stages - 1)


def default_stage_steps(stages: int, nfe: int) -> tuple[int, ...]:
    """``nfe`` steps split ``3 : 1 : ... : 1`` over the phases (``(30, 10)`` for 40 and 2 stages)."""
    return split_steps(nfe, (3,) + (1,) * (stages - 1))


class _AtStage:
    """The backbone with its active-stage argument fixed, in the ``(x, t, y)`` form CFG calls."""

    def __init__(self, model, stage: int):
        self.model, self.stage, self.num_classes = model, stage, model.num_classes

    def __call__(self, x, t_BS, y_B):
        return self.model(x, t_BS, y_B, torch.full_like(y_B, self.stage))


class DecomposableFlowMatching:
    def __init__(self, cfg):
        self.cfg = cfg
        self.mc = mc = cfg.method
        self.S = mc.stages
        self.shape = cfg.data.shape
        self.num_classes = cfg.data.num_classes
        self.base_decomposition = build_decomposition(mc.decomposition, self.S)
        self.stage_shapes = sample_stage_shapes(self.base_decomposition, self.shape)
        self.probs = mc.stage_probs or default_stage_probs(self.S)
        self.thresholds = mc.thresholds or default_thresholds(self.S)
        self.stage_steps = mc.stage_steps or default_stage_steps(self.S, mc.nfe)

    # ---- configuration ------------------------------------------------------------------
    @staticmethod
    def validate(cfg) -> None:
        """Checks beyond field ranges; fills ``model.stage_patches`` when empty (the derived
        default, like ModelConfig fills width/depth/heads), so saved configs are explicit."""
        from progflow.nn.dfm import stage_layout

        mc, model, data = cfg.method, cfg.model, cfg.data
        S = mc.stages
        if model.arch != "dfm":
            raise ConfigError(f"method 'dfm' needs model.arch 'dfm', got {model.arch!r}")
        if mc.decomposition == "identity" and S != 1:
            raise ConfigError(f"the identity decomposition has 1 stage; method.stages is {S}")
        if mc.stage_probs and len(mc.stage_probs) != S:
            raise ConfigError(f"method.stage_probs has {len(mc.stage_probs)} entries for {S} stages")
        if mc.thresholds:
            if len(mc.thresholds) != S - 1:
                raise ConfigError(f"method.thresholds needs {S - 1} entries (one per stage after the first); "
                                  f"got {list(mc.thresholds)}")
            if any(not 0.0 < t < 1.0 for t in mc.thresholds):
                raise ConfigError(f"method.thresholds must lie in (0, 1); got {list(mc.thresholds)}")
        if mc.stage_steps:
            if len(mc.stage_steps) != S or any(not isinstance(n, int) or n < 1 for n in mc.stage_steps):
                raise ConfigError(f"method.stage_steps needs {S} positive integers; got {list(mc.stage_steps)}")
            if sum(mc.stage_steps) != mc.nfe:
                raise ConfigError(f"method.stage_steps sums to {sum(mc.stage_steps)} but method.nfe is {mc.nfe}; "
                                  "set both")
        elif mc.nfe < S:
            raise ConfigError(f"method.nfe {mc.nfe} cannot cover {S} sampling phases")
        if mc.stage_std and (len(mc.stage_std) != S or any(not s > 0 for s in mc.stage_std)):
            raise ConfigError(f"method.stage_std needs {S} positive entries; got {list(mc.stage_std)}")
        if data.image_size % 2 ** (S - 1):
            raise ConfigError(f"data.image_size {data.image_size} is not divisible by 2**{S - 1} "
                              f"= {2 ** (S - 1)} for {S} stages")
        _, patches, _ = stage_layout(data, model, build_decomposition(mc.decomposition, S))
        if not model.stage_patches:
            spatial = tuple(p[-1] for p in patches)
            object.__setattr__(cfg, "model", dataclasses.replace(model, stage_patches=spatial))

    @staticmethod
    def prepare(cfg, data):
        """With ``standardize`` on and no ``stage_std`` yet, estimate every stage's std from
        an evenly spaced subset of ``data.images`` (``u8 / 127.5 - 1``)."""
        mc = cfg.method
        if not mc.standardize or mc.stage_std:
            return cfg
        n = len(data.images)
        idx = torch.linspace(0, n - 1, min(n, STD_SUBSET)).round().long()
        x = data.images[idx].float() / 127.5 - 1.0
        std = estimate_stage_std(build_decomposition(mc.decomposition, mc.stages), x)
        return dataclasses.replace(cfg, method=dataclasses.replace(mc, stage_std=std))

    @property
    def decomposition(self):
        if not self.mc.standardize:
            return self.base_decomposition
        if not self.mc.stage_std:
            raise ConfigError("method.standardize is on but method.stage_std is empty: run prepare(cfg, data) first")
        return Standardized(self.base_decomposition, self.mc.stage_std)

    # ---- training -----------------------------------------------------------------------
    def draw_stage(self, rng, batch: int, device) -> torch.Tensor:
        if self.mc.per_sample_stage:
            return rng.categorical(self.probs).to(device)
        return torch.full((batch,), rng.categorical_shared(self.probs), dtype=torch.long, device=device)

    def draw_times(self, rng, q_B: torch.Tensor) -> torch.Tensor:
        """Per-stage times ``(B, S)``: ``t_Q`` main sampler, earlier stages logit-normal
        ``(earlier_loc, earlier_scale)``, later stages 0; tied: all active stages ``t_Q``."""
        mc, S = self.mc, self.S
        if mc.time_sampler == "uniform":
            main = rng.rand(S)
        else:
            main = logit_normal_from_normal(rng.randn(S), mc.t_loc, mc.t_scale)
        early = logit_normal_from_normal(rng.randn(S), mc.earlier_loc, mc.earlier_scale)
        idx = torch.arange(S, device=q_B.device)[None, :]
        q = q_B[:, None]
        if mc.tied_times:
            early = main.gather(1, q).expand(-1, S)
        t = torch.where(idx == q, main, early)
        return torch.where(idx > q, torch.zeros_like(t), t)

    def loss(self, model, x1: torch.Tensor, y: torch.Tensor, rng):
        return self.stage_loss(model, self.decomposition.split(x1), y, rng)

    def stage_loss(self, model, x1_stages, y: torch.Tensor, rng):
        """The DFM loss on already decomposed data ``x1_stages`` (list of ``(B, *stage_shape)``)."""
        dtype, device, B = x1_stages[0].dtype, x1_stages[0].device, x1_stages[0].shape[0]
        q_B = self.draw_stage(rng, B, device)
        t_BS = self.draw_times(rng, q_B).to(dtype)
        active_BS = torch.arange(self.S, device=device)[None, :] <= q_B[:, None]
        x0 = [rng.randn(*shape).to(dtype) for shape in self.stage_shapes]
        y = drop_labels(y, self.mc.label_dropout, self.num_classes, rng.rand())
        masks = [expand_time(active_BS[:, s], x1s).bool() for s, x1s in enumerate(x1_stages)]
        x_in = [torch.where(m, interpolate(x1s, x0s, t_BS[:, s]), torch.zeros_like(x1s))
                for s, (m, x1s, x0s) in enumerate(zip(masks, x1_stages, x0))]
        v = model(x_in, t_BS, y, q_B)
        # mask the error itself, so non-finite values in inactive stages cannot leak into grads
        per_BS = torch.stack([
            torch.where(m, vs.float() - velocity_target(x1s, x0s).float(), torch.zeros((), device=device))
            .pow(2).flatten(1).mean(1)
            for m, vs, x1s, x0s in zip(masks, v, x1_stages, x0)
        ], dim=1)
        loss = per_BS.sum(1).mean()
        count = active_BS.sum(0)
        stats = {}
        for s in range(self.S):
            stats[f"loss_stage{s + 1}"] = float(per_BS[:, s].detach().sum() / count[s].clamp(min=1))
            stats[f"frac_stage{s + 1}"] = float((q_B == s).float().mean())
        return loss, stats

    # ---- sampling -----------------------------------------------------------------------
    def phase_steps(self, nfe: int | None = None, solver=None) -> tuple[int, ...]:
        """Grid intervals per phase for ``nfe`` NFE of ``solver`` (default: the run's).

        ``stage_steps`` are Euler steps, one NFE each. The solver integrates every phase
        separately (a new stage enters from fresh noise between phases), so ``n`` intervals
        of a phase cost ``spec.nfe(n)`` (Heun ``2n - 1``, RK4 ``4n``). The phases get the
        smallest total ``N`` of intervals, split over them in proportion to ``stage_steps``,
        whose total cost is exactly ``nfe``; ConfigError listing the totals the solver can
        spend otherwise. An adaptive solver gets one interval per phase.
        """
        steps = tuple(self.stage_steps)
        return phase_intervals(get_solver(solver or self.mc.solver), sum(steps) if nfe is None else nfe, steps,
                               f"DFM's {self.S} sampling phases")

    @torch.no_grad()
    def sample(self, model, y: torch.Tensor, *, generator: torch.Generator, nfe: int | None = None,
               cfg_scale: float | None = None, cfg_interval=None, previews: bool = False,
               solver: str | None = None, shift: float | None = None) -> SampleResult:
        """``solver`` over :func:`dfm_schedule`, one solve per phase (:meth:`phase_steps`
        says how ``nfe`` becomes intervals); returns the merged (un-standardised) samples
        and, with ``previews``, one full-size recomposition at the end of every phase
        (coarse to fine): the data estimates ``x_s + (1 - t_s) v_s`` of the started stages,
        later stages zero. The last preview is the final sample.

        The schedule is the method's: every phase is a straight segment in stage-time
        space between two of its rows. ``shift`` only moves the grid rows along each
        segment, spaced like :func:`~progflow.schedules.time_grid` (denser where the phase's
        new stage is noisiest for ``shift > 1``); phase boundaries and thresholds stay put."""
        spec, shift, scale, interval = sampling_settings(self.mc, solver=solver, shift=shift, cfg_scale=cfg_scale,
                                                         cfg_interval=cfg_interval)
        steps = self.phase_steps(nfe, spec)
        grid = dfm_schedule(steps, self.thresholds)
        time_grid(1, shift)  # checks the shift before any work
        decomp, B, device = self.decomposition, y.shape[0], y.device
        x = [torch.zeros(B, *shape, device=device) for shape in self.stage_shapes]
        shown, last_v, start, used = [], [], 0, 0
        for j in range(self.S):
            x[j] = torch.randn(B, *self.stage_shapes[j], generator=generator).to(device)
            velocity = self._phase_velocity(model, y, j, scale, interval,
                                            observe=lambda v: last_v.__setitem__(slice(None), v))
            end = start + steps[j]
            rows = grid[start:end + 1] if shift == 1.0 else segment_grid(grid[start], grid[end], steps[j], shift)
            x, spent = spec.integrate(velocity, x, rows)
            used += spent
            if previews:
                est = [xs + float(1 - grid[end, s]) * vs if s <= j else torch.zeros_like(xs)
                       for s, (xs, vs) in enumerate(zip(x, last_v))]
                shown.append(decomp.merge(est))
            start = end
        return SampleResult(x=decomp.merge(x), nfe=used, previews=shown)

    @staticmethod
    def _phase_velocity(model, y, j: int, scale, interval, observe=None) -> GuidedVelocity:
        """The guided velocity of phase ``j``: stage ``j`` is the latest entered, later stages
        have not started (zero in, zero out)."""
        def started(state):
            return [xs if s <= j else torch.zeros_like(xs) for s, xs in enumerate(state)]

        return GuidedVelocity(CFG(_AtStage(model, j), y, scale, interval), lead=j, prepare=started, finish=started,
                              observe=observe)

    # ---- stage diagnostics (the hooks of progflow.diagnose) -------------------------------
    @torch.no_grad()
    def stage_diagnostics(self, model, x1: torch.Tensor, y: torch.Tensor, *, generator: torch.Generator,
                          nfe: int | None = None, cfg_scale: float | None = None,
                          solver: str | None = None) -> dict[str, torch.Tensor]:
        """Full-size images (model range) that isolate the finest stage, from true data ``x1``:

        * ``oracle_clean``: the true coarser stages, held clean (``t = 1``), and the finest
          stage generated by the sampler's last phase (its steps, 0 -> 1);
        * ``oracle_noised``: the true coarser stages noised to where the sampler has them when
          the finest stage enters (``t = tau`` for 2 stages), then the last phase exactly as in
          :meth:`sample` (coarser stages ``tau -> 1``, finest ``0 -> 1``);
        * ``coarse_only``: the true coarser stages with no finest stage (zeros).

        Both oracles start from the same noise."""
        spec = get_solver(solver or self.mc.solver)
        steps = self.phase_steps(nfe, spec)
        rows = dfm_schedule(steps, self.thresholds)[sum(steps[:-1]):]
        scale = self.mc.cfg_scale if cfg_scale is None else cfg_scale
        last, decomp = self.S - 1, self.decomposition
        true = decomp.split(x1)
        noise = [torch.randn(x1.shape[0], *shape, generator=generator).to(x1.device) for shape in self.stage_shapes]
        velocity = self._phase_velocity(model, y, last, scale, self.mc.cfg_interval)
        clean_rows = rows.clone()
        clean_rows[:, :last] = 1.0  # zero steps: the true coarser stages stay as they are
        noised = [float(rows[0, s]) * true[s] + float(1 - rows[0, s]) * noise[s] for s in range(last)]
        out = {"coarse_only": decomp.merge([*true[:last], torch.zeros_like(true[last])])}
        out["oracle_clean"] = decomp.merge(spec.integrate(velocity, [*true[:last], noise[last]], clean_rows)[0])
        out["oracle_noised"] = decomp.merge(spec.integrate(velocity, [*noised, noise[last]], rows)[0])
        return out

    def training_share(self, steps: int, seed: int, batch_size: int) -> dict:
        """Replays the stage draws of training steps ``0 .. steps - 1`` (they come from
        ``(seed, step)``, :class:`~progflow.rng.BatchRandom`): per stage the share of samples
        in which it was the active stage and in which it got a loss (it and every later
        stage), and how many samples that was."""
        from progflow.rng import BatchRandom

        active = torch.zeros(self.S, dtype=torch.long)
        for step in range(steps):
            q = self.draw_stage(BatchRandom(seed, step, batch_size, slice(None)), batch_size, "cpu")
            active += torch.bincount(q, minlength=self.S)
        total = max(int(active.sum()), 1)
        trained = active.flip(0).cumsum(0).flip(0)  # stage s gets a loss whenever Q >= s
        return {"samples": total, "active_share": [int(a) / total for a in active],
                "loss_share": [int(t) / total for t in trained], "active_samples": active.tolist(),
                "configured": list(self.probs)}


# ---- presets: same width/depth/heads, token count and budget as the base twins ----------------
def _dfm_method(stages: int, **extra) -> dict:
    return {"name": "dfm", "stages": stages, "stage_probs": list(default_stage_probs(stages)),
            "thresholds": list(default_thresholds(stages)), "stage_steps": list(default_stage_steps(stages, 40)),
            "nfe": 40, **extra}


def _register_presets() -> None:
    video_data = {"dataset": "moving-fmnist", "image_size": 32, "channels": 1, "frames": 8}
    for size in ("xs", "s", "b"):
        base = PRESETS.get(f"fmnist-base-{size}")
        if base is None:
            continue
        for name, stages, patches in ((f"fmnist-dfm-{size}", 2, [2, 4]), (f"fmnist-dfm3-{size}", 3, [1, 2, 4])):
            preset = copy.deepcopy(base)
            preset["model"] = {**preset["model"], "arch": "dfm", "stage_patches": patches}
            preset["method"] = _dfm_method(stages)
            register_preset(name, preset)
        emoji = PRESETS.get(f"emoji-base-{size}")
        if emoji is not None:  # 32px stage with patch 2 (12 numbers a token), 64px stage with patch 4 (48)
            preset = copy.deepcopy(emoji)
            preset["model"] = {**preset["model"], "arch": "dfm", "stage_patches": [2, 4]}
            preset["method"] = _dfm_method(2)
            register_preset(f"emoji-dfm-{size}", preset)
            latent = copy.deepcopy(PRESETS[f"emoji-latent-base-{size}"])  # 8x8 stage with patch 1, 16x16 with 2
            latent["model"] = {**latent["model"], "arch": "dfm", "stage_patches": [1, 2]}
            latent["method"] = _dfm_method(2)
            register_preset(f"emoji-latent-dfm-{size}", latent)
        if size == "b":
            continue
        video = copy.deepcopy(base)
        video["data"] = dict(video_data)
        video["model"] = {**video["model"], "temporal_patch": 2}
        register_preset(f"mfmnist-base-{size}", video)
        vdfm = copy.deepcopy(video)
        vdfm["model"] = {**vdfm["model"], "arch": "dfm", "stage_patches": [2, 4]}
        vdfm["method"] = _dfm_method(2, standardize=True)  # per-stage standardisation on for video
        register_preset(f"mfmnist-dfm-{size}", vdfm)


register_method("dfm", DFMConfig, DecomposableFlowMatching)
_register_presets()
