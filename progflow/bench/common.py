"""What every benchmark shares: the result header (command, machine, date, seed), atomic JSON
writing, and the training-time helpers. The benchmarks import these from here; the package's
``__init__`` only parses and dispatches, so no benchmark module imports its dispatcher."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from pathlib import Path

import torch


def machine_info() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}


def result_header(seed: int) -> dict:
    return {"command": " ".join(["progflow"] + sys.argv[1:]), "machine": machine_info(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "seed": seed}


def write_result(result: dict, path: Path) -> Path:
    from progflow.checkpoint import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(result, indent=2) + "\n")
    return path


def logged_train_seconds(log_path, batch_size: int) -> float | None:
    """A run's training compute time from its ``log.jsonl`` windows (steps times batch over
    the window's images/s): the time spent training, summed over resumed segments, the time
    between a kill and its resume left out. None without a log."""
    import json
    from pathlib import Path

    log_path = Path(log_path)
    if not log_path.exists():
        return None
    lines = [json.loads(x) for x in log_path.read_text().splitlines() if x.strip()]
    steps = [r["step"] for r in lines]
    return sum((b - a) * batch_size / r["images_per_s"] for a, b, r in zip([0, *steps], steps, lines))


def train_steps(method, model, opt, x, y, steps: int, first: int = 0) -> float:
    """Run ``steps`` optimizer steps on the fixed batch ``(x, y)``; returns seconds per step."""
    import time

    from progflow.rng import BatchRandom

    t0 = time.perf_counter()
    for k in range(first, first + steps):
        loss, _ = method.loss(model, x, y, BatchRandom(0, k, x.shape[0], slice(None)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (time.perf_counter() - t0) / steps
