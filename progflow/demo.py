"""``progflow demo`` / ``make demo``: train fmnist-base-s briefly, sample, score, summarise.
``--dataset emoji`` (``make demo-emoji``) does the same with emoji-base-xs on the 64px emoji."""

from __future__ import annotations

import json
import time
from pathlib import Path

from progflow.presets import preset_config

# About 10 minutes of training on a 2-core CPU (~1 s per step of 64 images at 4M parameters).
DEMO_STEPS = 600
DEMO_NFE = 20
DEMO_CFG = 1.5
DEMO_PRESETS = {"fashion-mnist": "fmnist-base-s", "emoji": "emoji-base-xs"}


def run_demo(*, out: Path, steps: int | None = None, n: int = 1000, nfe: int | None = None,
             cfg_scale: float | None = None, seed: int = 0, data_dir: str | None = None,
             dataset: str = "fashion-mnist", bf16: bool | None = None) -> dict:
    """``bf16``: bfloat16 autocast for training and sampling; None decides as :func:`_precision`
    says (on for the Fashion-MNIST demo where the machine multiplies bfloat16 natively)."""
    from progflow.checks import check_count, check_out_dir, check_sampling_args
    from progflow.runlock import run_lock

    if steps is not None:
        check_count(steps, "--steps")
    check_sampling_args(n=n, nfe=nfe, cfg_scale=cfg_scale, seed=seed)
    with run_lock(check_out_dir(out)):  # the demo writes its samples and scores into the run too
        return _demo(out=Path(out), steps=steps, n=n, nfe=nfe, cfg_scale=cfg_scale, seed=seed, data_dir=data_dir,
                     dataset=dataset, bf16=bf16)


def _precision(out: Path, bf16: bool | None, dataset: str) -> bool:
    """The demo's bf16 setting: the user's choice; else the existing run's (a resume must not
    change it); else on for the Fashion-MNIST demo (size ``s``, about 2x faster under bf16)
    where the machine multiplies bfloat16 natively. The emoji demo's ``xs`` model trains
    slower under bf16 (docs/speed.md), so it stays in float32 unless asked."""
    from progflow.hardware import native_bf16

    if bf16 is not None:
        return bf16
    saved = out / "config.json"
    if saved.exists():
        try:
            return bool(json.loads(saved.read_text()).get("bf16", False))
        except (OSError, ValueError):
            pass  # train() reports a broken run folder in its own words
    return dataset == "fashion-mnist" and native_bf16("cpu")


def _demo(*, out: Path, steps, n, nfe, cfg_scale, seed, data_dir, dataset, bf16) -> dict:
    from progflow.results import result_header
    from progflow.eval import evaluate_npz, get_extractor
    from progflow.eval.features import default_spec
    from progflow.sampling import sample_run
    from progflow.train import train

    t0 = time.time()
    bf16 = _precision(out, bf16, dataset)
    overrides = {"steps": steps or DEMO_STEPS, "seed": seed, "warmup": 50, "lr": 1e-3,
                 "ckpt_every": 100, "sample_every": 200, "bf16": bf16}
    cfg = preset_config(DEMO_PRESETS[dataset], **overrides)
    if data_dir:
        cfg = cfg.with_overrides({"data.data_dir": data_dir})
    print(f"[demo] training {cfg.preset} for {cfg.steps} steps of batch {cfg.batch_size} into {out}, "
          + ("bfloat16 autocast (native on this machine; --no-bf16 for float32)" if bf16 else "float32"))
    train(cfg, out, resume=True)
    t_train = time.time() - t0
    print("[demo] preparing the scoring classifier (trained once, then cached)")
    extractor = get_extractor(default_spec(dataset), data_dir=data_dir)
    t_classifier = time.time() - t0 - t_train
    print(f"[demo] sampling {n} images")
    t1 = time.time()
    s = sample_run(out, n=n, out=out / "samples.npz", seed=seed, nfe=nfe or DEMO_NFE,
                   cfg_scale=DEMO_CFG if cfg_scale is None else cfg_scale, bf16=bf16)
    t_sample = time.time() - t1
    scores = evaluate_npz(s["npz"], extractor=extractor, data_dir=data_dir, dataset=dataset)
    total = time.time() - t0
    minutes = {"total": total / 60, "training": t_train / 60, "classifier": t_classifier / 60,
               "sampling": t_sample / 60}
    record = {**result_header(seed), **scores, "sampling": s, "bf16": bf16,
              "wall_minutes": {k: round(v, 2) for k, v in minutes.items()}}
    (out / "scores.json").write_text(json.dumps(record, indent=2) + "\n")
    lines = [
        "",
        "=" * 64,
        f"progflow demo: class-conditional flow matching on {'Fashion-MNIST' if dataset == 'fashion-mnist' else 'emoji'}",
        "=" * 64,
        f"model       {cfg.preset}, {cfg.steps} steps x batch {cfg.batch_size}, "
        f"{'bfloat16 autocast' if bf16 else 'float32'}",
        f"samples     {s['n']} at {s['nfe']} NFE, cfg {s['cfg_scale']}",
        f"grid        {s['grid']}",
        f"scores      {out / 'scores.json'}",
        f"FD          {scores['fd']:.2f}   (features: {scores['features']}, vs {scores['reference']})",
        f"class acc.  {scores['class_accuracy']:.3f}",
        f"precision   {scores['precision']:.3f}   recall {scores['recall']:.3f}   density {scores['density']:.3f}   "
        f"coverage {scores['coverage']:.3f}",
        f"time        {total / 60:.1f} min (training {t_train / 60:.1f}, scoring classifier {t_classifier / 60:.1f}, "
        f"sampling {t_sample / 60:.1f})",
        "=" * 64,
    ]
    print("\n".join(lines))
    return scores
