from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# A tiny run on the synthetic dataset: seconds, not minutes.
TINY = ["--preset", "fmnist-base-xs", "--set", "data.dataset=synthetic", "--set", "data.n=256",
        "--set", "model.depth=2", "--batch-size", "16", "--log-every", "1", "--sample-every", "0",
        "--no-progress"]


def cli_env(**extra) -> dict:
    env = dict(os.environ)
    env.update({"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT), **extra})
    return env


def run_cli(*args, check=None, env=None, timeout=300) -> subprocess.CompletedProcess:
    """Run ``progflow ARGS`` as a user would (a subprocess)."""
    p = subprocess.run([sys.executable, "-m", "progflow.cli", *map(str, args)], capture_output=True, text=True,
                       env=env or cli_env(), timeout=timeout, cwd=ROOT)
    if check is not None:
        assert p.returncode == check, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"
    return p


def run_torchrun(*args, nproc: int | None = 2, timeout=600) -> subprocess.CompletedProcess:
    """``torchrun [--nproc_per_node NPROC] ARGS`` on a free port; asserts it succeeded and shows each
    rank's own error lines (not just the launcher's summary) when it did not."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [str(Path(sys.executable).with_name("torchrun")), *(["--nproc_per_node", str(nproc)] if nproc else []),
           "--master_port", str(port), *map(str, args)]
    p = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), timeout=timeout, cwd=ROOT)
    if p.returncode:
        own = [ln for ln in p.stderr.splitlines() if "torch/distributed/elastic" not in ln and ln.strip()]
        raise AssertionError(f"torchrun {' '.join(map(str, args))} exited {p.returncode}:\n" + "\n".join(own[:60]))
    return p


def kill_after_log_lines(args, run: Path, lines: int = 6, env=None) -> None:
    """Start ``progflow ARGS --out RUN`` and SIGKILL it once its log has ``lines`` lines (a run
    killed mid-training, for the exact-resume tests)."""
    import signal
    import time

    p = subprocess.Popen([sys.executable, "-m", "progflow.cli", *map(str, args), "--out", str(run)],
                         env=env or cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not ((run / "log.jsonl").exists() and len(read_log(run)) >= lines):
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()


def read_log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines() if x.strip()]


def assert_one_line_error(p: subprocess.CompletedProcess, *needles: str) -> None:
    assert p.returncode == 2, f"exit {p.returncode}\n{p.stderr}"
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{p.stderr}"
    assert "Traceback" not in p.stderr
    for n in needles:
        assert n in lines[0], f"{n!r} not in {lines[0]!r}"


@pytest.fixture
def one_thread():
    """Tiny models run fastest on one thread, above all on a shared machine."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def tiny_args():
    return list(TINY)


@pytest.fixture(scope="session")
def quick_classifier_cache(tmp_path_factory):
    """A cache folder holding a classifier trained for a few steps (the real one takes minutes)."""
    import torch

    from progflow.data import load_fashion_mnist
    from progflow.eval import default_classifier_path, save_classifier, train_classifier

    cache = tmp_path_factory.mktemp("cache")
    old = os.environ.get("PROGFLOW_CACHE")
    os.environ["PROGFLOW_CACHE"] = str(cache)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        data = load_fashion_mnist(split="train")
        model = train_classifier(data, seed=0, batch_size=64, max_steps=40, progress=False)
        save_classifier(model, default_classifier_path(0), test_accuracy="n/a")
    finally:
        torch.set_num_threads(threads)
        if old is None:
            os.environ.pop("PROGFLOW_CACHE")
        else:
            os.environ["PROGFLOW_CACHE"] = old
    return cache
