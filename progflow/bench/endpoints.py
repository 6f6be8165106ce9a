"""Endpoint error, the measurement ``bench solvers`` and ``bench solvers --learned`` share: end
points of a solver from fixed noise and labels, their RMS distance to dopri5's at tight
tolerance (the reference, computed once per run and cached in ``RUN/bench_solvers/``)."""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path

import numpy as np
import torch

from progflow.bench.common import write_result

ERR_SEED = 300  # noise of the endpoint samples


def latest_step(run: Path) -> int:
    from progflow import checkpoint as ckpt

    found = ckpt.list_checkpoints(run / "ckpt")
    return int(found[-1].name.split("_")[1]) if found else 0


def end_points(cfg, model, spec, nfe, shift, n: int, s: dict):
    """``n`` float samples (cropped, [-1, 1]) from the endpoint noise, NFE spent, seconds."""
    from progflow.sampling import generate

    t0 = time.perf_counter()
    x, _, used, _ = generate(cfg, model, n=n, seed=ERR_SEED, nfe=nfe, cfg_scale=s["cfg"], batch_size=s["batch_size"],
                             progress=False, solver=spec, shift=shift, raw=True)
    return x, used, time.perf_counter() - t0


def endpoint_rms(x: torch.Tensor, ref: torch.Tensor) -> np.ndarray:
    return (x.double() - ref.double()).pow(2).flatten(1).mean(1).sqrt().numpy()


def reference_end_points(run: Path, cfg, model, s: dict, profile: str, cache: Path) -> tuple[torch.Tensor, dict]:
    """dopri5 end points at tight tolerance, computed once per run (a lock lets parallel
    processes wait for the first one instead of computing it twice), and how far dopri5 at
    10x the tolerance lands from them: the reference's own error is below that. (Same
    samples, all of them: a method that draws its noise in several calls, like DFM per
    phase, draws different noise for a smaller batch.)"""
    from progflow.sampling import atomic_savez
    from progflow.solvers import get_solver

    tol = s["reference"][profile]
    key = {"n": s["n_err"], "tol": tol, "cfg": s["cfg"], "seed": ERR_SEED, "step": latest_step(run)}
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / "reference.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        meta_path, check_path = cache / "reference.json", cache / "reference_check.json"
        if meta_path.exists() and (meta := json.loads(meta_path.read_text()))["key"] == key:
            with np.load(cache / "reference.npz", allow_pickle=False) as z:
                x, info = torch.from_numpy(z["x"]), meta["info"]
        else:
            print(f"  reference: dopri5 rtol = atol = {tol:g} on {s['n_err']} samples", flush=True)
            x, used, sec = end_points(cfg, model, get_solver("dopri5", rtol=tol, atol=tol), None, 1.0, s["n_err"], s)
            info = {"solver": "dopri5", "rtol": tol, "atol": tol, "nfe": used, "ms_per_image": 1e3 * sec / s["n_err"]}
            atomic_savez(cache / "reference.npz", x=x.numpy())
            write_result({"key": key, "info": info}, meta_path)
            print(f"  reference: {used} NFE, {info['ms_per_image']:.0f} ms/image", flush=True)
        if not (check_path.exists() and (check := json.loads(check_path.read_text()))["key"] == key):
            loose, used, _ = end_points(cfg, model, get_solver("dopri5", rtol=10 * tol, atol=10 * tol), None, 1.0,
                                         s["n_err"], s)
            check = {"key": key, "rms_of_10x_looser": float(endpoint_rms(loose, x).mean()), "nfe_10x_looser": used}
            write_result(check, check_path)
            print(f"  reference: dopri5 at 10x the tolerance ({used} NFE) lands {check['rms_of_10x_looser']:.2e} "
                  "away", flush=True)
        info = {k: v for k, v in info.items() if not k.startswith("rms_of_10x_looser_on")}  # (an earlier check)
        return x, {**info, "rms_of_10x_looser": check["rms_of_10x_looser"], "nfe_10x_looser": check["nfe_10x_looser"]}
