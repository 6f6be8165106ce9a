"""``progflow bench solvers``: the ODE solvers against each other at equal NFE, on trained runs.

For every run and every solver that can spend it, at each NFE of ``NFES`` and each grid
shift of ``SHIFTS``: the endpoint error, the RMS (per sample, over the output crop, in
[-1, 1]) of the distance to the end point of dopri5 at tight tolerance from the same noise
and labels, averaged over ``n_err`` samples, and the wall time per image (one batch, the
threads the process has). The best shift of a solver at an NFE is the one with the
smallest endpoint error; at that shift, FD of ``n_fd`` class-balanced samples at each of
``FD_NFES`` (scored like ``bench quality``). Guidance scale 1 by default (the model's own
ODE).

Two budget choices, both in the result's settings. Shift 0.5 (a grid denser near noise) is
not swept: on the base run it was never the strict winner in 41 (solver, NFE) cells of an
earlier full sweep. At the largest FD NFE (100) only ``FD_TOP_SOLVERS`` are scored: every
solver there lands within about 0.01 RMS of dopri5, so their FDs differ by sampling noise
rather than by solver, and Euler at 100 NFE is the reference the BA-solver's targets name.

Runs (``--arms``, default all): ``base`` and ``dfm2`` are the quality benchmark's
``<runs-dir>/bench-quality/{base,dfm2}-seed<seed>`` (``xs``, ``--steps``, default 5,000);
reused when finished, trained with the quality benchmark's recipe when missing.
``base-s`` is ``fmnist-base-s`` at its preset budget (``<runs-dir>/bench-solvers/``),
measured on the headline points only (FD NFEs; Euler, Heun / midpoint, AB2, DPM-Solver++(2M)).
``--run DIR`` measures any run instead, in full.

Solvers are names of :mod:`progflow.solvers`; each is bound to the run it measures
(``spec.for_run``), so a solver that needs something fitted to the run can be measured by
name (``--solvers ... ba``) once it is fitted.

Results are cached per run and solver in ``<run>/bench_solvers/`` (the reference end
points as ``reference.npz``), cell by cell, so a killed benchmark resumes, and processes can
split the work by ``--arms`` and ``--solvers``; a call measuring everything collects them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from progflow.bench.common import result_header, write_result
from progflow.bench.endpoints import end_points, latest_step, reference_end_points, endpoint_rms
from progflow.bench.plots import solvers_plots
from progflow.errors import ConfigError, ProgflowError

NFES = (3, 4, 5, 6, 8, 10, 15, 20, 40, 100)
FD_NFES = (5, 10, 20, 100)
SHIFTS = (1.0, 2.0, 3.0)
FD_TOP_SOLVERS = ("euler",)  # the only solvers scored at the largest FD NFE
SOLVERS = ("euler", "midpoint", "heun", "rk4", "ab2", "dpmpp2m")
HEADLINE_SOLVERS = ("euler", "heun", "midpoint", "ab2", "dpmpp2m")  # ab2: the best FD at 5-10 NFE on base xs
FD_SEED = 200  # noise of the FD samples (as bench quality's final); the endpoint samples': endpoints.ERR_SEED
# arm -> where its run comes from and what is measured on it
ARMS = {
    "base": {"quality_arm": "base", "profile": "full"},
    "dfm2": {"quality_arm": "dfm2", "profile": "full"},
    "base-s": {"preset": "fmnist-base-s", "profile": "headline"},
}


def _settings(args) -> dict:
    tiny = args.tiny
    return {
        "steps": args.steps or (4 if tiny else 5000),  # xs arms, as in bench quality
        "nfes": [4, 5, 8] if tiny else list(NFES),
        "fd_nfes": [4, 5] if tiny else list(FD_NFES),
        "fd_top_solvers": list(FD_TOP_SOLVERS),
        "shifts": list(args.shifts) if getattr(args, "shifts", None) else [1.0, 2.0] if tiny else list(SHIFTS),
        "only_nfes": list(args.nfes) if getattr(args, "nfes", None) else None,  # --nfes: a subset to measure now
        "n_err": 8 if tiny else 256,
        "n_fd": args.n or (20 if tiny else 2000),
        "cfg": (args.cfg_scales or [1.0])[0],
        "reference": {"solver": "dopri5", "full": 1e-4 if tiny else 1e-7, "headline": 1e-4 if tiny else 1e-6},
        "batch_size": 256,
    }


# ---- runs ---------------------------------------------------------------------------------
def _arm_run(arm: str, args, s: dict) -> Path:
    """The run directory of a default arm, trained here when it does not exist yet."""
    from progflow.presets import preset_config
    from progflow.train import train

    spec, tiny, seed = ARMS[arm], args.tiny, args.seed
    if "quality_arm" in spec:
        from progflow.bench.arms import ARMS as QUALITY_ARMS, _config, _settings

        qs = {**_settings(args), "steps": s["steps"], "eval_every": max(1, s["steps"] // 5)}
        pattern, over = QUALITY_ARMS[spec["quality_arm"]]
        cfg = _config(pattern, over, seed, qs, tiny)
        run = Path(args.runs_dir) / ("bench-quality-tiny" if tiny else "bench-quality") / f"{spec['quality_arm']}-seed{seed}"
        if run.exists():  # the quality benchmark's run: only read, it may be training it right now
            if latest_step(run) < s["steps"]:
                raise ProgflowError(f"{run} is not finished (step {latest_step(run)} of {s['steps']}); let "
                                    "`progflow bench quality` finish it, or pass --steps to match it")
            return run
    else:
        cfg = preset_config(spec["preset"], seed=seed)  # its preset budget, as `progflow train --preset`
        if tiny:
            cfg = cfg.with_overrides({"data.dataset": "synthetic", "data.n": 64, "model.depth": 1, "steps": 4,
                                      "batch_size": 8, "sample_every": 0})
        run = Path(args.runs_dir) / ("bench-solvers-tiny" if tiny else "bench-solvers") / f"{arm}-seed{seed}"
        if run.exists() and latest_step(run) >= cfg.steps:
            return run
    print(f"[{arm}] training {cfg.steps} steps into {run}", flush=True)
    train(cfg, run, resume=run.exists(), progress=False)
    return run


# ---- measurements -------------------------------------------------------------------------
def _measure_solver(name, run, cfg, model, ref, profile, s, extractor, ref_feats, cache: Path) -> dict:
    """Endpoint cells and FD points of one solver on one run, read from / added to its cache."""
    from progflow.bench.quality import _score
    from progflow.solvers import get_solver

    key = {k: s[k] for k in ("n_err", "n_fd", "cfg")} | {"step": latest_step(run), "reference": s["reference"][profile],
                                                          "features": str(extractor.name) if extractor else None}
    path = cache / f"{name}.json"
    saved = json.loads(path.read_text()) if path.exists() else {}
    done = saved if saved.get("key") == key else {"key": key, "endpoint": {}, "fd": {}}
    spec = get_solver(name).for_run(run, model)
    nfes = s["fd_nfes"] if profile == "headline" else s["nfes"]
    wanted = lambda nfe: s["only_nfes"] is None or nfe in s["only_nfes"]
    fresh = 0
    for nfe in filter(wanted, nfes):
        for shift in s["shifts"]:
            cell = f"{nfe}|{shift}"
            if cell in done["endpoint"]:
                continue
            try:
                x, used, sec = end_points(cfg, model, spec, nfe, shift, s["n_err"], s)
            except ConfigError:  # an NFE this solver cannot spend on this method (raised before sampling)
                done["endpoint"].update({f"{nfe}|{sh}": None for sh in s["shifts"]})
                write_result(done, path)
                break
            err = endpoint_rms(x, ref)
            done["endpoint"][cell] = {"solver": name, "nfe": used, "shift": shift, "rms": float(err.mean()),
                                      "rms_p90": float(np.quantile(err, 0.9)), "ms_per_image": 1e3 * sec / len(x),
                                      "options": spec.options}
            fresh += 1
            write_result(done, path)
            print(f"  {name} NFE {nfe} shift {shift}: endpoint RMS {err.mean():.4f} ({1e3 * sec / len(x):.1f} ms/image)",
                  flush=True)
    best = _collect(done)["best_shift"]
    for nfe in filter(wanted, s["fd_nfes"]):
        if str(nfe) not in best or extractor is None or (nfe == max(s["fd_nfes"]) and name not in s["fd_top_solvers"]):
            continue
        cell = f"{nfe}|{best[str(nfe)]}"
        if cell in done["fd"]:
            continue
        r = _score(cfg, model, extractor, ref_feats, n=s["n_fd"], seed=FD_SEED, nfe=nfe, cfg_scale=s["cfg"],
                   solver=spec, shift=best[str(nfe)])
        done["fd"][cell] = {"solver": name, "shift": best[str(nfe)], **r}
        fresh += 1
        write_result(done, path)
        print(f"  {name} NFE {nfe} shift {best[str(nfe)]}: FD {r['fd']:.2f} (n={s['n_fd']})", flush=True)
    if not fresh:
        print(f"  {name}: cached in {path}", flush=True)
    return _collect(done)


def _measure_run(arm, run: Path, profile: str, s, chosen, extractor, ref_feats) -> dict:
    """Measure the ``chosen`` solvers on ``run`` (the headline profile: those of
    ``HEADLINE_SOLVERS`` and any not in ``SOLVERS``); collect the others' cached results."""
    from progflow.sampling import load_run

    cfg, model, path = load_run(run)
    cache = run / "bench_solvers"
    from progflow.solvers import solver_names

    # the solvers measured here before (the folder also holds the reference and --learned's cache)
    cached = sorted(p.stem for p in cache.glob("*.json") if p.stem in solver_names()) if cache.exists() else []
    wanted = [n for n in dict.fromkeys([*SOLVERS, *chosen, *cached])
              if profile == "full" or n in HEADLINE_SOLVERS or n not in SOLVERS]
    print(f"[{arm}] {run} ({cfg.preset}, step {latest_step(run)}): {', '.join(wanted)}", flush=True)
    ref, ref_info = (reference_end_points(run, cfg, model, s, profile, cache) if any(n in chosen for n in wanted)
                     else (None, None))
    out = {"arm": arm, "run": str(run), "checkpoint": str(path), "preset": cfg.preset, "method": cfg.method.name,
           "train_steps": latest_step(run), "profile": profile, "reference": ref_info, "endpoint": [], "fd": [],
           "best_shift": {}}
    for name in wanted:
        if name in chosen:
            r = _measure_solver(name, run, cfg, model, ref, profile, s, extractor, ref_feats, cache)
        elif (cache / f"{name}.json").exists():  # measured by another process
            r = _collect(json.loads((cache / f"{name}.json").read_text()))
        else:
            continue
        out["endpoint"] += r["endpoint"]
        out["fd"] += r["fd"]
        out["best_shift"][name] = r["best_shift"]
        if ref_info is None and (cache / "reference.json").exists():  # collected: the reference as saved
            out["reference"] = json.loads((cache / "reference.json").read_text())["info"]
    return out


def _collect(saved: dict) -> dict:
    """A solver's cached cells as result rows, with its best shift per NFE (least endpoint error)."""
    rows = [r for r in saved.get("endpoint", {}).values() if r is not None]
    best = {str(nfe): min((r for r in rows if r["nfe"] == nfe), key=lambda r: r["rms"])["shift"]
            for nfe in sorted({r["nfe"] for r in rows})}
    return {"endpoint": rows, "best_shift": best, "fd": list(saved.get("fd", {}).values())}


# ---- the command --------------------------------------------------------------------------
def _summary(runs: list[dict]) -> dict:
    """Per run and NFE: the solver with the least endpoint error and the one with the best FD."""
    out = {}
    for r in runs:
        row = {}
        for nfe in sorted({e["nfe"] for e in r["endpoint"]}):
            cells = [e for e in r["endpoint"] if e["nfe"] == nfe]
            e = min(cells, key=lambda c: c["rms"])
            row[str(nfe)] = {"least_error": [e["solver"], e["shift"], e["rms"]]}
            fds = [f for f in r["fd"] if f["nfe"] == nfe]
            if fds:
                f = min(fds, key=lambda c: c["fd"])
                row[str(nfe)]["best_fd"] = [f["solver"], f["shift"], f["fd"]]
        out[r["arm"]] = row
    return out


def run_solvers(args) -> Path:
    from progflow.eval import get_extractor, reference_stats
    from progflow.solvers import get_solver

    s = _settings(args)
    names = list(args.solvers or SOLVERS)
    for n in names:
        get_solver(n)  # unknown names fail here, before any work
    if args.run:
        arms = {Path(d).name: (Path(d), "full") for d in args.run}
        stem = "solvers_" + "_".join(arms)
    else:
        chosen_arms = args.arms or list(ARMS)
        if set(chosen_arms) - set(ARMS):
            raise ConfigError(f"unknown --arms {sorted(set(chosen_arms) - set(ARMS))}; choose from {sorted(ARMS)}")
        arms = {a: (None, ARMS[a]["profile"]) for a in ARMS}
        stem = "solvers"
    stem += "_tiny" if args.tiny else ""
    out = Path(args.out_dir) / f"{stem}.json"
    extractor = get_extractor("fmnist-classifier", data_dir=args.data_dir)
    ref_feats = reference_stats(extractor, data_dir=args.data_dir)
    header = {**result_header(args.seed), "benchmark": "solvers", "settings": s,
              "torch_threads": torch.get_num_threads(),
              "notes": {"base-s": "fmnist-base-s trained at its preset budget (1500 steps), headline points only: "
                                  "the FD NFEs at shifts 1 and 2 (on base xs, shift 3 won no headline cell but ba1's at 5 NFE), NFE 100 for "
                                  "Euler only (the others are scored at 100 NFE nowhere), ba / ba1 at 5 and 10 "
                                  "(bench solvers --nfes / --shifts); measured alongside another 1-thread process"}}
    print(f"solver benchmark: {s}", flush=True)
    runs = []
    for arm, (run, profile) in arms.items():
        active = args.run or arm in chosen_arms
        if run is None:
            if active:
                run = _arm_run(arm, args, s)
            else:
                base = "bench-quality" if "quality_arm" in ARMS[arm] else "bench-solvers"
                name = ARMS[arm].get("quality_arm", arm)
                run = Path(args.runs_dir) / (base + ("-tiny" if args.tiny else "")) / f"{name}-seed{args.seed}"
                if not (run / "bench_solvers").exists():
                    continue
        if active and args.learned:  # BA-solver: fit the SideNets, sweep, time (progflow/bench/ba.py)
            from progflow.bench.ba import learned_part

            learned_part(args, arm, run, profile, s)
        runs.append(_measure_run(arm, run, profile, s, names if active else [], extractor, ref_feats))
        write_result({**header, "runs": runs, "summary": _summary(runs)}, out)
    plots = solvers_plots(runs, out.with_suffix(""))
    print(json.dumps(_summary(runs), indent=1))
    print(f"wrote {out}" + "".join(f" and {p}" for p in plots))
    return out
