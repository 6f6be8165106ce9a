"""Benchmarks (not tests): each writes a JSON result with command, machine, date and seed
under ``benchmarks/results/`` (and plots where they help)."""

from __future__ import annotations

KINDS = ("speed", "quality", "solvers")


def add_bench_arguments(p) -> None:
    p.add_argument("kind", choices=KINDS, help="speed: training/sampling throughput vs matmul peak; "
                   "quality: base vs DFM at equal training compute; solvers: ODE solvers at equal NFE "
                   "(endpoint error vs dopri5, FD) on trained runs")
    p.add_argument("--out-dir", default="benchmarks/results", help="where the JSON (and plots) go")
    p.add_argument("--runs-dir", default="runs", help="where the quality benchmark keeps its training runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--presets", nargs="+", help="presets to measure (speed: default base and DFM at xs and s)")
    p.add_argument("--steps", type=int, help="timed training steps (speed) / training steps per model (quality; "
                   "solvers: of the xs runs, default 5000)")
    p.add_argument("--n", type=int, help="samples per FD (quality, solvers; default 2000)")
    p.add_argument("--seeds", type=int, nargs="+", help="training seeds (quality)")
    p.add_argument("--cfg-scales", type=float, nargs="+", help="guidance scales to score (quality; solvers: the first, "
                   "default 1)")
    p.add_argument("--extra-cfg-scales", type=float, nargs="+", metavar="W",
                   help="quality: also score these guidance scales on the finished runs of the chosen arms (same "
                   "samples' settings as the final scores, kept in RUN/guidance.json; nothing is retrained and the "
                   "cached scores stay valid); the summary gives each arm's best FD over all scales scored")
    p.add_argument("--eval-every", type=int, help="steps between FD points for the FD-vs-step curve (quality)")
    p.add_argument("--size", choices=("xs", "s", "b"), help="model size for quality (default xs)")
    p.add_argument("--arms", nargs="+", metavar="ARM",
                   help="quality: run only these arms (base, dfm2, dfm3, dfm2-pq0.5, ...); finished runs of other "
                   "arms are collected from --runs-dir. Without it every arm runs and the step time is measured. "
                   "Arms other than base, dfm2, flowar, cascade and pyramidal train only the first of --seeds, unless named "
                   "here. "
                   "solvers: base, dfm2 (the quality runs), base-s (headline points)")
    p.add_argument("--run", action="append", metavar="DIR",
                   help="solvers: measure this trained run (repeatable) instead of the default arms")
    p.add_argument("--solvers", nargs="+", metavar="NAME",
                   help="solvers: measure only these (default the classical fixed-grid ones); results of others "
                   "already cached are collected")
    p.add_argument("--nfes", type=int, nargs="+", metavar="NFE",
                   help="solvers: measure only these of the run's NFEs (default all of its profile)")
    p.add_argument("--shifts", type=float, nargs="+", metavar="SHIFT",
                   help="solvers: the grid shifts to try per NFE (default 1 2 3); the best of them is scored for FD")
    p.add_argument("--solver", help="quality: the solver of every FD (default euler; see progflow sample --solver)")
    p.add_argument("--shift", type=float, help="quality: the time-grid shift of every FD (default 1, uniform)")
    p.add_argument("--dataset", choices=("fashion-mnist", "emoji"),
                   help="quality: the data every arm trains and is scored on (default fashion-mnist; emoji: base, dfm2 "
                   "and dfm2-pq0.3 on the emoji presets, results in quality_emoji.json, diagnostics of every DFM run)")
    p.add_argument("--collect", action="store_true",
                   help="quality: train nothing; gather the finished runs in --runs-dir and the rows of the earlier "
                   "result file (same settings) whose run directories are absent, keeping its step time")
    p.add_argument("--timing-only", action="store_true",
                   help="quality: only the interleaved base/DFM training-step timing (writes step_time.json)")
    p.add_argument("--learned", action="store_true",
                   help="solvers: first fit the BA-solver's SideNet on every measured run (offset-scale sweep, the "
                   "best into RUN/solver), its fit cost, time per interval and round-trip inversion error of every "
                   "solver (solvers_learned.json); add --solvers ba ba1 for their rows")
    p.add_argument("--fit-steps", type=int, help="solvers --learned: fitting steps per SideNet (default 150)")
    p.add_argument("--sidenet-width", type=int, help="solvers --learned: SideNet width (default 32)")
    p.add_argument("--compile", action="store_true",
                   help="speed: also time training and sampling through torch.compile, compile time included")
    p.add_argument("--profile", action="store_true",
                   help="speed: also profile a training step per preset by operator (speed_profile.json)")
    p.add_argument("--tiny", action="store_true", help="a seconds-long smoke run (used by the tests)")
    p.add_argument("--data-dir")


def check_bench_args(kind: str, args) -> None:
    """The arguments of every benchmark, before any of its work: counts positive, seeds
    non-negative, scales finite, solvers known, output folders writable."""
    from progflow.checks import check_count, check_finite, check_out_dir
    from progflow.solvers import get_solver

    for name in ("steps", "n", "eval_every", "fit_steps", "sidenet_width"):
        if getattr(args, name, None) is not None:
            check_count(getattr(args, name), "--" + name.replace("_", "-"))
    for seed in [args.seed, *(args.seeds or [])]:
        check_count(seed, "--seed(s)", minimum=0)
    for flag in ("cfg_scales", "extra_cfg_scales"):
        for w in getattr(args, flag) or []:
            check_finite(w, "--" + flag.replace("_", "-"))
    for shift in [args.shift, *(args.shifts or [])]:
        if shift is not None:
            check_finite(shift, "--shift(s)", positive=True)
    for nfe in args.nfes or []:
        check_count(nfe, "--nfes")
    for name in [args.solver, *(args.solvers or [])]:
        if name is not None:
            get_solver(name)
    check_out_dir(args.out_dir, "--out-dir")
    if kind != "speed":
        check_out_dir(args.runs_dir, "--runs-dir")


def run_benchmark(kind: str, args) -> None:
    check_bench_args(kind, args)
    if kind == "speed":
        from progflow.bench.speed import run_speed

        run_speed(args)
    elif kind == "quality":
        from progflow.bench.quality import run_quality

        run_quality(args)
    else:
        from progflow.bench.solvers import run_solvers

        run_solvers(args)
