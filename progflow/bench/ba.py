"""``progflow bench solvers --learned``: what the BA-solver needs measured beyond the rows
``bench solvers`` makes for it by name (endpoint error and FD of ``ba`` / ``ba1``).

Per run (the solver benchmark's ``base`` / ``dfm2`` arms, or ``--run DIR``):

* **fits**: one SideNet per offset scale of ``SCALES`` with the same budget
  (``--fit-steps``, batch 32, chain 8), into ``RUN/solver-sweep/scale<S>/``; the best one
  by endpoint error at 5 NFE is copied to ``RUN/solver/``, the SideNet ``--solver ba`` uses;
* **offset-scale sweep**: per scale, held-out fitting loss (test images, own seed, offsets
  of mean ``HELDOUT_SCALE`` for every scale) and
  endpoint RMS against the dopri5 reference of ``bench solvers`` (same noise) for
  ``ba`` and ``ba1`` at NFE 5 and 10, with the untrained SideNet (scale ``0``: the
  training-free counterparts, Heun with reused slopes and Euler) as the baseline;
* **fitting cost**: fitting wall time against the backbone's training time (summed from
  the images/s of its ``log.jsonl`` windows) and in backbone forward passes per image
  against training's (a forward + backward counted as 3 forwards);
* **SideNet time**: per interval (a predictor call for three offsets plus a corrector
  call) against one backbone call, batch ``BATCH``, guidance off and on, medians;
* **SideNet time at size s** (``timing_by_preset``): the same, untrained, for the ``s``
  presets, where the 2% parameter target is set;
* **round trip**: test images inverted to noise and generated back under their class with
  every solver that runs backwards, RMS against the input over NFE.

On the headline profile (the ``base-s`` arm) only the fit at ``HEADLINE_SCALES``, its sweep
row, the fitting cost and the timing are measured: no other scales, no exact ceiling, no round
trips (each of them costs about an hour at size s on this machine's cores).

Results: ``<out-dir>/solvers_learned.json``, cached per run in ``RUN/bench_solvers/learned.json``.
``progflow bench solvers --learned --solvers ba ba1`` does this part first, then measures
the ``ba`` / ``ba1`` rows with the chosen SideNet.
"""

from __future__ import annotations

import json
import shutil
import statistics
import time
from pathlib import Path

import torch

from progflow.bench.common import logged_train_seconds, result_header, write_result

SCALES = (0.02, 0.05, 0.1, 0.2)
HEADLINE_SCALES = (0.05,)  # the headline profile (size s): one fit, at the scale the base xs sweep chose
SWEEP_NFES = (5, 10)
TRIP_NFES = (4, 5, 8, 9, 12, 13, 20, 21)
BATCH = 256
HELDOUT_SCALE = 0.1
TIMING_PRESETS = ("fmnist-base-s", "fmnist-dfm-s")


def _settings(args) -> dict:
    tiny = args.tiny
    return {"scales": [0.05, 0.2] if tiny else list(SCALES), "fit_steps": args.fit_steps or (3 if tiny else 150),
            "fit_batch": 8 if tiny else 32, "chain": 2 if tiny else 8, "sweep_nfes": list(SWEEP_NFES),
            "trip_nfes": [4, 5] if tiny else list(TRIP_NFES), "n_trip": 8 if tiny else 256,
            "timing_batch": 8 if tiny else BATCH, "timing_reps": 2 if tiny else 7}


def _fit(run: Path, scale: float, s: dict, width: int) -> Path:
    from progflow.fit_solver import FitConfig, fit_solver

    out = run / "solver-sweep" / f"scale{scale:g}"
    fit = FitConfig(steps=s["fit_steps"], batch_size=s["fit_batch"], chain=s["chain"], offset_scale=scale,
                    ckpt_every=max(1, s["fit_steps"] // 3), log_every=10).with_overrides({"sidenet.width": width})
    done = (out / "solver.json").exists() and json.loads((out / "solver.json").read_text())["steps_done"] >= fit.steps
    if not done:
        print(f"  fitting offset scale {scale:g}: {fit.steps} steps", flush=True)
        fit_solver(run, fit, out=out, resume=(out / "ckpt").exists(), progress=False)
    return out


class _ExactSide(torch.nn.Module):
    """The ceiling of a SideNet: the velocity at ``t + h`` found by integrating the backbone
    itself from ``(x, t)`` (RK4, ``substeps`` steps). Costs backbone calls; diagnostic only."""

    def __init__(self, substeps: int = 2):
        super().__init__()
        self.substeps, self.velocity = substeps, None

    def forward(self, x, v, t_BS, hs, y):
        from progflow.solvers.ode import rk4

        t0 = t_BS[0].double()
        row = lambda r: r[0] if isinstance(x, torch.Tensor) else r
        out = []
        for h in hs:
            grid = torch.stack([row(t0 + h[0].double() * k / self.substeps) for k in range(self.substeps + 1)])
            end, _ = rk4(self.velocity, x, grid)
            out.append(self.velocity(end, grid[-1]))
        return out


def exact_ba_spec(single: bool = False):
    """``ba`` / ``ba1`` with :class:`_ExactSide` in place of the SideNet (guidance off)."""
    from progflow.solvers.ba import Side, ba_spec

    net = _ExactSide()
    spec = ba_spec(Side(net, 0), single)
    inner = spec.integrate

    def integrate(velocity, x, grid, callback=None):
        net.velocity = velocity
        return inner(velocity, x, grid, callback)

    import dataclasses

    return dataclasses.replace(spec, integrate=integrate, bind=None)


def _mean_endpoint_rms(cfg, model, spec, nfe: int, ref: torch.Tensor, s_sol: dict) -> float:
    from progflow.bench.endpoints import end_points, endpoint_rms

    x, _, _ = end_points(cfg, model, spec, nfe, 1.0, len(ref), s_sol)
    return float(endpoint_rms(x, ref).mean())


def _sweep(run, cfg, model, method, s, s_sol, ref, width, exact_row: bool = True) -> list[dict]:
    from progflow.latent import load_run_data
    from progflow.fit_solver import FitConfig, heldout_error, sidenet_for, state_shapes
    from progflow.solvers.ba import Side, ba_spec, bind_run_solver
    from progflow.solvers import get_solver
    from progflow.solvers.phases import record_phases

    test, _ = load_run_data(cfg, "test")
    rows = []
    # held-out loss at one offset distribution for every row (mean 0.1: the intervals of a
    # 5-10 NFE sampler), so that rows compare; the untrained row is Euler's assumption
    fit = FitConfig(batch_size=s["fit_batch"], chain=s["chain"], offset_scale=HELDOUT_SCALE)
    for scale in [0.0, *s["scales"]]:
        if scale:
            solver_dir = _fit(run, scale, s, width)
            rec = json.loads((solver_dir / "solver.json").read_text())
            specs = {n: bind_run_solver(get_solver(n), run, model, solver_dir=solver_dir) for n in ("ba", "ba1")}
            net = specs["ba"].integrate.side.net
        else:  # untrained: the training-free counterparts
            shapes = state_shapes(record_phases(method, model, torch.zeros(1, dtype=torch.long)))
            net = sidenet_for(fit.with_overrides({"sidenet.width": width}), shapes, cfg.data.num_classes).eval()
            specs = {n: ba_spec(Side(net, cfg.data.num_classes), n == "ba1") for n in ("ba", "ba1")}
            rec = {"fit_wall_s": 0.0, "steps_done": 0}
        row = {"offset_scale": scale, "fit_steps": rec["steps_done"], "fit_wall_s": rec["fit_wall_s"],
               "heldout_loss": heldout_error(fit, cfg, method, model, net, test, batches=2 if s["n_trip"] < 64 else 8)}
        for name, spec in specs.items():
            for nfe in s["sweep_nfes"]:
                row[f"{name}_rms_nfe{nfe}"] = _mean_endpoint_rms(cfg, model, spec, nfe, ref, s_sol)
        rows.append(row)
        print(f"  sweep {row}", flush=True)
    if not exact_row:
        return rows
    exact = {"offset_scale": "exact (backbone RK4 in place of the SideNet)"}
    for nfe in s["sweep_nfes"]:  # bi-anchor only: about 35 backbone calls per interval
        exact[f"ba_rms_nfe{nfe}"] = _mean_endpoint_rms(cfg, model, exact_ba_spec(), nfe, ref, s_sol)
    rows.append(exact)
    print(f"  sweep {exact}", flush=True)
    return rows


@torch.no_grad()
def _timing(cfg, model, method, spec, s) -> dict:
    """Median ms of one backbone call and of one interval's SideNet work (predictor for
    three offsets + corrector), same batch, guidance off (1) and on (2)."""
    from progflow.solvers.ba import ALPHA, anchor
    from progflow.solvers.phases import record_phases

    side = spec.integrate.side
    out = {}
    for scale in (1.0, 2.0):
        y = torch.arange(s["timing_batch"]) % cfg.data.num_classes
        ph = record_phases(method, model, y, cfg_scale=scale)[-1]
        x = ph.x
        k = (len(ph.grid) - 2) // 2  # an interval in the middle of the (last) phase
        t, h = ph.grid[k], ph.grid[k + 1] - ph.grid[k]
        a = anchor(ph.velocity, x, t)
        back, sidet = [], []
        for _ in range(s["timing_reps"]):
            t0 = time.perf_counter()
            anchor(ph.velocity, x, t)
            t1 = time.perf_counter()
            side.nodes(x, a, t, [ALPHA * h, (1 - ALPHA) * h, h])
            side.nodes(x, a, t + h, [-ALPHA * h])
            t2 = time.perf_counter()
            back.append(t1 - t0)
            sidet.append(t2 - t1)
        b, sd = statistics.median(back), statistics.median(sidet)
        out[f"cfg{scale:g}"] = {"backbone_ms": 1e3 * b, "sidenet_per_interval_ms": 1e3 * sd, "ratio": sd / b,
                                "batch": s["timing_batch"]}
    return out


def _round_trip(run, cfg, model, method, s) -> list[dict]:
    from progflow.data import to_model_range
    from progflow.latent import load_run_data
    from progflow.edit import invert_and_generate
    from progflow.errors import ConfigError
    from progflow.solvers import get_solver, solver_names

    test, _ = load_run_data(cfg, "test")
    idx = torch.arange(s["n_trip"]) * (len(test) // s["n_trip"])
    x, y = to_model_range(test.images[idx]), test.labels[idx]
    rows = []
    for name in solver_names():
        spec = get_solver(name).for_run(run, model)
        if not spec.backward:
            continue
        for nfe in ([None] if spec.adaptive else s["trip_nfes"]):
            t0 = time.perf_counter()
            try:
                out, _, back, fwd = invert_and_generate(method, model, spec, x, y, y, nfe=nfe, cfg_scale=1.0)
            except ConfigError:  # an NFE this solver cannot spend
                continue
            rms = float((out - x).pow(2).flatten(1).mean(1).sqrt().mean())
            rows.append({"solver": name, "nfe": back, "rms": rms, "s": time.perf_counter() - t0})
            print(f"  round trip {name} NFE {back}: RMS {rms:.4f}", flush=True)
    return rows


def _fit_cost(run: Path, cfg, fit_dir: Path, s: dict) -> dict:
    rec = json.loads((fit_dir / "solver.json").read_text())
    fit = json.loads((fit_dir / "config.json").read_text())
    out = {"fit_wall_s": rec["fit_wall_s"], "fit_steps": rec["steps_done"],
           "fit_backbone_forwards_per_step": fit["batch_size"] * (fit["chain"] + 1),
           "train_forward_equivalents_per_step": 3 * cfg.batch_size, "train_steps": cfg.steps}
    out["forward_ratio"] = (out["fit_backbone_forwards_per_step"] * out["fit_steps"]) / (
        out["train_forward_equivalents_per_step"] * cfg.steps)
    wall = logged_train_seconds(run / "log.jsonl", cfg.batch_size)  # the backbone's training compute time
    if wall is not None:
        out.update(train_s=wall, wall_ratio=rec["fit_wall_s"] / wall)
    return out


def measure_learned(arm: str, run: Path, profile: str, s: dict, s_sol: dict, width: int) -> dict:
    from progflow.bench.endpoints import reference_end_points
    from progflow.methods import build_method
    from progflow.sampling import load_run
    from progflow.solvers import get_solver

    cfg, model, path = load_run(run)
    method = build_method(cfg)
    full = profile == "full"  # the headline profile: one fit, no exact ceiling, no round trips
    s = s if full else {**s, "scales": [sc for sc in s["scales"] if sc in HEADLINE_SCALES] or s["scales"][:1]}
    cache = run / "bench_solvers" / "learned.json"
    key = {**s, "width": width, "checkpoint": str(path), "reference": s_sol["reference"][profile]}
    if cache.exists() and (saved := json.loads(cache.read_text())).get("key") == key:
        print(f"[{arm}] learned: cached in {cache}", flush=True)
        return saved["result"]
    print(f"[{arm}] learned measurements on {run}", flush=True)
    ref, _ = reference_end_points(run, cfg, model, s_sol, profile, run / "bench_solvers")
    sweep = _sweep(run, cfg, model, method, s, s_sol, ref, width, exact_row=full)
    fitted = [r for r in sweep if isinstance(r["offset_scale"], float) and r["offset_scale"] > 0]
    best = min(fitted, key=lambda r: r["ba_rms_nfe5"])["offset_scale"]
    target = run / "solver"  # the SideNet `--solver ba` uses: the best of the sweep
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(run / "solver-sweep" / f"scale{best:g}", target)
    spec = get_solver("ba").for_run(run, model)
    result = {"arm": arm, "run": str(run), "checkpoint": str(path), "sidenet_width": width,
              "sidenet": json.loads((target / "solver.json").read_text()), "chosen_offset_scale": best,
              "sweep": sweep, "fit_cost": _fit_cost(run, cfg, target, s), "timing": _timing(cfg, model, method, spec, s),
              "round_trip": _round_trip(run, cfg, model, method, s) if full else None}
    write_result({"key": key, "result": result}, cache)
    return result


def preset_timing(s: dict, presets=TIMING_PRESETS) -> dict:
    """SideNet time per interval against one backbone call for untrained models of
    ``presets`` (the time does not depend on the weights): the ``s`` size of the targets."""
    from progflow.fit_solver import FitConfig, sidenet_for, state_shapes
    from progflow.methods import build_method
    from progflow.nn.dit import build_model, count_parameters
    from progflow.presets import preset_config
    from progflow.solvers.ba import Side, ba_spec
    from progflow.solvers.phases import record_phases

    out = {}
    for name in presets:
        cfg = preset_config(name)
        model, method = build_model(cfg).eval(), build_method(cfg)
        shapes = state_shapes(record_phases(method, model, torch.zeros(1, dtype=torch.long)))
        net = sidenet_for(FitConfig(), shapes, cfg.data.num_classes).eval()
        out[name] = {"sidenet_params": count_parameters(net), "param_share": count_parameters(net) / count_parameters(model),
                     **_timing(cfg, model, method, ba_spec(Side(net, cfg.data.num_classes)), s)}
        print(f"  timing {name}: {out[name]}", flush=True)
    return out


def learned_part(args, arm: str, run: Path, profile: str, s_sol: dict) -> Path:
    """The learned-solver measurements of one run of ``bench solvers`` (``--learned``), before
    its rows are measured (``--solvers ba ba1`` then use the SideNet chosen here); the run's
    entry in ``solvers_learned.json`` is replaced."""
    s = _settings(args)
    width = args.sidenet_width or (8 if args.tiny else 32)
    result = measure_learned(arm, run, profile, s, s_sol, width)
    out = Path(args.out_dir) / ("solvers_learned_tiny.json" if args.tiny else "solvers_learned.json")
    saved = json.loads(out.read_text()) if out.exists() else {}
    runs = [r for r in saved.get("runs", []) if r["arm"] != arm] + [result]
    timing = saved.get("timing_by_preset") or preset_timing(s, ("fmnist-base-xs",) if args.tiny else TIMING_PRESETS)
    write_result({**result_header(args.seed), "benchmark": "solvers --learned", "settings": s, "sidenet_width": width,
                  "torch_threads": torch.get_num_threads(), "runs": runs, "timing_by_preset": timing}, out)
    print(f"wrote {out}", flush=True)
    return out
