"""Render the README's benchmark tables from the committed JSON results.

    python benchmarks/render_readme.py     # rewrites the block between the bench markers
"""

from __future__ import annotations

import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def _load(name: str) -> dict | None:
    """The committed result ``benchmarks/results/NAME``, or None where it is not committed."""
    f = RESULTS / name
    return json.loads(f.read_text()) if f.exists() else None


def speed_table() -> str:
    r = _load("speed.json")
    if r is None:
        return "_No speed result committed yet._"
    m = r["machine"]
    lines = [f"**Speed** (`{r['command']}`, {r['date']}, {m['cpu']}, {m['cores']} cores, "
             f"{r.get('torch_threads', m['torch_threads'])} thread(s), torch {m['torch']}): "
             f"fp32 matmul peak measured in the same run {r['matmul_fp32_gflop_per_s']:.0f} GFLOP/s; "
             f"data loading {1e3 * r['data_s_per_batch']:.2f} ms per batch of 64."]
    peer = any("peer" in x for x in r["results"])
    if peer:
        lines[0] += (" Peer: diffusers' `DiTTransformer2DModel` at the same width, depth, heads and patch, timed "
                     "interleaved with progflow's model (median ratio over rounds; below 1 = progflow faster): "
                     "the training step and one forward pass of the sampling batch. Peak memory: a fresh process "
                     "training (batch 64) or sampling (batch 100).")
    fast = any("bf16" in x or "compiled" in x for x in r["results"])
    if fast:
        lines[0] += (" Speed-ups against the float32 eager row: bfloat16 autocast (`TrainConfig.bf16`, `sample "
                     "--bf16`) and `torch.compile` (`--compile`; in brackets the first training step and the first "
                     "sampling call, which include the compile).")
    lines += ["", "| preset | params | train img/s | train GFLOP/s | share of matmul peak | sample img/s (NFE) |"
              + (" train step / diffusers | forward / diffusers | peak MB train / sample |" if peer else "")
              + (" bf16 speed-up train / sample | compile speed-up train / sample |" if fast else ""),
              "|---" * (6 + 3 * peer + 2 * fast) + "|"]
    for x in r["results"]:
        row = (f"| {x['preset']} | {x['params'] / 1e6:.2f}M | {x['train_images_per_s']:.1f} | "
               f"{x['train_gflop_per_s']:.1f} | {100 * x['share_of_matmul_peak']:.0f}% | "
               f"{x['sample_images_per_s']:.1f} ({x['sample_nfe']}) |")
        if peer:
            p = x.get("peer", {})
            mem = x.get("memory")
            row += (f" {p['train_ratio']:.2f}x | {p['forward_ratio']:.2f}x |" if "train_ratio" in p else " - | - |")
            row += f" {mem['train']['peak_rss_mb']:.0f} / {mem['sample']['peak_rss_mb']:.0f} |" if mem else " - |"
        if fast:
            b, c = x.get("bf16"), x.get("compiled")
            row += (f" {b['train_speedup']:.2f}x / {b['sample_speedup']:.2f}x |" if b else " - |")
            row += (f" {c['train_speedup']:.2f}x / {c['sample_speedup']:.2f}x ({c['train_first_step_s']:.0f} s, "
                    f"{c['sample_first_call_s']:.0f} s) |" if c else " - |")
        lines.append(row)
    return "\n".join(lines)


QUALITY_TITLE = {
    "quality.json": "Base vs DFM vs FlowAR vs the multi-stage baselines (cascade, Pyramidal Flow) at equal training compute",
    "quality_emoji.json": "64px colour emoji: base vs DFM (and FlowAR), in pixels and in the latents of progflow's "
                          "autoencoders, at equal training compute",
    "quality_s.json": "Fashion-MNIST at size s (4.2M parameters): does capacity close DFM's gap to base?",
}
SAMPLE_COST_ARMS = ("base", "dfm2", "dfm2-pq0.3", "flowar", "flowar-2scales", "cascade", "pyramidal", "base-latent",
                    "dfm2-latent", "base-latent-eq", "dfm2-latent-eq", "flowar-latent", "flowar-latent-eq")


def quality_table(name: str = "quality.json") -> str:
    r = _load(name)
    if r is None:
        return f"_No `{name}` result committed yet._"
    s = r["settings"]
    scales = s["cfg_scales"]
    latent = any(run.get("autoencoder") for run in r["runs"])
    lines = [f"**{QUALITY_TITLE.get(name, name)}** (`{r['command']}`, {r['date']}): model size "
             f"`{s['size']}`, {s['steps']} steps of batch {s['batch_size']}, lr {s['lr']}"
             + (" (the latent arms: steps scaled up to the pixel base's training FLOPs)" if latent else "")
             + f", FD of {s['n']} class-balanced samples at {s['nfe']} NFE (DFM and the cascade: 30 + 10 for 2 stages; "
             f"Pyramidal Flow: 20 + 20 over its 2 windows; FlowAR: {s['nfe']} flow-head evaluations, split evenly over "
             f"its scales, plus one cached AR pass per scale), EMA weights; "
             "mean ± std over seeds where 2 seeds ran; sample img/s from the timed final sampling at cfg 1"
             + (" (latent arms: decoding included)" if latent else "") + "; train "
             "img/s (median of the logged windows) and minutes (summed over the windows, resumes included) as measured "
             "during each run: runs that shared the two cores with other work are slower, so compare speed with the "
             "interleaved step-time lines below.", "",
             "| arm | seeds | " + " | ".join(f"FD cfg {w}" for w in scales) + " | "
             + " | ".join(f"FD / base, cfg {w}" for w in scales) + f" | class acc. cfg {scales[0]} | "
             "coarse-band FD cfg 1 | fine-band RMS / real | train img/s | train min | sample img/s |",
             "|---" * (8 + 2 * len(scales)) + "|"]
    minutes = {}
    for run in r["runs"]:
        minutes.setdefault(run["arm"], []).append(run["train_wall_s"] / 60)
    for arm, row in r["summary"].items():
        fds = " | ".join(f"{row[f'fd_cfg{w}']['mean']:.2f}" + (f" ± {row[f'fd_cfg{w}']['std']:.2f}"
                                                                  if len(row["seeds"]) > 1 else "") for w in scales)
        ratios = " | ".join(f"{row.get(f'fd_ratio_to_base_cfg{w}', float('nan')):.2f}" for w in scales)
        bands = " | ".join(f"{row[k]:.{d}f}" if k in row else "-"
                           for k, d in (("fd_coarse_cfg1.0", 2), ("fine_rms_ratio_cfg1.0", 3)))
        ips = row.get("sample_images_per_s_cfg1.0")
        lines.append(f"| {arm} | {len(row['seeds'])} | {fds} | {ratios} | {row[f'class_acc_cfg{scales[0]}']:.3f} | "
                     f"{bands} | {row['train_images_per_s']:.0f} | {sum(minutes[arm]) / len(minutes[arm]):.1f} | "
                     f"{'-' if ips is None else f'{ips:.1f}'} |")
    kept = [f"{run['arm']} seed {run['seed']}" for run in r["runs"] if run.get("collected_from")]
    if kept:
        sources = sorted({run["collected_from"] for run in r["runs"] if run.get("collected_from")})
        lines += ["", f"Runs whose run directories were not on the collecting machine, kept from the earlier result "
                  f"({'; '.join(sources)}): {', '.join(kept)}. Their img/s columns were measured then."]
    aes = r.get("autoencoders") or {}
    if aes:
        lines += ["", "Autoencoders (trained once, scored with `progflow eval-ae` on the test split): " + "; ".join(
            f"`{k}` {a['steps']} steps in {a['train_wall_s'] / 60:.0f} min, latent {'x'.join(map(str, a['latent_shape']))}, "
            f"PSNR {a['psnr']:.1f} dB, FD of reconstructions {a['fd_reconstructions']:.1f}, pooled-latent PSNR "
            f"{a['psnr_half']:.1f} dB, decoding {a['decode_gflop']:.3f} GFLOP per image" for k, a in sorted(aes.items())) + "."]
    diags = {arm: row["diagnose_fd"] for arm, row in r["summary"].items() if "diagnose_fd" in row}
    if diags:
        lines += ["", "Stage diagnostics (`progflow diagnose`, FD; oracle: the fine stage generated from the true "
                  "coarse stage of test images, clean or noised to the sampler's hand-over; coarse only: the true "
                  "coarse stage with no fine stage; true images: the test images' own FD): " + "; ".join(
                      f"{arm}: " + ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in d.items())
                      for arm, d in diags.items()) + "."]
    costs = {arm: row["sample_cost"] for arm, row in r["summary"].items() if "sample_cost" in row}
    if costs:
        def cost(arm, c):
            calls = " + ".join(f"{n} {part}" for part, n in c.get("calls", {}).items()) or f"{c['nfe']} NFE"
            if "decode_gflop" in c:
                calls += f" + decoding {c['decode_gflop']:.3f}"
            return f"{arm} {c['gflop']:.3f} ({calls})"

        lines += ["", "Sampling cost per image, counted FLOPs at cfg 1 (guidance doubles every arm alike), GFLOP: "
                  + "; ".join(cost(a, costs[a]) for a in SAMPLE_COST_ARMS if a in costs)
                  + "."]
    st = r.get("step_time")
    if st:
        lines += ["", "Training step time relative to base, measured in the collecting run with the CPU to itself "
                  "(interleaved, same batch): "
                  + ", ".join(f"{k} {v:.3f}" for k, v in st["ratio_to_base"].items()) + "."]
    variants = [(run["arm"], k, v) for run in r["runs"] for k, v in run.get("sampling_variants", {}).items()]
    if variants:
        lines += ["", "Sampling ablations (the same trained seed-0 model of the arm, cfg 1): "
                  + "; ".join(f"{arm} {k}: FD {v['fd']:.2f}" + (f" at {v['nfe']} NFE" if v["nfe"] != s["nfe"] else "")
                              for arm, k, v in variants) + "."]
    swept = {arm: row for arm, row in r["summary"].items() if "fd_by_cfg" in row}
    if swept:
        lines += ["", "FD by guidance scale (the final scales and those added with `--extra-cfg-scales`, the same "
                  "samples' settings; mean over the seeds that have every scale): " + "; ".join(
                      f"{arm} " + ", ".join(f"cfg {float(w):g} {v:.2f}" + (" (best)" if float(w) == row["fd_best"]["cfg"]
                                                                            else "") for w, v in row["fd_by_cfg"].items())
                      + (f", best over base's best {row['fd_best_ratio_to_base']:.2f}x"
                         if "fd_best_ratio_to_base" in row and arm != "base" else "")
                      for arm, row in swept.items()) + "."]
    if name == "quality.json":
        for t in sorted(RESULTS.glob("step_time_*.json")):
            if t.stem.endswith("_tiny"):
                continue
            tr = json.loads(t.read_text())
            lines += ["", f"Training step time, model size `{tr['size']}`, batch {tr['batch_size']} (`{tr['command']}`, "
                      "interleaved, median of 10 rounds): " + ", ".join(
                          f"{k} {1e3 * tr['step_s'][k]:.0f} ms ({tr['ratio_to_base'][k]:.3f}x)" for k in tr["step_s"]) + "."]
    lines += ["", f"FD vs training step: `benchmarks/results/{Path(name).with_suffix('.png').name}`."]
    return "\n".join(lines)


# DFM against base in every regime benchmarked: (result file, base arm, DFM arm, DFM arm
# with more fine-stage training, label); rows whose file or arms are missing are left out
DFM_REGIMES = (
    ("quality.json", "base", "dfm2", "dfm2-pq0.3", "Fashion-MNIST 32px, pixels"),
    ("quality_s.json", "base", "dfm2", "dfm2-pq0.3", "Fashion-MNIST 32px, pixels"),
    ("quality_emoji.json", "base", "dfm2", "dfm2-pq0.3", "emoji 64px RGB, pixels"),
    ("quality_emoji.json", "base-latent", "dfm2-latent", None, "emoji, `emoji-ae` latent"),
    ("quality_emoji.json", "base-latent-eq", "dfm2-latent-eq", None, "emoji, `emoji-ae-eq` latent"),
)
# stage diagnostics of runs benchmarked before `bench quality` recorded them
DIAGNOSE_FILES = {("quality.json", "dfm2"): "diagnose_dfm2_xs_seed0.json"}


def _model_size(preset: str) -> tuple[int, int]:
    """(values per generated image, parameters) of a preset's model."""
    from progflow.nn.dit import build_model
    from progflow.presets import preset_config

    cfg = preset_config(preset)
    return cfg.data.channels * cfg.data.image_size ** 2, sum(p.numel() for p in build_model(cfg).parameters())


def _seed_mean(diags: list[dict], view: str) -> str:
    """One diagnostic view's FD: the mean over the seeds, each seed's value in brackets where they differ."""
    vals = [d["scores"][view]["fd"] for d in diags]
    each = [f"{v:.1f}" for v in vals]
    return f"{sum(vals) / len(vals):.1f}" + (f" ({', '.join(each)})" if len(set(each)) > 1 else "")


def dfm_regimes_table() -> str:
    """DFM's FD over base's in every regime benchmarked, beside its stage diagnostics."""
    rows = []
    for name, base, dfm, more, label in DFM_REGIMES:
        r = _load(name)
        if r is None or base not in r["summary"] or dfm not in r["summary"]:
            continue
        summ, s = r["summary"], r["settings"]
        run = next(x for x in r["runs"] if x["arm"] == dfm)
        values, params = _model_size(run["preset"])
        seeds = min(len(summ[base]["seeds"]), len(summ[dfm]["seeds"]))
        fd = " / ".join(f"{summ[a]['fd_cfg1.0']['mean']:.1f}" for a in (base, dfm))

        def over_base(arm, w=1.0):
            return f"{summ[arm][f'fd_cfg{w}']['mean'] / summ[base][f'fd_cfg{w}']['mean']:.2f}x"

        ratio = f"{over_base(dfm)} / {over_base(dfm, 2.0)}"
        pq = over_base(more) if more in summ else "-"
        best = (f"{summ[dfm]['fd_best']['mean'] / summ[base]['fd_best']['mean']:.2f}x (cfg "
                f"{summ[dfm]['fd_best']['cfg']:g} / {summ[base]['fd_best']['cfg']:g})"
                if "fd_best" in summ[dfm] and "fd_best" in summ[base] else "-")
        diags = [x["diagnose"] for x in r["runs"] if x["arm"] == dfm and x.get("diagnose")]
        if not diags and (name, dfm) in DIAGNOSE_FILES:
            diags = [_load(DIAGNOSE_FILES[name, dfm])]
        if not diags:
            cells = "- | - | -"
        else:
            cells = (f"{_seed_mean(diags, 'coarse_only')} | {_seed_mean(diags, 'oracle_clean')} / "
                     f"{_seed_mean(diags, 'oracle_noised')} | {diags[0]['n']}")
        rows.append(f"| {label} | `{s['size']}`, {params / 1e6:.2f}M | {values:,} | {seeds} | {fd} | {ratio} | {best} | "
                    f"{pq} | {cells} |")
    if not rows:
        return ""
    return "\n".join([
        "**DFM against base, every regime benchmarked** (from the quality results above; params: the DFM model's; 2-stage DFM with the "
        "paper's defaults, `p_q = [0.9, 0.1]`, and with `p_q = [0.3, 0.7]`; FD at cfg 1 unless marked; "
        "best guidance: over the scales scored, where a guidance sweep ran; equal training FLOPs within a row). Values per image: what the last stage generates. Stage diagnostics "
        "(`progflow diagnose`; the mean over the DFM arm's seeds, each seed's value in brackets where there are two) score the true coarse stage of test images alone, and with the model's fine "
        "stage generated from it (clean / noised to the sampler's hand-over), on n test images: FD rises as n "
        "falls, so compare them with each other, not with the FD columns.", "",
        "| regime | size, params | values per image | seeds | FD base / DFM | DFM / base, cfg 1 / cfg 2 | "
        "DFM / base, each at its best guidance | DFM `p_q = [0.3, 0.7]` / base | coarse only | "
        "fine from true coarse, clean / noised | n |",
        "|---" * 11 + "|", *rows])


def _cell(rows: list, nfe: int, key: str, fmt: str) -> str:
    hit = [r for r in rows if r["nfe"] == nfe]
    return f"{fmt.format(hit[0][key])} (s{hit[0]['shift']:g})" if hit else "-"


def solvers_table() -> str:
    r = _load("solvers.json")
    if r is None:
        return "_No solver result committed yet._"
    s = r["settings"]
    ref = {run["arm"]: run["reference"] for run in r["runs"] if run["reference"]}
    lines = [f"**Solvers at equal NFE** (`{r['command']}`, {r['date']}, {r['torch_threads']} thread): endpoint "
             f"error = RMS distance (per sample, pixels in [-1, 1]) to the end point of dopri5 from the same noise, "
             f"mean over {s['n_err']} samples; each solver at its best grid shift of "
             f"{', '.join(f'{x:g}' for x in s['shifts'])} (in brackets, `s1` = uniform); FD of {s['n_fd']} samples "
             f"at that shift"
             + (f", at {max(s['fd_nfes'])} NFE for {', '.join(s['fd_top_solvers'])} only (there every solver lands "
                "within about 0.01 RMS of dopri5)" if s.get("fd_top_solvers") else "")
             + f"; guidance scale {s['cfg']:g}. References: "
             + "; ".join(f"{arm} dopri5 rtol = atol = {x['rtol']:g}, {x['nfe']:.0f} NFE" for arm, x in ref.items())
             + "."]
    for run in r["runs"]:
        best = run["best_shift"]
        rows = {n: [e for e in run["endpoint"] if e["solver"] == n and e["shift"] == best[n].get(str(e["nfe"]))]
                for n in best}
        fds = {n: [x for x in run["fd"] if x["solver"] == n] for n in best}
        nfes = sorted({e["nfe"] for e in run["endpoint"]})
        fd_nfes = sorted({x["nfe"] for x in run["fd"]})
        lines += ["", f"`{run['arm']}`: {run['preset']}, {run['train_steps']} training steps"
                  + (" (headline points only)" if run["profile"] == "headline" else "") + ".", "",
                  "| solver | " + " | ".join(f"error @{n}" for n in nfes) + " | "
                  + " | ".join(f"FD @{n}" for n in fd_nfes) + " | ms / image / NFE |",
                  "|---" * (2 + len(nfes) + len(fd_nfes)) + "|"]
        for n in [n for n in best if rows[n]]:
            ms = sorted(e["ms_per_image"] / e["nfe"] for e in rows[n])
            lines.append(f"| {n} | " + " | ".join(_cell(rows[n], k, "rms", "{:.4f}") for k in nfes) + " | "
                         + " | ".join(_cell(fds[n], k, "fd", "{:.1f}") for k in fd_nfes)
                         + f" | {ms[len(ms) // 2]:.2f} |")
    from progflow.bench.solvers import ARMS, SOLVERS

    measured = {run["arm"]: set(run["best_shift"]) for run in r["runs"]}
    missing_arms = [a for a in ARMS if a not in measured]
    missing = sorted({n for got in measured.values() for n in SOLVERS if n not in got})
    if missing_arms or missing:  # a file written while the benchmark was still running
        lines += ["", "**Partial result**, not measured"
                  + (f": the arms {', '.join(missing_arms)}" if missing_arms else "")
                  + (f"; classical solvers: {', '.join(missing)}" if missing else "")
                  + "; the BA-solver rows (they come from `--solvers ba ba1`)" * (
                      not any({"ba", "ba1"} & got for got in measured.values())) + "."]
    plots = [f"`benchmarks/results/{name}` ({what})" for name, what in (
        ("solvers_error.png", "endpoint error vs NFE, best shift and uniform"), ("solvers_fd.png", "FD vs NFE"))
        if (RESULTS / name).exists()]
    if plots:
        lines += ["", "Plots: " + ", ".join(plots) + "."]
    return "\n".join(lines)


def solvers_learned_table() -> str:
    """The BA-solver's own measurements (``bench solvers --learned``): offset-scale sweep,
    fitting cost, SideNet time and round-trip inversion error."""
    r = _load("solvers_learned.json")
    if r is None:
        return ""
    s = r["settings"]
    lines = [f"**BA-solver** (`{r['command']}`, {r['date']}): SideNet width {r['sidenet_width']}, fitted "
             f"{s['fit_steps']} steps of {s['fit_batch']} chains of {s['chain']} per offset scale; endpoint error "
             "as above (uniform grid); held-out loss relative to the untrained SideNet (Euler's assumption), "
             "offsets of mean 0.1."]
    for name, t in r.get("timing_by_preset", {}).items():
        lines += ["", f"`{name}` (untrained weights, batch {t['cfg1']['batch']}): SideNet {t['sidenet_params'] / 1e3:.0f}k "
                  f"parameters = {100 * t['param_share']:.2f}% of the backbone; SideNet time per interval "
                  f"{100 * t['cfg1']['ratio']:.1f}% of one backbone call ({100 * t['cfg2']['ratio']:.1f}% with guidance)."]
    for run in r["runs"]:
        sw = run["sweep"]
        base = sw[0]["heldout_loss"]
        side = run["sidenet"]
        cost, tm = run["fit_cost"], run["timing"]
        lines += ["", f"`{run['arm']}`: SideNet {side['sidenet_params'] / 1e3:.0f}k parameters "
                  f"({100 * side['param_share']:.1f}% of the backbone), offset scale chosen: "
                  f"{run['chosen_offset_scale']:g}; fitting {cost['fit_wall_s']:.0f} s"
                  + (f" = {100 * cost['wall_ratio']:.1f}% of the backbone's training time" if "wall_ratio" in cost else "")
                  + f" ({100 * cost['forward_ratio']:.1f}% of its forward passes); SideNet time per interval "
                  f"{100 * tm['cfg1']['ratio']:.0f}% of one backbone call ({100 * tm['cfg2']['ratio']:.0f}% with "
                  "guidance).", "",
                  "| offset scale | held-out loss | ba @5 | ba @10 | ba1 @5 | ba1 @10 |", "|---|---|---|---|---|---|"]
        for row in sw:
            name = {0.0: "untrained (heun_reused / euler)"}.get(row["offset_scale"], row["offset_scale"])
            name = "exact SideNet (backbone RK4)" if str(name).startswith("exact") else name
            loss = f"{row['heldout_loss'] / base:.2f}" if "heldout_loss" in row else "-"
            lines.append(f"| {name} | {loss} | " + " | ".join(
                f"{row[f'{n}_rms_nfe{k}']:.4f}" if f"{n}_rms_nfe{k}" in row else "-" for n in ("ba", "ba1")
                for k in (5, 10)) + " |")
        trip = run["round_trip"]
        if trip is None:  # the headline profile (size s) measures no round trips
            lines += ["", "(No round trips on this run: the headline profile measures the fit, its sweep row and "
                      "the timing only.)"]
            continue
        nfes = sorted({t["nfe"] for t in trip if t["solver"] != "dopri5"})
        lines += ["", "Round trip (invert test images to noise, regenerate; RMS to the input):", "",
                  "| solver | " + " | ".join(f"@{n}" for n in nfes) + " |", "|---" * (1 + len(nfes)) + "|"]
        for name in sorted({t["solver"] for t in trip}):
            cells = {t["nfe"]: t["rms"] for t in trip if t["solver"] == name}
            if name == "dopri5":
                lines.append(f"| dopri5 ({list(cells)[0]} NFE) | {list(cells.values())[0]:.4f} |"
                             + " |" * (len(nfes) - 1))
                continue
            lines.append(f"| {name} | " + " | ".join(f"{cells[n]:.4f}" if n in cells else "-" for n in nfes) + " |")
    return "\n".join(lines)


def main() -> None:
    readme = ROOT / "README.md"
    text = readme.read_text()
    quality = [quality_table(name) for name in QUALITY_TITLE if name == "quality.json" or (RESULTS / name).exists()]
    block = "\n\n".join([START + "\n" + speed_table(), *quality, dfm_regimes_table(), solvers_table(), solvers_learned_table() + "\n" + END])
    if START in text:
        text = re.sub(re.escape(START) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.replace("BENCHMARK_TABLES", block)
    readme.write_text(text)


if __name__ == "__main__":
    main()
