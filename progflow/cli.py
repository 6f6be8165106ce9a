"""``progflow`` command line. Every flag is a field of a config or an argument of the
Python function the command calls (``train``, ``sample_run``, ``evaluate_npz``, ...).

Bad input ends with one line ``progflow: error: ...`` on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from pathlib import Path

from progflow.config import TrainConfig, parse_override
from progflow.errors import ProgflowError

_SCALAR_TYPES = {"int": int, "float": float, "str": str}


def _add_config_flags(p: argparse.ArgumentParser) -> None:
    """One flag per top-level scalar field of TrainConfig (``--batch-size`` -> batch_size)."""
    for f in fields(TrainConfig):
        t = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        flag = "--" + f.name.replace("_", "-")
        if f.name == "preset":
            continue
        if t == "bool":
            p.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None,
                           help=f"(TrainConfig.{f.name}; default {f.default})")
        elif t in _SCALAR_TYPES:
            p.add_argument(flag, dest=f.name, type=_SCALAR_TYPES[t], default=None, metavar=t.upper(),
                           help=f"(TrainConfig.{f.name}; default from the preset, else {f.default})")


def _config_from_args(args) -> TrainConfig:
    from progflow.presets import preset_config

    top = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name, None) is not None}
    if args.config:
        try:
            base = TrainConfig.from_dict(json.loads(Path(args.config).read_text()))
        except FileNotFoundError:
            raise ProgflowError(f"config file {args.config} does not exist") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ProgflowError(f"config file {args.config} is not valid JSON ({str(e).splitlines()[0]})") from None
        except OSError as e:
            raise ProgflowError(f"config file {args.config} cannot be read ({e.strerror})") from None
    elif args.resume and not args.preset and (_train_out(args) / "config.json").exists():
        from progflow.train import load_run_config

        base = load_run_config(_train_out(args))
    else:
        base = preset_config(args.preset or args.default_preset)
    overrides = dict(parse_override(s) for s in args.set or [])
    if args.data_dir:
        overrides["data.data_dir"] = args.data_dir
    for k, v in top.items():
        overrides[k] = v
    return base.with_overrides(overrides) if overrides else base


def _train_out(args) -> Path:
    return Path(args.out or f"runs/{args.preset or args.default_preset}")


def _require_run(out: Path, what: str) -> None:
    """``--resume`` continues a run: in a folder without one it says so instead of starting."""
    from progflow.train import holds_run

    if not holds_run(out):
        raise ProgflowError(f"--resume: {out} holds no {what} to continue (no config.json, log or checkpoint); "
                            "drop --resume to start one")


def cmd_train(args) -> None:
    from progflow.train import train

    if args.resume:
        _require_run(_train_out(args), "run")
    cfg = _config_from_args(args)
    autoencoder = cfg.method.name == "autoencoder"
    if args.command == "train-ae" and not autoencoder:
        raise ProgflowError(f"train-ae trains autoencoders (presets {', '.join(_ae_presets())}); "
                            f"{cfg.preset or 'this config'} is a {cfg.method.name} model: use `progflow train`")
    out = _train_out(args) if args.resume else Path(args.out or f"runs/{cfg.preset or 'run'}")
    last = train(cfg, out, resume=args.resume, overwrite=args.overwrite, progress=not args.no_progress)
    if os.environ.get("RANK", "0") == "0":  # under torchrun only the main process reports
        print(json.dumps({"run": str(out), "checkpoint": str(last)}))


def _ae_presets() -> list[str]:
    from progflow.presets import preset_config, preset_names

    return [n for n in preset_names() if preset_config(n).method.name == "autoencoder"]


def cmd_eval_ae(args) -> None:
    from progflow.eval.reconstruction import evaluate_autoencoder

    print(json.dumps(evaluate_autoencoder(args.run_dir, n=args.n, data_dir=args.data_dir, out=args.out,
                                          batch_size=args.batch_size, progress=not args.no_progress), indent=2))


def cmd_sample(args) -> None:
    from progflow.sampling import sample_run

    summary = sample_run(args.run_dir, n=args.n, out=args.out, seed=args.seed, nfe=args.nfe, cfg_scale=args.cfg,
                         cfg_interval=tuple(args.cfg_interval) if args.cfg_interval else None,
                         batch_size=args.batch_size, step=args.step, ema=not args.raw, previews=args.previews,
                         progress=not args.no_progress, device=args.device, solver=args.solver, shift=args.shift,
                         rtol=args.rtol, atol=args.atol, compile=args.compile, bf16=args.bf16)
    print(json.dumps(summary, indent=2))


def cmd_eval(args) -> None:
    from progflow.checks import check_count
    from progflow.eval import evaluate_npz, get_extractor, load_samples
    from progflow.eval.features import default_spec

    load_samples(args.file)  # the samples first: a bad file is found before the classifier is loaded or built
    check_count(args.classifier_seed, "--classifier-seed", minimum=0)
    extractor = get_extractor(args.features or default_spec(args.dataset), data_dir=args.data_dir,
                              seed=args.classifier_seed)
    print(json.dumps(evaluate_npz(args.file, extractor=extractor, data_dir=args.data_dir, dataset=args.dataset),
                     indent=2))


def cmd_build_classifier(args) -> None:
    from progflow.eval import build_fmnist_classifier

    from progflow.eval import ClassifierFeatures, load_classifier
    from progflow.eval.classifier import SHIPPED, load_shipped_classifier
    from progflow.eval.emoji import EMOJI_EPOCHS, SHIPPED_EMOJI, build_emoji_classifier

    report = {}
    if args.dataset == "emoji":
        path, acc, report["per_category"] = build_emoji_classifier(
            data_dir=args.data_dir, seed=args.seed, out=args.out, epochs=EMOJI_EPOCHS if args.epochs is None else args.epochs)
        shipped = SHIPPED_EMOJI
    else:
        path, acc = build_fmnist_classifier(data_dir=args.data_dir, seed=args.seed, out=args.out,
                                            epochs=2 if args.epochs is None else args.epochs)
        shipped = SHIPPED
    built = ClassifierFeatures(load_classifier(path)).name
    report = {"classifier": str(path), "test_accuracy": acc, "features": built, **report}
    if args.seed in shipped:  # a check that this machine reproduces the packaged weights
        report["matches_packaged"] = built == ClassifierFeatures(load_shipped_classifier(args.seed,
                                                                                          shipped=shipped)).name
    print(json.dumps(report))


def cmd_diagnose(args) -> None:
    from progflow.diagnose import diagnose_run

    print(json.dumps(diagnose_run(args.run_dir, n=args.n, seed=args.seed, batch_size=args.batch_size,
                                  step=args.step, data_dir=args.data_dir, features=args.features, out=args.out,
                                  progress=not args.no_progress), indent=2))


def cmd_fetch_data(args) -> None:
    from progflow.data.emoji import fetch_emoji

    fetch_emoji(args.data_dir)


def cmd_info(args) -> None:
    from progflow.info import model_info
    from progflow.presets import preset_config

    target = args.run_or_preset
    if Path(target).is_dir():
        from progflow.train import load_run_config

        cfg = load_run_config(Path(target))
    else:
        cfg = preset_config(target)
    info = model_info(cfg)
    if not cfg.data.frames and "sample_flops" in info:  # a generator of images (not an autoencoder)
        from progflow.fit_solver import sidenet_info

        try:
            info["sidenet"] = sidenet_info(cfg, target if Path(target).is_dir() else None)
        except ProgflowError as e:  # a method the BA-solver does not cover (yet)
            info["sidenet"] = {"available": False, "reason": str(e)}
    print(json.dumps(info, indent=2))


def cmd_fit_solver(args) -> None:
    from progflow.fit_solver import fit_config_from_args, fit_solver

    if args.resume:
        from progflow.solvers.ba import SOLVER_DIR

        _require_run(Path(args.out) if args.out else Path(args.run_dir) / SOLVER_DIR, "solver fit")
    last = fit_solver(args.run_dir, fit_config_from_args(args), out=args.out, resume=args.resume,
                      progress=not args.no_progress)
    print(json.dumps({"run": args.run_dir, "solver_checkpoint": str(last)}))


def cmd_edit(args) -> None:
    from progflow.edit import edit_run

    summary = edit_run(args.run_dir, images=args.images, to_class=args.to_class, solver=args.solver, nfe=args.nfe,
                       cfg_scale=args.cfg, shift=args.shift, out=args.out, batch_size=args.batch_size,
                       step=args.step, device=args.device)
    print(json.dumps(summary, indent=2))


def cmd_presets(args) -> None:
    from progflow.presets import preset_config, preset_names

    for name in preset_names():
        c = preset_config(name)
        print(f"{name:18s} {c.method.name:5s} {c.data.dataset:14s} size={c.model.size} steps={c.steps} "
              f"batch={c.batch_size}")


def cmd_bench(args) -> None:
    from progflow.bench import run_benchmark

    run_benchmark(args.kind, args)


def cmd_demo(args) -> None:
    from progflow.demo import run_demo

    run_demo(out=Path(args.out or f"runs/demo{'-emoji' if args.dataset == 'emoji' else ''}"), steps=args.steps,
             n=args.n, nfe=args.nfe, cfg_scale=args.cfg, seed=args.seed, data_dir=args.data_dir, dataset=args.dataset,
             bf16=args.bf16)


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line, like every other bad input (``--help`` shows the usage)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="progflow", description="Progressive flow-matching generation: train, sample, "
                                "score and benchmark flow-matching models (base, DFM) on images and video.")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for name, default, what in (("train", "fmnist-base-s", "a generator"), ("train-ae", "emoji-ae", "an autoencoder")):
        t = sub.add_parser(name, help=f"train {what} from a preset", description=(
            "Train a model. Flags mirror TrainConfig; nested fields with --set (e.g. --set model.depth=4 --set "
            "method.stage_probs=[0.8,0.2]). A latent run: --set data.autoencoder=RUN (a train-ae run) or "
            "diffusers:FOLDER, or an emoji-latent-* preset." if name == "train" else
            "Train the latent autoencoder (KL, 4x downsampling; presets emoji-ae, emoji-ae-eq with the "
            "scale-equivariance term, fmnist-ae) with the trainer of every run: progress, atomic checkpoints, exact "
            "--resume, torchrun. Then train a generator on its latents with --set data.autoencoder=OUT."))
        t.add_argument("--preset", help=f"named preset (see `progflow presets`); default {default}")
        t.add_argument("--config", help="a TrainConfig JSON file (e.g. a run's config.json) instead of a preset")
        t.add_argument("--out", help="run directory (default runs/PRESET)")
        t.add_argument("--resume", action="store_true",
                       help="continue the run in --out exactly where its last checkpoint left off")
        t.add_argument("--overwrite", action="store_true", help="replace the run already in --out (its config, log, "
                       "checkpoints and grids); without it such a run is refused")
        t.add_argument("--data-dir", help="dataset folder (default $PROGFLOW_DATA or /usr/share/datasets/fashion-mnist)")
        t.add_argument("--set", action="append", metavar="KEY=VALUE", help="override any config field (YAML value)")
        t.add_argument("--no-progress", action="store_true", help="no progress bar")
        _add_config_flags(t)
        t.set_defaults(func=cmd_train, default_preset=default)

    ea = sub.add_parser("eval-ae", help="score an autoencoder run: reconstruction PSNR, FD of reconstructions (JSON)")
    ea.add_argument("run_dir", help="run directory written by `progflow train-ae`")
    ea.add_argument("--n", type=int, default=None, help="test images to reconstruct (default 1000, or the whole "
                    "test split when smaller)")
    ea.add_argument("--batch-size", type=int, default=250)
    ea.add_argument("--out", help="output JSON (default RUN_DIR/eval_ae.json; a grid of pairs beside it)")
    ea.add_argument("--data-dir")
    ea.add_argument("--no-progress", action="store_true")
    ea.set_defaults(func=cmd_eval_ae)

    s = sub.add_parser("sample", help="sample a trained run to an .npz + PNG grid")
    s.add_argument("run_dir", help="run directory written by `progflow train`")
    s.add_argument("--n", type=int, default=100, help="number of samples, class-balanced (default 100)")
    s.add_argument("--nfe", type=int, help="backbone evaluations per sample (default: the method's, 40)")
    s.add_argument("--cfg", type=float, help="classifier-free guidance scale (1 = none; default from the run)")
    s.add_argument("--cfg-interval", type=float, nargs=2, metavar=("LO", "HI"), help="apply guidance only for t in [LO, HI]")
    s.add_argument("--solver", help="ODE solver: euler, midpoint, heun, rk4, ab2, dpmpp2m or dopri5 (adaptive), or "
                   "ba / ba1 (BA-solver with the SideNet of `progflow fit-solver RUN`) (default: the run's "
                   "method.solver, euler); --nfe must be one the solver can spend exactly")
    s.add_argument("--shift", type=float, help="SD3-style time-grid shift (1 = uniform; default: the run's)")
    s.add_argument("--rtol", type=float, help="dopri5 relative tolerance (default 1e-5)")
    s.add_argument("--atol", type=float, help="dopri5 absolute tolerance (default 1e-5)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--out", help="output .npz (default RUN_DIR/samples.npz); the grid PNG is written beside it")
    s.add_argument("--batch-size", type=int, default=250)
    s.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    s.add_argument("--raw", action="store_true", help="use the raw weights instead of the EMA")
    s.add_argument("--previews", action="store_true", help="also write coarse-to-fine preview strips per sample (DFM)")
    s.add_argument("--device", default="cpu")
    s.add_argument("--compile", action="store_true", help="sample through torch.compile(model): a compile first "
                   "(about a minute on CPU), then faster batches; equal to eager up to float rounding")
    s.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="run the network under bfloat16 autocast: about 2x faster at size s on CPUs with AVX512-BF16 "
                   "(slower at xs); close to float32, not equal (docs/speed.md). Default: the precision the run was "
                   "trained in (the demo's Fashion-MNIST run uses bf16 where the CPU has it); --no-bf16 for float32")
    s.add_argument("--no-progress", action="store_true")
    s.set_defaults(func=cmd_sample)

    e = sub.add_parser("eval", help="score an .npz of samples: FD, precision/recall, class accuracy (JSON)")
    e.add_argument("file", help=".npz with `images` uint8 (N, H, W, C) and optional `labels`")
    e.add_argument("--features", default=None, help="feature extractor: fmnist-classifier, emoji-classifier, "
                   "classifier:PATH or python:module:factory (default: the dataset's classifier)")
    e.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "emoji"),
                   help="whose test split the samples are scored against (default fashion-mnist)")
    e.add_argument("--classifier-seed", type=int, default=0)
    e.add_argument("--data-dir")
    e.set_defaults(func=cmd_eval)

    b = sub.add_parser("build-classifier", help="train the Fashion-MNIST (or emoji) feature classifier anew (seed 0 "
                       "ships with progflow; this checks it or makes other seeds)")
    b.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "emoji"))
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--epochs", type=int, default=None, help="(default 2 for fashion-mnist, 20 for emoji)")
    b.add_argument("--out", help="where to write it (default: the cache, $PROGFLOW_CACHE or ~/.cache/progflow)")
    b.add_argument("--data-dir")
    b.set_defaults(func=cmd_build_classifier)

    i = sub.add_parser("info", help="parameters and FLOPs of a run or preset, against the matching DiT")
    i.add_argument("run_or_preset")
    i.set_defaults(func=cmd_info)

    f = sub.add_parser("fit-solver", help="fit the BA-solver's SideNet on a trained run (into RUN/solver)",
                       description="Fit a SideNet on the frozen EMA backbone of RUN by chained on-policy rollouts, "
                       "for `progflow sample RUN --solver ba`. Flags mirror progflow.fit_solver.FitConfig; the "
                       "SideNet's size with --set sidenet.width=16.")
    f.add_argument("run_dir", help="run directory written by `progflow train`")
    f.add_argument("--out", help="where the fit goes (default RUN/solver, the one `--solver ba` uses)")
    f.add_argument("--resume", action="store_true", help="continue the fit in --out where its last checkpoint left off")
    f.add_argument("--set", action="append", metavar="KEY=VALUE", help="override a field, e.g. sidenet.width=16")
    f.add_argument("--no-progress", action="store_true")
    from progflow.fit_solver import FitConfig

    for fld in fields(FitConfig):
        t = fld.type if isinstance(fld.type, str) else getattr(fld.type, "__name__", "")
        if t in _SCALAR_TYPES:
            f.add_argument("--" + fld.name.replace("_", "-"), dest=fld.name, type=_SCALAR_TYPES[t], default=None,
                           metavar=t.upper(), help=f"(default {fld.default})")
    f.set_defaults(func=cmd_fit_solver)

    ed = sub.add_parser("edit", help="edit images by inversion: integrate them to noise and back under another class")
    ed.add_argument("run_dir", help="run directory written by `progflow train`")
    ed.add_argument("--images", required=True, help=".npz with `images` (N, H, W, C) uint8 [0, 255] or float [0, 1] "
                    "at the run's size or the dataset's crop (as `progflow sample` writes), optional `labels` (N,)")
    ed.add_argument("--to-class", type=int, help="class to generate under (default: the images' own: a round trip)")
    ed.add_argument("--solver", default="euler", help="solver both ways (ba, ba1 need `progflow fit-solver`; "
                    "ab2 and dpmpp2m cannot run backwards)")
    ed.add_argument("--nfe", type=int, help="NFE each way (default: the run's method.nfe)")
    ed.add_argument("--cfg", type=float, help="guidance scale, both ways (default from the run)")
    ed.add_argument("--shift", type=float, help="time-grid shift (default from the run)")
    ed.add_argument("--out", help="output .npz (default RUN_DIR/edit.npz); the before/after PNG beside it")
    ed.add_argument("--batch-size", type=int, default=250)
    ed.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    ed.add_argument("--device", default="cpu")
    ed.set_defaults(func=cmd_edit)

    pr = sub.add_parser("presets", help="list the named presets")
    pr.set_defaults(func=cmd_presets)

    bench = sub.add_parser("bench", help="benchmarks (write JSON + plots under benchmarks/results/)")
    from progflow.bench import add_bench_arguments

    add_bench_arguments(bench)
    bench.set_defaults(func=cmd_bench)

    dg = sub.add_parser("diagnose", help="stage diagnostics of a multi-stage run: FD with the true coarse stage "
                        "(oracle), coarse stage alone, training share per stage (JSON)")
    dg.add_argument("run_dir", help="run directory of a multi-stage method (e.g. DFM)")
    dg.add_argument("--n", type=int, default=1000, help="test images to build from (default 1000)")
    dg.add_argument("--seed", type=int, default=0)
    dg.add_argument("--batch-size", type=int, default=250)
    dg.add_argument("--step", type=int, help="checkpoint step (default: the latest)")
    dg.add_argument("--features", help="feature extractor (default: the dataset's classifier)")
    dg.add_argument("--out", help="output JSON (default RUN_DIR/diagnose.json)")
    dg.add_argument("--data-dir")
    dg.add_argument("--no-progress", action="store_true")
    dg.set_defaults(func=cmd_diagnose)

    fd = sub.add_parser("fetch-data", help="download a dataset once into its data folder (emoji: npm pack)")
    fd.add_argument("dataset", choices=("emoji",))
    fd.add_argument("--data-dir", help="where it goes (default $PROGFLOW_CACHE/data/emoji-16.0.0)")
    fd.set_defaults(func=cmd_fetch_data)

    d = sub.add_parser("demo", help="train a base model briefly (fmnist-base-s, or emoji-base-xs with --dataset "
                       "emoji), sample, score and print a summary")
    d.add_argument("--out", default=None, help="run folder (default runs/demo, runs/demo-emoji)")
    d.add_argument("--dataset", default="fashion-mnist", choices=("fashion-mnist", "emoji"))
    d.add_argument("--steps", type=int, default=None, help="training steps (default: the demo budget)")
    d.add_argument("--n", type=int, default=1000, help="samples to score")
    d.add_argument("--nfe", type=int, default=None)
    d.add_argument("--cfg", type=float, default=None)
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--data-dir")
    d.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                   help="bfloat16 autocast for training and sampling (default: the run in --out keeps its setting; a new "
                   "Fashion-MNIST demo uses it where the CPU multiplies bfloat16 natively, about 2x faster at its "
                   "size s; the emoji demo's xs model does not gain from it)")
    d.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args.func(args)
    except ProgflowError as e:
        print(f"progflow: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and closed early
        sys.stdout = open(os.devnull, "w")
        return 0
    except OSError as e:  # a write or read the checks could not foresee (disk full, I/O error): one line
        where = f"{e.filename}: " if e.filename else ""
        print(f"progflow: error: {where}{e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("progflow: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
