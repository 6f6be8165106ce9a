"""Result files: the header every measured result carries (command, machine, date, seed) and
the atomic JSON write. The benchmarks, the demo and ``eval-ae`` all write through these."""

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
