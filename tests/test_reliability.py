"""Reliability (issue 12): one writer per run, every check before any write, and no traceback
on any bad input.

The table runs more than 40 bad inputs over every subcommand against one tiny trained run,
each asserting exit code 2, exactly one line on stderr, no traceback and unchanged files
(hashes of everything before and after). Most go through ``progflow.cli.main`` in this
process; a handful run as real subprocesses, as a user runs them.
"""

import base64
import contextlib
import errno
import hashlib
import io
import json
import math
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, TINY, assert_one_line_error, cli_env, read_log, run_cli

CKPT = "ckpt/step_00000002"


def run_main(*argv) -> subprocess.CompletedProcess:
    """``progflow ARGV`` in this process, with its exit code and output captured."""
    from progflow.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:  # argparse
            code = e.code
    return subprocess.CompletedProcess(list(argv), code, out.getvalue(), err.getvalue())


def tree_hash(*roots: Path) -> dict:
    """Every file and folder under ``roots``: path -> sha256 of the content (or "dir")."""
    found = {}
    for root in roots:
        for p in sorted(Path(root).rglob("*")):
            found[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return found


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """One tiny run (2 steps, one checkpoint), a samples file, a plain file and a cache folder."""
    import torch

    root = tmp_path_factory.mktemp("world")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PROGFLOW_CACHE", str(root / "cache"))
        p = run_main("train", *TINY, "--steps", "2", "--ckpt-every", "2", "--out", root / "run")
        assert p.returncode == 0, p.stderr
        rng = np.random.default_rng(0)
        np.savez(root / "s.npz", images=rng.integers(0, 256, (20, 32, 32, 1), dtype=np.uint8),
                 labels=np.arange(20) % 10)
        np.savez(root / "float.npz", images=rng.random((20, 32, 32, 1)))
        (root / "file.txt").write_text("not a folder, not JSON, not an npz\n")
        (root / "cache").mkdir()
        yield SimpleNamespace(root=root, run=root / "run")
    torch.set_num_threads(threads)


# ---- mutations of a copy of the run (for --resume and readers) ----------------------------------
def edit_state(fn):
    def setup(copy: Path):
        f = copy / CKPT / "state.json"
        state = json.loads(f.read_text())
        fn(state)
        f.write_text(json.dumps(state))
    return setup


def write(rel: str, data: bytes):
    def setup(copy: Path):
        (copy / rel).write_bytes(data)
    return setup


def truncate(rel: str):
    def setup(copy: Path):
        f = copy / rel
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    return setup


def corrupt_log_middle(copy: Path):
    lines = (copy / "log.jsonl").read_text().splitlines()
    (copy / "log.jsonl").write_text("\n".join(["{\"step\": 1, \"lo", *lines[1:]]) + "\n")


RESUME = "train --resume --no-progress --out {copy}"
S = "sample {run} --no-progress --n 4"
E = "edit {run} --images {root}/s.npz"

# (id, command line, text the error line must hold, setup of {copy} or None, as a subprocess)
CASES = [
    # train: numbers, names, paths, existing runs
    ("train-argparse", "train --steps abc", ["invalid int value"], None, True),
    ("train-lr-nan", "train --lr nan --out {case}/r", ["lr must be a finite number"], None, True),
    ("train-mlp-nan", "train --set model.mlp_ratio=.nan --out {case}/r", ["model.mlp_ratio", "finite"], None, False),
    ("train-interval-inf", "train --set method.cfg_interval=[0.5,.inf] --out {case}/r", ["cfg_interval"], None, False),
    ("train-t-loc-str", "train --set method.t_loc=abc --out {case}/r", ["method.t_loc"], None, False),
    ("train-steps-0", "train --steps 0 --out {case}/r", ["steps must be positive"], None, False),
    ("train-batch-neg", "train --batch-size -4 --out {case}/r", ["batch_size must be positive"], None, False),
    ("train-depth-float", "train --set model.depth=2.5 --out {case}/r", ["model.depth", "integer"], None, False),
    ("train-device-name", "train --device nosuchdevice --out {case}/r", ["device", "nosuchdevice"], None, False),
    ("train-device-absent", "train --device cuda:99 --out {case}/r", ["cuda:99"], None, False),
    ("train-out-file", "train --out {root}/file.txt", ["file.txt is a file, not a folder"], None, False),
    ("train-out-under-file", "train --out {root}/file.txt/run", ["file.txt is a file, not a folder"], None, False),
    ("train-out-proc", "train --out /proc/progflow-run", ["/proc", "cannot be written"], None, False),
    ("train-existing-run", "train " + " ".join(TINY) + " --out {run}", ["already holds a run", "--overwrite"],
     None, False),
    ("train-resume-no-run", "train --resume --out {case}/none", ["holds no run"], None, False),
    ("train-resume-overwrite", "train --resume --overwrite --out {run}", ["one of them"], None, False),
    ("train-config-missing", "train --config {case}/none.json --out {case}/r", ["does not exist"], None, False),
    ("train-config-not-json", "train --config {root}/file.txt --out {case}/r", ["not valid JSON"], None, False),
    ("train-config-folder", "train --config {root} --out {case}/r", ["cannot be read"], None, False),
    ("train-preset", "train --preset nope --out {case}/r", ["unknown preset"], None, False),
    ("train-set-no-value", "train --set model.depth --out {case}/r", ["KEY=VALUE"], None, False),
    ("train-set-section", "train --set data=5 --out {case}/r", ["config section data must be a mapping"], None, False),
    ("train-seed-huge", "train --seed 4294967296 --out {case}/r", ["seed must be at most"], None, False),
    ("train-nfe-huge", "train --set method.nfe=100000000 --out {case}/r", ["method.nfe must be at most"], None, False),
    # multi-stage baselines: budget split, window boundaries, coarse resolution
    ("train-cascade-split", "train --preset fmnist-cascade-xs --set method.train_split=1.2 --out {case}/r",
     ["method.train_split must lie in (0, 1)"], None, False),
    ("train-cascade-coarse", "train --preset fmnist-cascade-xs --set method.coarse_size=12 --out {case}/r",
     ["method.coarse_size 12", "divide it"], None, True),
    ("train-pyramidal-order", "train --preset fmnist-pyramidal-xs --set method.boundaries=[0.7,0.3] --out {case}/r",
     ["method.boundaries must increase strictly inside (0, 1)"], None, False),
    ("train-pyramidal-outside", "train --preset fmnist-pyramidal-xs --set method.boundaries=[1.5] --out {case}/r",
     ["method.boundaries must increase strictly inside (0, 1)"], None, False),
    ("train-pyramidal-coarse", "train --preset fmnist-pyramidal-xs --set data.image_size=36 "
     "--set method.boundaries=[0.25,0.5,0.75] --set method.stage_steps=[] --out {case}/r",
     ["data.image_size 36 is not divisible by 2**3 = 8"], None, False),
    # latent runs and their autoencoder
    ("train-ae-not-ae", "train-ae --preset fmnist-base-xs --out {case}/r", ["train-ae trains autoencoders"], None,
     False),
    ("train-ae-kl-neg", "train-ae --preset fmnist-ae --set method.kl_weight=-1 --out {case}/r",
     ["method.kl_weight must be non-negative"], None, False),
    ("train-latent-no-ae", "train " + " ".join(TINY) + " --set data.autoencoder={case}/none --set data.channels=4 "
     "--set data.image_size=8 --set model.patch=2 --out {case}/r", ["data.autoencoder", "does not exist"], None, False),
    ("train-latent-not-ae", "train " + " ".join(TINY) + " --set data.autoencoder={run} --set data.channels=4 "
     "--set data.image_size=8 --set model.patch=2 --out {case}/r", ["is a flow run, not an autoencoder"], None, False),
    ("train-latent-diffusers-none", "train " + " ".join(TINY) + " --set data.autoencoder=diffusers:{case} "
     "--set data.channels=4 --set data.image_size=8 --set model.patch=2 --out {case}/r",
     ["not a saved diffusers model"], None, False),
    ("eval-ae-not-ae", "eval-ae {run} --n 4", ["is a flow run, not an autoencoder"], None, False),
    ("eval-ae-n-0", "eval-ae {run} --n 0", ["--n must be"], None, False),
    # train --resume: the whole saved state is checked before a byte is written
    ("resume-step-not-int", RESUME, ["state.json", "step"], edit_state(lambda s: s.update(step="abc")), True),
    ("resume-step-other-folder", RESUME, ["state.json", "step 7"], edit_state(lambda s: s.update(step=7)), False),
    ("resume-no-optimizer", RESUME, ["state.json", "optimizer"], edit_state(lambda s: s.pop("optimizer")), False),
    ("resume-optimizer-nan", RESUME, ["optim.safetensors", "lr"],
     edit_state(lambda s: s["optimizer"]["param_groups"][0].update(lr=math.nan)), False),
    ("resume-rng-not-base64", RESUME, ["state.json", "rng"],
     edit_state(lambda s: s["rng"].update(torch_cpu="%%%")), False),
    ("resume-rng-short", RESUME, ["rng state has 10 bytes"],
     edit_state(lambda s: s["rng"].update(torch_cpu=base64.b64encode(bytes(10)).decode())), False),
    ("resume-state-not-json", RESUME, ["state.json", "not JSON"], write(CKPT + "/state.json", b"{half"), False),
    ("resume-optim-truncated", RESUME, ["optim.safetensors", "truncated"], truncate(CKPT + "/optim.safetensors"),
     False),
    ("resume-log-corrupt", RESUME, ["log.jsonl", "line 1"], corrupt_log_middle, False),
    ("resume-config-corrupt", RESUME, ["config.json", "corrupt"], write("config.json", b"\xff\xfe"), False),
    # sample
    ("sample-nfe-0", S + " --nfe 0", ["--nfe must be positive"], None, False),
    ("sample-nfe-neg", S + " --nfe -5", ["--nfe must be positive"], None, False),
    ("sample-nfe-huge", S + " --nfe 100000000000", ["--nfe must be at most"], None, False),
    ("sample-n-huge", "sample {run} --n 100000000000000", ["--n must be at most"], None, False),
    ("sample-cfg-nan", S + " --cfg nan", ["--cfg must be a finite number"], None, True),
    ("sample-cfg-inf", S + " --cfg inf", ["--cfg must be a finite number"], None, False),
    ("sample-n-0", "sample {run} --n 0", ["--n must be positive"], None, False),
    ("sample-batch-0", S + " --batch-size 0", ["--batch-size must be positive"], None, False),
    ("sample-shift-0", S + " --shift 0", ["--shift must be a positive number"], None, False),
    ("sample-interval", S + " --cfg-interval 0.9 0.1", ["--cfg-interval"], None, False),
    ("sample-seed-neg", S + " --seed -1", ["--seed must be non-negative"], None, False),
    ("sample-rtol-nan", S + " --solver dopri5 --rtol nan", ["rtol"], None, False),
    ("sample-solver", S + " --solver nosuch", ["unknown solver"], None, False),
    ("sample-step", S + " --step 999", ["no checkpoint at step 999"], None, False),
    ("sample-device", S + " --device nosuch", ["--device", "nosuch"], None, False),
    ("sample-out-proc", S + " --out /proc/progflow.npz", ["/proc", "cannot be written"], None, False),
    ("sample-out-under-file", S + " --out {root}/file.txt/s.npz", ["file.txt is a file, not a folder"], None, False),
    ("sample-out-folder", S + " --out {case}/folder.npz", ["is a folder"],
     lambda copy: (copy.parent / "folder.npz").mkdir(), False),
    ("sample-out-suffix", S + " --out {case}/s.png", ["must end in .npz"], None, False),
    ("sample-no-run", "sample {case}/none", ["does not exist"], None, False),
    ("sample-truncated-ema", "sample {copy} --n 4 --out {case}/s.npz", ["ema.safetensors", "truncated"],
     truncate(CKPT + "/ema.safetensors"), False),
    # eval: the samples file is checked before the classifier is loaded or built
    ("eval-missing", "eval {case}/none.npz", ["not found"], None, True),
    ("eval-not-npz", "eval {root}/file.txt", ["not a valid .npz"], None, False),
    ("eval-float-images", "eval {root}/float.npz", ["must be uint8"], None, False),
    ("eval-features", "eval {root}/s.npz --features nosuch", ["unknown feature extractor"], None, False),
    ("eval-classifier-seed", "eval {root}/s.npz --classifier-seed -1", ["non-negative"], None, False),
    # info, presets
    ("info-preset", "info nope", ["unknown preset"], None, False),
    ("info-corrupt-config", "info {copy}", ["config.json", "corrupt"], write("config.json", b"{"), False),
    ("info-not-a-run", "info {case}", ["not a progflow run"], None, False),
    ("presets-extra", "presets extra", ["unrecognized arguments"], None, False),
    # build-classifier
    ("classifier-epochs", "build-classifier --epochs 0", ["--epochs must be positive"], None, False),
    ("classifier-seed", "build-classifier --seed -1", ["--seed must be non-negative"], None, False),
    ("classifier-out-proc", "build-classifier --out /proc/c.safetensors", ["cannot be written"], None, False),
    ("classifier-out-folder", "build-classifier --out {root}", ["is a folder"], None, False),
    # bench
    ("bench-kind", "bench nosuch", ["invalid choice"], None, False),
    ("bench-steps-0", "bench quality --steps 0 --out-dir {case}/b --runs-dir {case}/r", ["--steps must be positive"],
     None, False),
    ("bench-cfg-nan", "bench quality --cfg-scales 1 nan --out-dir {case}/b", ["--cfg-scales"], None, False),
    ("bench-out-file", "bench speed --out-dir {root}/file.txt", ["is a file, not a folder"], None, False),
    ("bench-solver", "bench solvers --solvers nosuch --out-dir {case}/b", ["unknown solver"], None, False),
    ("bench-nfes-0", "bench solvers --nfes 5 0 --out-dir {case}/b", ["--nfes must be positive"], None, False),
    ("bench-shifts-neg", "bench solvers --shifts 1 -2 --out-dir {case}/b", ["--shift(s) must be"], None, False),
    # demo
    ("demo-steps-0", "demo --steps 0 --out {case}/d", ["--steps must be positive"], None, False),
    ("demo-cfg-nan", "demo --cfg nan --out {case}/d", ["--cfg must be a finite number"], None, False),
    ("demo-out-file", "demo --out {root}/file.txt", ["is a file, not a folder"], None, False),
    # fit-solver
    ("fit-no-run", "fit-solver {case}/none --no-progress", ["does not exist"], None, False),
    ("fit-steps-0", "fit-solver {run} --steps 0", ["steps must be positive"], None, False),
    ("fit-lr-nan", "fit-solver {run} --lr nan", ["lr must be a finite number"], None, False),
    ("fit-steps-float", "fit-solver {run} --set steps=2.5", ["steps must be an integer"], None, False),
    ("fit-nfe-huge", "fit-solver {run} --nfe 1000000000", ["nfe must be at most"], None, False),
    ("fit-width", "fit-solver {run} --set sidenet.width=7", ["sidenet.width"], None, False),
    ("fit-resume-no-fit", "fit-solver {run} --resume", ["holds no solver fit"], None, False),
    ("fit-out-file", "fit-solver {run} --out {root}/file.txt", ["is a file, not a folder"], None, False),
    ("fit-device", "fit-solver {run} --device nosuch --no-progress", ["nosuch"], None, False),
    # edit
    ("edit-images-missing", "edit {run} --images {case}/none.npz", ["does not exist"], None, False),
    ("edit-to-class", E + " --to-class 99", ["not a class"], None, False),
    ("edit-nfe-0", E + " --nfe 0", ["--nfe must be positive"], None, False),
    ("edit-cfg-nan", E + " --cfg nan", ["--cfg must be a finite number"], None, False),
    ("edit-batch-0", E + " --batch-size 0", ["--batch-size must be positive"], None, False),
    ("edit-solver", E + " --solver ab2", ["cannot integrate"], None, False),
    ("edit-out-proc", E + " --out /proc/e.npz", ["cannot be written"], None, False),
    # diagnose: runs without a coarse stage, counts, paths
    ("diagnose-single-stage", "diagnose {run} --no-progress", ["single-stage run"], None, False),
    ("diagnose-n-small", "diagnose {run} --n 2", ["--n must be at least 6"], None, False),
    ("diagnose-no-run", "diagnose {case}/none", ["does not exist"], None, False),
    ("diagnose-out-proc", "diagnose {run} --out /proc/d.json", ["cannot be written"], None, False),
    ("diagnose-out-suffix", "diagnose {run} --out {case}/d.txt", ["must end in .json"], None, False),
    # fetch-data: where the download would land
    ("fetch-data-unknown", "fetch-data mnist", ["invalid choice"], None, True),
    ("fetch-data-proc", "fetch-data emoji --data-dir /proc/progflow-emoji", ["/proc", "cannot be written"], None, False),
    ("fetch-data-under-file", "fetch-data emoji --data-dir {root}/file.txt/emoji", ["file.txt is a file, not a folder"],
     None, False),
    ("fetch-data-foreign", "fetch-data emoji --data-dir {root}", ["holds other files"], None, False),
]


def test_the_table_covers_every_subcommand():
    from progflow.cli import build_parser

    commands = set(build_parser()._subparsers._group_actions[0].choices)
    covered = {shlex.split(c[1])[0] for c in CASES}
    assert commands <= covered, f"no bad input for {sorted(commands - covered)}"
    assert len(CASES) >= 40 and len({c[0] for c in CASES}) == len(CASES)


@pytest.mark.parametrize("name,line,needles,setup,as_subprocess", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, tmp_path, monkeypatch, one_thread, name, line, needles,
                                                   setup, as_subprocess):
    monkeypatch.setenv("PROGFLOW_CACHE", str(world.root / "cache"))
    case, copy = tmp_path / "case", tmp_path / "case" / "copy"
    case.mkdir()
    if setup is not None:
        if "{copy}" in line:
            shutil.copytree(world.run, copy)
        setup(copy)
    argv = [a.format(root=world.root, run=world.run, case=case, copy=copy) for a in shlex.split(line)]
    before = tree_hash(world.root, case)
    p = run_cli(*argv, env=cli_env(PROGFLOW_CACHE=str(world.root / "cache"))) if as_subprocess else run_main(*argv)
    assert_one_line_error(p, *needles)
    assert tree_hash(world.root, case) == before, "a refused command changed files"


def test_eval_looks_at_the_samples_before_the_classifier(world, tmp_path, monkeypatch):
    import progflow.eval

    def never(*a, **k):
        raise AssertionError("the classifier was prepared before the samples file was checked")

    monkeypatch.setattr(progflow.eval, "get_extractor", never)
    (tmp_path / "empty.npz").write_bytes(b"")
    assert_one_line_error(run_main("eval", tmp_path / "empty.npz"), "empty.npz")


# ---- resume, overwrite, readers -------------------------------------------------------------------
def test_a_half_written_last_log_line_is_dropped_on_resume(world, tmp_path, one_thread):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    with open(run / "log.jsonl", "a") as f:
        f.write('{"step": 3, "lo')  # killed mid-write
    assert run_main("train", "--resume", "--steps", "3", "--no-progress", "--out", run).returncode == 0
    assert [r["step"] for r in read_log(run)] == [1, 2, 3]


def test_overwrite_replaces_the_run(world, tmp_path, one_thread):
    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    p = run_main("train", *TINY, "--steps", "1", "--seed", "5", "--overwrite", "--out", run)
    assert p.returncode == 0, p.stderr
    assert sorted(x.name for x in (run / "ckpt").iterdir()) == ["step_00000001"]
    assert json.loads((run / "config.json").read_text())["seed"] == 5
    assert [r["step"] for r in read_log(run)] == [1]


def test_a_reader_takes_the_newer_checkpoint_when_one_is_pruned_under_it(world, monkeypatch):
    import progflow.runs as runs

    real, calls = runs.find_checkpoint, []

    def racing(run_dir, step=None):  # the first listing names a checkpoint a writer then prunes
        calls.append(1)
        return Path(run_dir) / "ckpt" / "step_00000001" if len(calls) == 1 else real(run_dir, step)

    monkeypatch.setattr(runs, "find_checkpoint", racing)
    _, _, path = runs.load_run(world.run)
    assert path.name == "step_00000002" and len(calls) == 2


# ---- one writer per run -----------------------------------------------------------------------------
HOLDER = ("import sys, time\n"
          "from progflow.runlock import run_lock\n"
          "with run_lock(sys.argv[1]):\n"
          "    print('held', flush=True)\n"
          "    time.sleep(120)\n")


def test_a_second_writer_is_refused_with_the_holders_pid(world, tmp_path, one_thread):
    from progflow.runlock import LOCK_NAME, run_lock

    run = tmp_path / "run"
    shutil.copytree(world.run, run)
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(run)], env=cli_env(), cwd=ROOT,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = tree_hash(run)
        for argv in (["train", "--resume", "--no-progress", "--out", run],
                     ["train", *TINY, "--overwrite", "--out", run],
                     ["fit-solver", run, "--steps", "1", "--no-progress"]):  # writes RUN/solver: the run's lock
            assert_one_line_error(run_main(*argv), "another progflow process", f"PID {holder.pid}")
        assert tree_hash(run) == before
        assert run_main("info", run).returncode == 0  # readers need no lock
    finally:
        holder.send_signal(signal.SIGKILL)  # the kernel releases the lock of a killed process
        holder.wait()
    assert (run / LOCK_NAME).exists()  # a killed holder leaves its file; the lock itself is gone
    with run_lock(run):
        assert (run / LOCK_NAME).read_text().strip() == str(os.getpid())
    assert not (run / LOCK_NAME).exists()


def test_train_holds_the_lock_until_it_is_killed(tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "progflow.cli", "train", *TINY, "--steps", "100000",
                          "--ckpt-every", "100000", "--out", str(run)], env=cli_env(), cwd=ROOT,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        while not (run / "log.jsonl").exists() and time.time() < deadline:
            time.sleep(0.05)
        assert_one_line_error(run_main("train", "--resume", "--steps", "1", "--no-progress", "--out", run),
                              f"PID {p.pid}")
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    p2 = run_main("train", "--resume", "--steps", "1", "--no-progress", "--out", run)
    assert p2.returncode == 0, p2.stderr


# ---- failed writes ---------------------------------------------------------------------------------
def assert_failed_save_left_no_trace(run: Path, p, *needles):
    from progflow.checkpoint import load_checkpoint

    assert_one_line_error(p, "step_00000002", *needles)
    assert not list((run / "ckpt").glob(".tmp-*")), "a temporary checkpoint folder was left behind"
    assert sorted(x.name for x in (run / "ckpt").iterdir()) == ["step_00000001"]
    load_checkpoint(run / "ckpt" / "step_00000001")  # the last good checkpoint is whole
    assert "step_00000001" in p.stderr


def test_an_io_error_while_saving_is_one_line_and_keeps_the_last_checkpoint(tmp_path, monkeypatch, one_thread):
    import progflow.checkpoint as ckpt

    real = ckpt._write_tensors

    def failing(tensors, path):
        if "step_00000002" in str(path) and path.name == "optim.safetensors":
            raise OSError(errno.EIO, "Input/output error", str(path))
        real(tensors, path)

    monkeypatch.setattr(ckpt, "_write_tensors", failing)
    run = tmp_path / "run"
    p = run_main("train", *TINY, "--steps", "3", "--ckpt-every", "1", "--out", run)
    assert_failed_save_left_no_trace(run, p, "optim.safetensors", "Input/output error")


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MB tmpfs: room for one tiny checkpoint (2.9 MB), not for two."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if os.geteuid() != 0:
        pytest.skip("a full-disk test needs a small filesystem: mounting one needs root")
    p = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if p.returncode:
        pytest.skip(f"cannot mount a small tmpfs here: {p.stderr.strip() or p.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_a_full_disk_while_saving_is_one_line_and_keeps_the_last_checkpoint(small_filesystem, one_thread):
    run = small_filesystem / "run"
    p = run_main("train", *TINY, "--steps", "3", "--ckpt-every", "1", "--out", run)
    assert_failed_save_left_no_trace(run, p, "No space left on device")


# ---- every config field: a valid config or a ConfigError ----------------------------------------------
def _config_fields() -> list[tuple[str, str]]:
    """``(preset, dotted field)`` for every field of TrainConfig and of the section classes of
    every registered method and architecture (each reached through a preset that uses it)."""
    import dataclasses

    from progflow.config import TrainConfig
    from progflow.presets import preset_config, preset_names
    from progflow.registry import ARCHS, METHODS, load_plugins

    load_plugins()
    out, methods, archs = [], set(), set()
    for preset in preset_names():
        cfg = preset_config(preset)
        if cfg.method.name in methods and cfg.model.arch in archs:
            continue
        methods.add(cfg.method.name)
        archs.add(cfg.model.arch)
        for f in dataclasses.fields(TrainConfig):
            section = getattr(cfg, f.name)
            if dataclasses.is_dataclass(section):
                out += [(preset, f"{f.name}.{g.name}") for g in dataclasses.fields(section)]
            else:
                out.append((preset, f.name))
    assert methods == set(METHODS) and archs == set(ARCHS), "a registered method or architecture has no preset"
    return out


FIELDS = _config_fields()
SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 70), st.integers(-2**80, 2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([math.nan, math.inf, -math.inf, 1e308, 2**64]),
    st.text(max_size=5), st.sampled_from(["cpu", "cuda:7", "dfm", "flowar", "laplacian", "uniform", "heun", "nan"]),
)
VALUES = st.one_of(SCALARS, st.lists(SCALARS, max_size=4), st.dictionaries(st.text(max_size=3), SCALARS, max_size=2))


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(field=st.sampled_from(FIELDS), value=VALUES)
def test_any_value_in_any_config_field_gives_a_valid_config_or_a_config_error(field, value):
    from progflow.checks import is_finite
    from progflow.config import TrainConfig
    from progflow.errors import ConfigError
    from progflow.presets import preset_config

    preset, key = field
    try:
        cfg = preset_config(preset).with_overrides({key: value})
    except ConfigError:
        return
    d = cfg.to_dict()
    floats = [v for s in (d, d["data"], d["model"], d["method"]) for v in s.values() if isinstance(v, float)]
    assert all(is_finite(v) for v in floats)
    assert TrainConfig.from_dict(json.loads(cfg.to_json())) == cfg
