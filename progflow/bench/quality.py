"""``progflow bench quality``: base flow matching vs DFM (2 and 3 stages) vs FlowAR vs the
multi-stage baselines (a cascade of two models, Pyramidal Flow) at equal training compute
on Fashion-MNIST 32px: same batch, steps and lr; base, DFM, cascade and Pyramidal Flow the
same width, depth and token count, FlowAR the same training FLOPs per image.

For every arm and seed: train, score the EMA weights at every checkpoint (FD-vs-step
curve, ``n_curve`` samples at cfg 1), then score the final weights with ``n`` samples at
40 NFE for each guidance scale (FlowAR: 40 flow-head evaluations, 10 per scale; the
cascade 30 + 10, Pyramidal Flow 20 + 20). Base, 2-stage DFM, FlowAR, the cascade and
Pyramidal Flow train every seed; the other arms (3 stages, the ablations) the
first seed, and further seeds only when named in ``--arms``. Also an interleaved
step-time measurement of the main arms at the same batch, and the counted FLOPs of
sampling one image per arm. Results go to ``benchmarks/results/quality[_emoji][_SIZE][_tiny].json``
(``--dataset emoji``; ``_SIZE`` for sizes other than ``xs``) and an FD-vs-step plot beside it; the
runs to ``RUNS_DIR/bench-quality[-emoji][-SIZE][-tiny]/ARM-seedN``. Multi-stage runs also get
their stage diagnostics (``progflow diagnose``).

On emoji, the latent twins of base and DFM (``base-latent``, ``dfm2-latent``, and ``-eq`` with
the scale-equivariant autoencoder; :data:`~progflow.bench.arms.LATENT_ARMS`) train when named
in ``--arms``, at the pixel base's training FLOPs (their steps scaled up); their autoencoders
train first, once per runs folder, and are scored with ``progflow eval-ae`` (``autoencoders``
in the result). Their sampling times include decoding.

Each finished run keeps its scores in ``<run>/bench_result.json`` (with the settings
they were made with), so an interrupted benchmark picks up where it stopped and
``--arms`` can split the work over processes (e.g. two 1-thread processes on two cores);
a final call without ``--arms`` then collects every run and measures the step time alone.
Runs recorded in an earlier result file with the same settings whose run directories are
absent are kept from that file (marked ``collected_from``), not dropped or retrained.

``--extra-cfg-scales`` scores further guidance scales on the finished runs of the chosen
arms with the final scores' settings (``n`` samples, their seed and NFE), kept per run in
``<run>/guidance.json``: the cached scores stay valid, nothing is retrained, and every
later call (``--collect`` too) reads them back. The summary then gives each arm's best FD
over all the scales scored (``fd_best``), since one fixed scale can favour one arm: a
model that over-shoots at cfg 2 is not worse than one that needs cfg 2.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import torch

from progflow.bench.arms import (ARMS, DATASETS, FINAL_SEED, LATENT_ARMS, SAMPLE_ABLATIONS, SEED_ARMS,
                                 TRAIN_ABLATIONS, _config, _main_arms, _sampler, _settings, autoencoder_config,
                                 latent_overrides, result_names)
from progflow.bench.common import logged_train_seconds, result_header, train_steps, write_result
from progflow.bench.plots import quality_plot
from progflow.bench.quality_summary import earlier_runs, summarize
from progflow.errors import ConfigError


def _score(cfg, model, extractor, ref, *, n: int, seed: int, nfe: int, cfg_scale: float, band_ref=None,
           solver=None, shift: float | None = None) -> dict:
    """Sample ``n`` images and score them; with ``band_ref`` (uint8 NHWC reference images)
    also the coarse/fine band scores (:func:`progflow.eval.band_scores`). ``solver`` /
    ``shift`` default to the run's. ``ref``: reference features ``(M, D)``, or
    ``(features, labels)`` to weight the reference to the samples' class mix."""
    from progflow.data import center_crop
    from progflow.eval import band_scores, evaluate_arrays
    from progflow.sampling import generate, to_nhwc

    t0 = time.perf_counter()
    images, labels, used, _ = generate(cfg, model, n=n, seed=seed, nfe=nfe, cfg_scale=cfg_scale, progress=False,
                                       solver=solver, shift=shift)
    dt = time.perf_counter() - t0
    ref, ref_labels = ref if isinstance(ref, tuple) else (ref, None)
    r = evaluate_arrays(to_nhwc(images), labels.numpy(), extractor, ref, ref_labels=ref_labels)
    out = {"cfg": cfg_scale, "nfe": used, "n": n, "fd": r["fd"], "precision": r["precision"], "recall": r["recall"],
           "class_accuracy": r["class_accuracy"], "sample_s": dt}
    if band_ref is not None:  # (synthetic tiny runs make 32px frames; the reference is 28px)
        out.update({k: v for k, v in band_scores(to_nhwc(center_crop(images, band_ref.shape[1:3])), extractor,
                                                  band_ref).items() if k != "n"})
    return out


def _add_bands(run: Path, result: dict, key: dict, s: dict, extractor, ref, band_ref) -> dict:
    """Band scores for the final cfg-1 samples of a run scored without them: the same
    samples again (same seed), then the cached result is rewritten."""
    from progflow.sampling import load_run

    final = [f for f in result["final"] if f["cfg"] == 1.0]
    if not final or "fd_coarse" in final[0]:
        return result
    cfg_r, model, _ = load_run(run)
    again = _final_score(cfg_r, model, extractor, ref, s, 1.0, band_ref=band_ref)
    final[0].update(fd_coarse=again["fd_coarse"], fine_rms_ratio=again["fine_rms_ratio"])
    write_result({"key": key, "result": result}, run / "bench_result.json")
    print(f"  {result['arm']} seed {result['seed']}: coarse FD {again['fd_coarse']:.2f}, "
          f"fine RMS ratio {again['fine_rms_ratio']:.3f}", flush=True)
    return result


def _cache_key(cfg, s: dict, extractor, sample_variants: dict) -> dict:
    """What a run's scores depend on; a cached result with a different key is redone."""
    keep = ("n", "n_curve", "nfe", "cfg_scales")
    sampler = {k: v for k, v in _sampler(s).items() if v not in ("euler", 1.0)}  # the defaults: keys as before
    return {"config": cfg.to_dict(), **{k: s[k] for k in keep}, "features": str(extractor.name),
            "sample_variants": sample_variants, **sampler}


def _key_matches(saved_key: dict | None, key: dict) -> bool:
    """Whether a key saved beside a run's scores is ``key``. The saved config is read as
    today's code would (fields added since take their defaults), so a run scored before a
    new config field existed stays cached; both sides compared as JSON (tuples as lists)."""
    saved_key = saved_key or {}
    if isinstance(saved_key.get("config"), dict):
        from progflow.config import TrainConfig
        from progflow.errors import ConfigError

        try:
            saved_key = {**saved_key, "config": TrainConfig.from_dict(saved_key["config"]).to_dict()}
        except ConfigError:
            return False
    return json.loads(json.dumps(saved_key)) == json.loads(json.dumps(key))


def _cached(run: Path, key: dict) -> dict | None:
    path = run / "bench_result.json"
    if not path.exists():
        return None
    saved = json.loads(path.read_text())
    return saved["result"] if _key_matches(saved.get("key"), key) else None


def _final_score(cfg, model, extractor, ref, s: dict, cfg_scale: float, band_ref=None) -> dict:
    """A final score of the benchmark: ``n`` samples from seed ``FINAL_SEED`` at its NFE and sampler."""
    return _score(cfg, model, extractor, ref, n=s["n"], seed=FINAL_SEED, nfe=s["nfe"], cfg_scale=cfg_scale,
                  band_ref=band_ref, **_sampler(s))


def _train_and_score(name, cfg, root: Path, s: dict, extractor, ref, sample_variants: dict, band_ref) -> dict:
    run = root / f"{name}-seed{cfg.seed}"
    key = _cache_key(cfg, s, extractor, sample_variants)
    result = _cached(run, key)
    if result is not None:
        print(f"  {name} seed {cfg.seed}: finished earlier, scores read from {run / 'bench_result.json'}", flush=True)
        return _add_bands(run, result, key, s, extractor, ref, band_ref)
    result = _train_and_score_uncached(name, cfg, run, s, extractor, ref, sample_variants, band_ref)
    write_result({"key": key, "result": result}, run / "bench_result.json")
    return result


def _train_and_score_uncached(name, cfg, run: Path, s: dict, extractor, ref, sample_variants: dict,
                              band_ref) -> dict:
    from progflow import checkpoint as ckpt
    from progflow.sampling import load_run
    from progflow.train import train

    train(cfg, run, resume=True, progress=False)
    wall = logged_train_seconds(run / "log.jsonl", cfg.batch_size)  # summed over resumes, downtime left out
    log = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]
    ips = statistics.median(r["images_per_s"] for r in log) if log else None
    curve = []
    for d in ckpt.list_checkpoints(run / "ckpt"):
        step = int(d.name.split("_")[1])
        cfg_r, model, _ = load_run(run, step=step)
        r = _score(cfg_r, model, extractor, ref, n=s["n_curve"], seed=100, nfe=s["nfe"], cfg_scale=1.0, **_sampler(s))
        curve.append({"step": step, "fd": r["fd"], "class_accuracy": r["class_accuracy"]})
        print(f"  {name} seed {cfg.seed} step {step}: FD {r['fd']:.2f} (n={s['n_curve']})", flush=True)
    cfg_r, model, _ = load_run(run)
    final = [_final_score(cfg_r, model, extractor, ref, s, w, band_ref=band_ref if w == 1.0 else None)
             for w in s["cfg_scales"]]
    for f in final:
        print(f"  {name} seed {cfg.seed} final cfg {f['cfg']}: FD {f['fd']:.2f} acc {f['class_accuracy']:.3f}", flush=True)
    variants = {}
    for vname, over in sample_variants.items():
        over = dict(over)
        nfe = over.pop("nfe", s["nfe"])
        vcfg = cfg_r.with_overrides(over) if over else cfg_r
        variants[vname] = _score(vcfg, model, extractor, ref, n=s["n"], seed=FINAL_SEED, nfe=nfe, cfg_scale=1.0,
                                 **_sampler(s))
        print(f"  {name} sampling variant {vname}: FD {variants[vname]['fd']:.2f}", flush=True)
    return {"arm": name, "seed": cfg.seed, "preset": cfg.preset, "method": cfg.to_dict()["method"],
            "train_steps": cfg.steps, "autoencoder": cfg_r.data.autoencoder or None,
            "train_wall_s": wall, "train_images_per_s_median": ips, "curve": curve, "final": final,
            "sampling_variants": variants}


def step_time_ratio(s: dict, tiny: bool, rounds: int = 6, steps: int = 5) -> dict:
    """Interleaved timing of one training step per arm (same batch), median over rounds."""
    from progflow.methods import build_method
    from progflow.nn.dit import build_model

    setups = {}
    for arm, (pattern, over) in _main_arms(s).items():
        cfg = _config(pattern, over, 0, s, tiny)
        torch.manual_seed(0)
        model, method = build_model(cfg), build_method(cfg)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        x = torch.rand(cfg.batch_size, *cfg.data.shape) * 2 - 1
        y = torch.arange(cfg.batch_size) % cfg.data.num_classes
        setups[arm] = (model, method, opt, x, y)
    times = {arm: [] for arm in setups}
    for r in range(1 if tiny else rounds):
        for arm, (model, method, opt, x, y) in setups.items():
            dt = train_steps(method, model, opt, x, y, 1 if tiny else steps)
            if r or tiny:  # round 0 is a warm-up
                times[arm].append(dt)
    med = {arm: statistics.median(v) for arm, v in times.items()}
    return {"step_s": med, "ratio_to_base": {arm: med[arm] / med["base"] for arm in med}}


def run_timing(args) -> Path:
    s = _settings(args)
    timing = step_time_ratio(s, args.tiny, rounds=11, steps=5)
    out = Path(args.out_dir) / f"step_time_{s['size']}{'_tiny' if args.tiny else ''}.json"
    write_result({**result_header(args.seed), "benchmark": "step_time", "size": s["size"],
                  "batch_size": s["batch_size"], **timing}, out)
    print(f"step time ({s['size']}, batch {s['batch_size']}): {timing['step_s']}; ratio to base "
          f"{timing['ratio_to_base']}; wrote {out}")
    return out


def _check_sampler(jobs, s: dict, tiny: bool) -> None:
    """Refuse a solver that cannot spend the benchmark's NFE on some arm, before training
    (the arms' samplers are dry-run: no network is called)."""
    from types import SimpleNamespace

    from progflow.methods import build_method
    from progflow.solvers.phases import record_phases

    if _sampler(s) == {"solver": "euler", "shift": 1.0}:
        return
    for arm, pattern, over, seed, _ in jobs:
        cfg = _config(pattern, over, seed, s, tiny)
        try:
            record_phases(build_method(cfg), SimpleNamespace(num_classes=cfg.data.num_classes), torch.zeros(1).long(),
                          nfe=s["nfe"], **_sampler(s))
        except ConfigError as e:  # (the dry run's spec is named "record")
            raise ConfigError(f"arm {arm}: {str(e).replace('solver record', 'solver ' + s['solver'])}") from None


# settings added since earlier results were written
def _sample_cost(cfg, s: dict) -> dict:
    """GFLOP of sampling one image at the benchmark's NFE and the calls of each network part."""
    from progflow.info import sampling_cost
    from progflow.nn.dit import build_model

    cost = sampling_cost(cfg, build_model(cfg).eval(), nfe=s["nfe"])
    return {"nfe": cost["nfe"], "gflop": cost["flops"] / 1e9,
            **({"calls": {k: v["calls"] for k, v in cost["parts"].items()}} if "parts" in cost else {})}


GUIDANCE_FILE = "guidance.json"  # extra guidance scales scored on a finished run


def _guidance(run: Path, cfg, s: dict, extractor, ref, scales) -> list[dict]:
    """Scores of the finished ``run`` at the guidance ``scales`` beyond the benchmark's own
    (same samples' settings as its final scores), computed once and kept in
    ``RUN/guidance.json`` under the run's cache key; with ``scales`` empty, those saved."""
    from progflow.sampling import load_run

    path, key = run / GUIDANCE_FILE, _cache_key(cfg, s, extractor, {})
    key.pop("cfg_scales")
    saved = json.loads(path.read_text()) if path.exists() else {}
    scores = saved.get("scores", []) if _key_matches(saved.get("key"), key) else []
    todo = [w for w in dict.fromkeys(scales) if w not in s["cfg_scales"] and w not in {g["cfg"] for g in scores}]
    if todo:
        cfg_r, model, _ = load_run(run)
        for w in todo:
            scores = sorted([*scores, _final_score(cfg_r, model, extractor, ref, s, w)], key=lambda g: g["cfg"])
            print(f"  {run.name} cfg {w}: FD {next(g['fd'] for g in scores if g['cfg'] == w):.2f}", flush=True)
            write_result({"key": key, "scores": scores}, path)
    return scores


def _diagnose(run: Path, cfg, n_ref: int, data_dir) -> dict | None:
    """Stage diagnostics (:func:`progflow.diagnose.diagnose_run`) of a finished multi-stage
    run, kept in ``RUN/diagnose.json`` and read back from there; None for other methods."""
    from progflow.diagnose import DIAGNOSE_FILE, diagnose_run
    from progflow.methods import build_method

    method = build_method(cfg)
    if getattr(method, "S", 1) < 2 or not hasattr(method, "stage_diagnostics"):
        return None
    path = run / DIAGNOSE_FILE
    if path.exists():
        return json.loads(path.read_text())
    print(f"  {run.name}: stage diagnostics", flush=True)
    return diagnose_run(run, n=min(1000, n_ref), data_dir=data_dir, progress=False)


AE_RESULT = "bench_ae.json"  # an autoencoder's training time and eval-ae scores, beside its run


def _autoencoder(root: Path, preset: str, tiny: bool, data_dir) -> dict:
    """Train the autoencoder ``preset`` into ``root/preset`` (resumed if partly done) and
    score it with eval-ae; the record is kept in ``AE_RESULT`` and read back from there."""
    from progflow.eval.reconstruction import evaluate_autoencoder
    from progflow.train import train

    run = root / preset
    if (run / AE_RESULT).exists():
        return json.loads((run / AE_RESULT).read_text())
    cfg = autoencoder_config(preset, tiny)
    print(f"[autoencoder {preset}] {cfg.steps} training steps", flush=True)
    train(cfg, run, resume=True, progress=False)
    scores = evaluate_autoencoder(run, n=16 if tiny else None, data_dir=data_dir, progress=False)
    from progflow.info import model_info

    record = {"preset": preset, "steps": cfg.steps, "train_wall_s": logged_train_seconds(run / "log.jsonl", cfg.batch_size),
              "decode_gflop": model_info(cfg)["decoder_flops"] / 1e9,
              **{k: scores[k] for k in ("latent_shape", "psnr", "psnr_half", "fd_reconstructions", "fd_originals")}}
    write_result(record, run / AE_RESULT)
    print(f"  autoencoder {preset}: PSNR {record['psnr']:.2f} dB, FD of reconstructions {record['fd_reconstructions']}",
          flush=True)
    return record


def run_quality(args) -> Path:
    from progflow.eval import get_extractor
    from progflow.eval.evaluate import reference_images, reference_set
    from progflow.eval.features import default_spec

    if args.timing_only:
        return run_timing(args)
    s = _settings(args)
    tiny = args.tiny
    data = DATASETS[s["dataset"]]
    folder, file = result_names(s, tiny)
    root, out = Path(args.runs_dir) / folder, Path(args.out_dir) / file
    # (arm, preset pattern, overrides, seed, optional): arms outside SEED_ARMS train their
    # further seeds only when named in --arms; finished ones are always collected
    jobs = []
    seed_arms = SEED_ARMS if data["arms"] is None else data["arms"]
    for arm, (pattern, over) in {**ARMS, **(TRAIN_ABLATIONS if s["ablations"] else {})}.items():
        if data["arms"] is not None and arm not in data["arms"]:
            continue
        jobs += [(arm, pattern, over, seed, arm not in seed_arms and i > 0) for i, seed in enumerate(s["seeds"])]
    for arm in data.get("latent_arms", ()):  # trained only when named in --arms
        over = latent_overrides(arm, root, s, tiny)
        jobs += [(arm, LATENT_ARMS[arm][0], over, seed, True) for seed in s["seeds"]]
    known = {arm for arm, *_ in jobs}
    chosen = set(args.arms or known)
    if chosen - known:
        raise ConfigError(f"unknown --arms {sorted(chosen - known)}; choose from {sorted(known)}")
    _check_sampler([j for j in jobs if j[0] in chosen], s, tiny)
    extractor = get_extractor(default_spec(s["dataset"]), data_dir=args.data_dir)
    ref = reference_set(extractor, data_dir=args.data_dir, dataset=s["dataset"])  # (features, labels)
    band_ref = reference_images(s["dataset"], args.data_dir)[0]
    header = {**result_header(args.seed), "benchmark": "quality", "settings": s}
    print(f"quality benchmark: {s}", flush=True)
    earlier, timing = earlier_runs(out, s)
    runs = {}
    autoencoders = {ae: json.loads((root / ae / AE_RESULT).read_text()) for ae in {v[1] for v in LATENT_ARMS.values()}
                    if (root / ae / AE_RESULT).exists()}  # trained by an earlier or a parallel call
    for arm, pattern, over, seed, optional in jobs:
        cfg = _config(pattern, over, seed, s, tiny)
        variants = SAMPLE_ABLATIONS.get(arm, {}) if (seed == s["seeds"][0] and s["ablations"]) else {}
        run = root / f"{arm}-seed{seed}"
        if not run.exists() and (arm, seed) in earlier:  # its run directory is not on this machine
            runs[run] = earlier[arm, seed]
        elif arm in chosen and not (optional and args.arms is None) and not args.collect:
            if arm in LATENT_ARMS:  # its autoencoder first (trained once per runs folder, then read)
                autoencoders[LATENT_ARMS[arm][1]] = _autoencoder(root, LATENT_ARMS[arm][1], tiny, args.data_dir)
            print(f"[{arm} seed {seed}] {cfg.steps} training steps", flush=True)
            runs[run] = _train_and_score(arm, cfg, root, s, extractor, ref, variants, band_ref)
        elif (cached := _cached(run, _cache_key(cfg, s, extractor, variants))) is not None:
            runs[run] = cached  # finished by another process
        if run in runs and run.exists() and not runs[run].get("collected_from"):
            # the training time from the log (results cached before this took the last segment's wall clock)
            runs[run]["train_wall_s"] = logged_train_seconds(run / "log.jsonl", cfg.batch_size)
            if not tiny and (diag := _diagnose(run, cfg, len(ref[0]), args.data_dir)) is not None:
                runs[run]["diagnose"] = {k: diag[k] for k in ("n", "scores", "training_share") if k in diag}
            extra = (args.extra_cfg_scales or []) if arm in chosen and not args.collect else []
            if guidance := _guidance(run, cfg, s, extractor, ref, extra):
                runs[run]["guidance"] = guidance
        done = [runs[r] for r in sorted(runs)]
        write_result({**header, "step_time": timing, "autoencoders": autoencoders, "runs": done,
                      "summary": summarize(done, s["cfg_scales"])}, out)
    if args.arms is None and not args.collect:  # the whole benchmark: time the step with the CPU to itself
        timing = step_time_ratio(s, tiny)
        print(f"step time ratio to base: {timing['ratio_to_base']}", flush=True)
    done = [runs[r] for r in sorted(runs)]
    summary = summarize(done, s["cfg_scales"])
    for arm, row in summary.items():  # counted FLOPs of sampling one image (cfg 1), as `progflow info`
        cfg = _config(*defined[arm], s["seeds"][0], s, tiny) if arm in (defined := {**ARMS, **TRAIN_ABLATIONS, **{a: (v[0], {}) for a, v in LATENT_ARMS.items()}}) else None
        if cfg is not None and not getattr(cfg.method, "standardize", False):  # (that needs the data's stage std)
            row["sample_cost"] = _sample_cost(cfg, s)
            if arm in LATENT_ARMS and (ae := autoencoders.get(LATENT_ARMS[arm][1])) is not None:
                row["sample_cost"]["decode_gflop"] = ae["decode_gflop"]  # once per image, after the solve
                row["sample_cost"]["gflop"] += ae["decode_gflop"]
    write_result({**header, "step_time": timing, "autoencoders": autoencoders, "runs": done, "summary": summary}, out)
    plot = out.with_suffix(".png")
    quality_plot(done, plot, data["title"])
    print(json.dumps(summary, indent=1))
    print(f"wrote {out} and {plot}")
    return out
