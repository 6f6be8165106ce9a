"""The fast paths of docs/speed.md. `--compile` (torch.compile with inductor) for training and
sampling: really compiled, the same run as eager up to float rounding, and the setting kept
in the run's config. `sample --bf16`: really under autocast, close to float32 but not equal."""

from __future__ import annotations

import json

import numpy as np
import torch
from torch._dynamo.utils import counters

from conftest import TINY
from progflow.cli import _config_from_args, build_parser
from progflow.sampling import load_run, sample_run
from progflow.train import train


def test_compiled_training_and_sampling_match_eager(tmp_path):
    parse = build_parser().parse_args
    cfg = _config_from_args(parse(["train", *TINY, "--steps", "3", "--ckpt-every", "3", "--compile"]))
    assert cfg.compile and parse(["sample", "RUN", "--compile"]).compile  # the flags reach the code
    train(cfg.with_overrides({"compile": False}), tmp_path / "eager", progress=False)
    graphs = counters["stats"]["unique_graphs"]
    train(cfg, tmp_path / "compiled", progress=False)
    assert counters["stats"]["unique_graphs"] > graphs  # dynamo captured the training forward
    assert json.loads((tmp_path / "compiled" / "config.json").read_text())["compile"] is True
    _, eager, _ = load_run(tmp_path / "eager", ema=False)
    _, compiled, _ = load_run(tmp_path / "compiled", ema=False)
    for (name, a), (_, b) in zip(eager.state_dict().items(), compiled.state_dict().items()):
        torch.testing.assert_close(b, a, atol=2e-5, rtol=1e-4, msg=name)  # plain names: no `_orig_mod.` prefix

    # sampling through the compiled model gives the eager images (uint8) up to a rounding flip
    kw = {"n": 10, "nfe": 4, "progress": False}
    sample_run(tmp_path / "eager", out=tmp_path / "e.npz", **kw)
    graphs = counters["stats"]["unique_graphs"]
    sample_run(tmp_path / "eager", out=tmp_path / "c.npz", compile=True, **kw)
    assert counters["stats"]["unique_graphs"] > graphs
    with np.load(tmp_path / "e.npz") as e, np.load(tmp_path / "c.npz") as c:
        diff = np.abs(e["images"].astype(int) - c["images"].astype(int))
        assert diff.max() <= 1 and diff.mean() < 0.01 and (e["labels"] == c["labels"]).all()


def test_bf16_sampling_is_close_to_float32_and_really_bf16(tmp_path):
    from conftest import run_cli
    from progflow.sampling import generate

    cfg = _config_from_args(build_parser().parse_args(["train", *TINY, "--steps", "3", "--ckpt-every", "3"]))
    train(cfg, tmp_path / "run", progress=False)
    p = run_cli("sample", tmp_path / "run", "--n", "4", "--nfe", "2", "--bf16", "--no-progress", "--out",
                tmp_path / "b.npz", check=0)
    assert json.loads(p.stdout)["bf16"] is True and (tmp_path / "b.npz").exists()
    # without the flag a run samples in the precision it was trained in; --no-bf16 overrides it
    kw = {"n": 4, "nfe": 2, "progress": False}
    assert sample_run(tmp_path / "run", out=tmp_path / "f.npz", **kw)["bf16"] is False
    train(cfg.with_overrides({"bf16": True}), tmp_path / "run16", progress=False)
    assert sample_run(tmp_path / "run16", out=tmp_path / "g.npz", **kw)["bf16"] is True
    assert sample_run(tmp_path / "run16", out=tmp_path / "h.npz", bf16=False, **kw)["bf16"] is False
    assert build_parser().parse_args(["sample", "RUN", "--no-bf16"]).bf16 is False
    assert build_parser().parse_args(["sample", "RUN"]).bf16 is None
    cfg, model, _ = load_run(tmp_path / "run")
    torch.manual_seed(0)
    with torch.no_grad():  # 3 steps leave the zero-initialised gates near zero: give the net a real velocity
        for w in model.parameters():
            w.add_(0.05 * torch.randn_like(w))
    kw = {"n": 20, "nfe": 4, "progress": False, "raw": True}
    f32, b16 = (generate(cfg, model, bf16=b, **kw)[0] for b in (False, True))
    assert b16.dtype == torch.float32 and torch.isfinite(b16).all()  # the state stays float32
    err = (b16 - f32).pow(2).mean().sqrt()
    assert 1e-5 < err < 2e-2  # the network really ran in bfloat16 (float32 repeats itself exactly), and close


def test_native_bf16_reads_the_cpu_flags(tmp_path):
    from progflow.hardware import native_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f avx512_bf16 fma\n")
    assert native_bf16("cpu", cpuinfo=str(info))
    info.write_text("processor : 0\nflags : fpu sse avx2 avx512f fma\n")  # AVX-512 without its bf16 part
    assert not native_bf16("cpu", cpuinfo=str(info))
    assert not native_bf16("cpu", cpuinfo=str(tmp_path / "missing"))


def test_demo_precision_follows_the_choice_then_the_run_then_the_machine(tmp_path, monkeypatch):
    from progflow import demo, hardware

    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": True)
    assert demo._precision(tmp_path, None, "fashion-mnist") is True  # a new run on a native-bf16 machine
    assert demo._precision(tmp_path, None, "emoji") is False  # its xs model trains slower under bf16
    assert demo._precision(tmp_path, False, "fashion-mnist") is False  # the user's choice wins
    (tmp_path / "config.json").write_text(json.dumps({"bf16": False}))
    assert demo._precision(tmp_path, None, "fashion-mnist") is False  # a resume keeps the run's precision
    monkeypatch.setattr(hardware, "native_bf16", lambda device="cpu": False)
    (tmp_path / "config.json").unlink()
    assert demo._precision(tmp_path, None, "fashion-mnist") is False
