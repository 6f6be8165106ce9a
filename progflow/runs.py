"""A run directory as readers see it: its config, its checkpoints and the model they hold.

Below :mod:`progflow.train`, :mod:`progflow.sampling` and :mod:`progflow.latent`, which all
read runs (the latent codec reads an autoencoder run), so that none of them needs another.
"""

from __future__ import annotations

import json
from pathlib import Path

from progflow import checkpoint as ckpt
from progflow.checks import check_device, check_run_dir
from progflow.config import TrainConfig
from progflow.errors import CheckpointError
from progflow.nn.dit import build_model


def load_run_config(run_dir: Path) -> TrainConfig:
    f = Path(run_dir) / "config.json"
    try:
        return TrainConfig.from_dict(json.loads(f.read_text()))
    except FileNotFoundError:
        raise CheckpointError(f"{run_dir} is not a progflow run (no config.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{f} is corrupt (not JSON)") from None


def find_checkpoint(run_dir: Path, step: int | None = None) -> Path:
    run_dir = Path(run_dir)
    found = ckpt.list_checkpoints(run_dir / "ckpt")
    if step is not None:
        found = [p for p in found if p == ckpt.step_dir(run_dir / "ckpt", step)]
    if not found:
        what = f"checkpoint at step {step}" if step is not None else "checkpoint"
        raise CheckpointError(f"{run_dir} has no {what} (looked in {run_dir / 'ckpt'})")
    return found[-1]


def load_run(run_dir: str | Path, *, step: int | None = None, ema: bool = True, device: str = "cpu"):
    """``(cfg, model, checkpoint_folder)`` with the EMA (default) or raw weights, in eval mode.

    A reader takes no lock: checkpoints appear whole (atomic rename), and one pruned by a
    training process between listing and reading is replaced by the newer one."""
    run_dir = Path(run_dir)
    check_device(device)
    check_run_dir(run_dir)
    cfg = load_run_config(run_dir)
    part = "ema" if ema else "model"
    for attempt in range(3):
        path = find_checkpoint(run_dir, step)
        try:
            tensors, _ = ckpt.load_checkpoint(path, parts=(part,))
            break
        except CheckpointError:
            if path.exists() or step is not None or attempt == 2:
                raise
    model = build_model(cfg)
    ckpt.load_state_dict_checked(model, tensors[part], path / f"{part}.safetensors")
    return cfg, model.to(device).eval(), path
