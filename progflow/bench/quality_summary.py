"""The quality benchmark's results across runs: the per-arm summary over seeds
(:func:`summarize`) and the runs kept from an earlier result file (:func:`earlier_runs`).
Plain JSON in, plain JSON out: no models here."""

from __future__ import annotations

import json
import statistics
from pathlib import Path


def summarize(runs: list[dict], cfg_scales) -> dict:
    """Per arm: the seeds, mean (and sample std) FD and class accuracy at each final guidance
    scale, the best mean FD over the scales every seed has, band scores, stage diagnostics
    and the ratios to the arm ``base``."""
    out = {}
    for arm in sorted({r["arm"] for r in runs}):
        rs = [r for r in runs if r["arm"] == arm]
        row = {"seeds": [r["seed"] for r in rs], "train_images_per_s": statistics.mean(r["train_images_per_s_median"] for r in rs)}
        for w in cfg_scales:
            fds = [f["fd"] for r in rs for f in r["final"] if f["cfg"] == w]
            accs = [f["class_accuracy"] for r in rs for f in r["final"] if f["cfg"] == w]
            row[f"fd_cfg{w}"] = {"mean": statistics.mean(fds), "std": statistics.stdev(fds) if len(fds) > 1 else 0.0,
                                 "values": fds}
            row[f"class_acc_cfg{w}"] = statistics.mean(accs)
        timed = [f["n"] / f["sample_s"] for r in rs for f in r["final"] if f["cfg"] == 1.0 and f.get("sample_s")]
        if timed:  # the timed final sampling at cfg 1 (one process per core while the arms ran)
            row["sample_images_per_s_cfg1.0"] = statistics.mean(timed)
        if any(r.get("guidance") for r in rs):  # the best mean FD over every scale all seeds have
            by_cfg = [{f["cfg"]: f["fd"] for f in [*r["final"], *r.get("guidance", [])]} for r in rs]
            common = set.intersection(*(set(d) for d in by_cfg))
            fd_by_cfg = {w: statistics.mean(d[w] for d in by_cfg) for w in sorted(common)}
            best = min(fd_by_cfg, key=fd_by_cfg.get)
            row["fd_by_cfg"] = {str(w): v for w, v in fd_by_cfg.items()}
            row["fd_best"] = {"cfg": best, "mean": fd_by_cfg[best]}
        diags = [r["diagnose"]["scores"] for r in rs if r.get("diagnose")]
        if diags:  # stage diagnostics, mean over the seeds that have them
            row["diagnose_fd"] = {k: statistics.mean(d[k]["fd"] for d in diags) for k in diags[0]}
        for band in ("fd_coarse", "fine_rms_ratio"):  # cfg 1 only
            vals = [f.get(band) for r in rs for f in r["final"] if f["cfg"] == 1.0]
            if vals and None not in vals:
                row[f"{band}_cfg1.0"] = statistics.mean(vals)
        out[arm] = row
    if "base" in out:
        for arm, row in out.items():
            for w in cfg_scales:
                row[f"fd_ratio_to_base_cfg{w}"] = row[f"fd_cfg{w}"]["mean"] / out["base"][f"fd_cfg{w}"]["mean"]
            if "fd_best" in row and "fd_best" in out["base"]:
                row["fd_best_ratio_to_base"] = row["fd_best"]["mean"] / out["base"]["fd_best"]["mean"]
    return out


_SETTING_DEFAULTS = {"solver": "euler", "shift": 1.0, "dataset": "fashion-mnist"}


def earlier_runs(out: Path, s: dict) -> tuple[dict, dict | None]:
    """Runs recorded in an earlier ``out`` made with the same settings (seeds aside), by
    ``(arm, seed)``: the collecting step keeps those whose run directory is not on this
    machine instead of dropping (or retraining) them. Each is marked ``collected_from``.
    Also that file's step-time measurement (marked the same way), kept when this call
    does not measure one."""
    if not out.exists():
        return {}, None
    prev = json.loads(out.read_text())
    ps = {**_SETTING_DEFAULTS, **prev.get("settings", {})}
    if any(ps.get(k) != v for k, v in s.items() if k != "seeds"):
        return {}, None
    source = f"{out} of {prev.get('date', '?')}"
    timing = prev.get("step_time")
    if timing:
        timing = {**timing, "collected_from": timing.get("collected_from", source)}
    return {(r["arm"], r["seed"]): {**r, "collected_from": r.get("collected_from", source)} for r in prev["runs"]}, timing
