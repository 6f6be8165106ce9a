"""Trainer: exact resume after SIGKILL (also mid-checkpoint), DDP = one process, EMA,
NaN stop, refusing pickles and foreign or truncated checkpoints, config mismatch."""

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, assert_one_line_error, cli_env, read_log, run_cli, run_torchrun

STEPS = ["--steps", "24", "--ckpt-every", "4", "--keep-last", "3"]


def final_weights(run: Path, step: int = 24) -> dict:
    d = run / "ckpt" / f"step_{step:08d}"
    return {part: load_file(str(d / f"{part}.safetensors")) for part in ("model", "ema", "optim")}


def assert_bitwise_equal(a: dict, b: dict) -> None:
    for part in a:
        assert a[part].keys() == b[part].keys()
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), f"{part}.{k} differs"


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    run_cli("train", *TINY, *STEPS, "--out", run, check=0)
    return run


def test_run_directory_is_complete(reference_run):
    log = read_log(reference_run)
    assert [r["step"] for r in log] == list(range(1, 25))
    assert all({"loss", "lr", "images_per_s"} <= r.keys() for r in log)
    assert log[-1]["loss"] < log[0]["loss"]
    ckpts = sorted(p.name for p in (reference_run / "ckpt").iterdir())
    assert ckpts == ["step_00000016", "step_00000020", "step_00000024"]  # keep_last 3


def test_resume_after_sigkill_is_bit_exact(reference_run, tmp_path):
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "progflow.cli", "train", *TINY, *STEPS, "--out", str(run)],
                         env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill between checkpoints, after the second one
        if (run / "log.jsonl").exists() and len(read_log(run)) >= 10:
            break
        time.sleep(0.05)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (run / "ckpt" / "step_00000024").exists(), "the run finished before it was killed"
    run_cli("train", *TINY, *STEPS, "--out", run, "--resume", check=0)
    assert_bitwise_equal(final_weights(run), final_weights(reference_run))
    assert [r["step"] for r in read_log(run)] == list(range(1, 25))  # no duplicated log lines


def test_resume_after_sigkill_during_checkpoint_write(reference_run, tmp_path):
    run = tmp_path / "run"
    # A driver that kills its own process while the step-12 checkpoint is half written.
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import os, signal, sys\n"
        "import progflow.checkpoint as c\n"
        "orig = c._write_tensors\n"
        "def write(tensors, path):\n"
        "    orig(tensors, path)\n"
        "    if 'step_00000012' in str(path) and path.name == 'ema.safetensors':\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "c._write_tensors = write\n"
        "from progflow.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, str(driver), "train", *TINY, *STEPS, "--out", str(run)], env=cli_env(),
                       cwd=ROOT, capture_output=True)
    assert p.returncode == -signal.SIGKILL
    assert list((run / "ckpt").glob(".tmp-step_00000012-*")), "the kill did not happen mid-write"
    assert not (run / "ckpt" / "step_00000012").exists()
    run_cli("train", *TINY, *STEPS, "--out", run, "--resume", check=0)
    assert not list((run / "ckpt").glob(".tmp-*"))
    assert_bitwise_equal(final_weights(run), final_weights(reference_run))


def test_resume_refuses_a_different_config(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = sorted(p.name for p in (run / "ckpt").iterdir())
    p = run_cli("train", *TINY, *STEPS, "--lr", "0.01", "--out", run, "--resume")
    assert_one_line_error(p, "does not match", "lr")
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == before
    p = run_cli("train", *TINY, *STEPS, "--out", run)  # no --resume: refuses to overwrite
    assert_one_line_error(p, "--resume")


def test_resume_extends_a_finished_run(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    run_cli("train", "--out", run, "--resume", "--steps", "28", "--no-progress", check=0)
    assert (run / "ckpt" / "step_00000028").exists()
    assert read_log(run)[-1]["step"] == 28


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    # A driver whose loss turns NaN at the 7th step (a real divergence, injected).
    driver = tmp_path / "driver.py"
    driver.write_text(
        "import sys\n"
        "from progflow.methods.flow import FlowMatching\n"
        "orig, calls = FlowMatching.loss, [0]\n"
        "def loss(self, *a):\n"
        "    calls[0] += 1\n"
        "    out, stats = orig(self, *a)\n"
        "    return (out * float('nan') if calls[0] == 7 else out), stats\n"
        "FlowMatching.loss = loss\n"
        "from progflow.cli import main\n"
        "sys.exit(main(sys.argv[1:]))\n")
    p = subprocess.run([sys.executable, str(driver), "train", *TINY, "--steps", "12", "--ckpt-every", "4",
                        "--out", str(run)], env=cli_env(), cwd=ROOT, capture_output=True, text=True)
    assert_one_line_error(p, "loss became nan at step 7", "step_00000004")
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == ["step_00000004"]
    assert all(torch.isfinite(v).all() for v in load_file(str(run / "ckpt/step_00000004/model.safetensors")).values())


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_checkpoint_is_refused_without_running(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    marker = tmp_path / "PWNED"
    target = run / "ckpt" / "step_00000024" / "ema.safetensors"
    target.write_bytes(pickle.dumps(_Payload(marker)))
    p = run_cli("sample", run, "--n", "4", "--nfe", "2", "--out", tmp_path / "s.npz", "--no-progress")
    assert_one_line_error(p, "pickle", "ema.safetensors")
    assert not marker.exists()
    # torch.save's zip format is refused the same way
    torch.save({"w": torch.zeros(1)}, target)
    assert_one_line_error(run_cli("sample", run, "--n", "4", "--out", tmp_path / "s.npz"), "pickle")


def test_truncated_and_foreign_checkpoints_are_refused(reference_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    d = run / "ckpt" / "step_00000024"
    data = (d / "ema.safetensors").read_bytes()
    (d / "ema.safetensors").write_bytes(data[: len(data) // 2])
    assert_one_line_error(run_cli("sample", run, "--n", "4", "--out", tmp_path / "s.npz"), "truncated", "ema.safetensors")
    (d / "state.json").write_text('{"hello": 1}')
    assert_one_line_error(run_cli("sample", run, "--n", "4", "--out", tmp_path / "s.npz"), "not a progflow checkpoint")
    assert_one_line_error(run_cli("sample", tmp_path, "--n", "4"), "not a progflow run")
    # resuming from the broken newest checkpoint fails loudly and deletes nothing
    before = sorted(p.name for p in (run / "ckpt").iterdir())
    assert_one_line_error(run_cli("train", *TINY, *STEPS, "--out", run, "--resume"), "step_00000024")
    assert sorted(p.name for p in (run / "ckpt").iterdir()) == before


def test_ddp_two_processes_match_one(tmp_path):
    args = [*TINY, "--steps", "6", "--ckpt-every", "6", "--warmup", "0"]
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli("train", *args, "--out", one, check=0)
    run_torchrun("-m", "progflow.cli", "train", *args, "--out", two)
    l1, l2 = read_log(one), read_log(two)
    assert [r["step"] for r in l1] == [r["step"] for r in l2] == list(range(1, 7))
    for a, b in zip(l1, l2):
        assert abs(a["loss"] - b["loss"]) <= 1e-4 * abs(a["loss"]), (a["loss"], b["loss"])
    w1, w2 = final_weights(one, 6)["model"], final_weights(two, 6)["model"]
    assert all(torch.allclose(w1[k], w2[k], atol=1e-5, rtol=1e-4) for k in w1)
    assert l1[-1]["loss"] != l1[0]["loss"]  # the weights moved, so the comparison means something


def test_ema_warmup_tracks_a_short_run(reference_run):
    from progflow.train import ema_decay_at

    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 10**6) == 0.999
    w = final_weights(reference_run)
    init_ref = run_init_weights()
    # after 24 steps the EMA has moved most of the way from the initialisation to the weights
    for k in ("blocks.0.attn.qkv.weight", "final.linear.weight"):
        moved = (w["ema"][k] - init_ref[k]).norm() / (w["model"][k] - init_ref[k]).norm()
        assert moved > 0.5, (k, moved)


def run_init_weights():
    from progflow.nn.dit import build_model
    from progflow.presets import preset_config
    from progflow.rng import derive_seed

    cfg = preset_config("fmnist-base-xs").with_overrides({"model.depth": 2, "data.dataset": "synthetic"})
    torch.manual_seed(derive_seed(cfg.seed, 0))
    return build_model(cfg).state_dict()


def test_batch_order_is_a_seeded_permutation_per_epoch():
    from progflow.train import BatchOrder

    a, b = BatchOrder(100, 16, seed=3), BatchOrder(100, 16, seed=3)
    epoch0 = torch.cat([a.indices(k) for k in range(6)])  # 6 full batches, 4 samples dropped
    assert len(set(epoch0.tolist())) == 96
    assert torch.equal(epoch0, torch.cat([b.indices(k) for k in range(6)]))
    assert not torch.equal(a.indices(6), a.indices(0))  # the next epoch is reshuffled
    assert not torch.equal(BatchOrder(100, 16, seed=4).indices(0), b.indices(0))
    assert a.position(13) == {"epoch": 2, "batch_in_epoch": 1}


def test_bf16_autocast_trains(tmp_path):
    run = tmp_path / "run"
    run_cli("train", *TINY, "--steps", "4", "--bf16", "--out", run, check=0)
    losses = [r["loss"] for r in read_log(run)]
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    import json

    assert json.loads((run / "config.json").read_text())["bf16"] is True


def test_a_safetensors_file_whose_header_length_starts_like_a_pickle_loads(tmp_path):
    """A header length with low byte 0x80 makes the file's first byte that of a pickle; such a
    file (1 in 256 of real checkpoints) is read, and pickles are still refused unread."""
    import struct

    from safetensors.torch import save_file

    from progflow.checkpoint import read_tensors
    from progflow.errors import CheckpointError

    for pad in range(300):  # grow the metadata until the header length is 0x80 modulo 256
        path = tmp_path / "w.safetensors"
        save_file({"w": torch.arange(3.0)}, str(path), metadata={"pad": "x" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80 and struct.unpack("<Q", path.read_bytes()[:8])[0] % 256 == 0x80
    assert torch.equal(read_tensors(path)["w"], torch.arange(3.0))
    evil = tmp_path / "evil.safetensors"
    evil.write_bytes(pickle.dumps({"w": 1}))
    with pytest.raises(CheckpointError, match="pickle"):
        read_tensors(evil)
