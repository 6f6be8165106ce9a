"""Checkpoints: safetensors for tensors, JSON for everything else; atomic; validated.

Layout of a run directory::

    RUN/config.json                  the TrainConfig (rebuilds the model)
    RUN/ckpt/step_00001000/          one checkpoint, complete or absent:
        model.safetensors ema.safetensors optim.safetensors state.json

A checkpoint is written into a hidden temporary folder, every file fsynced, then the
folder is renamed into place (atomic on POSIX) and the parent fsynced. A run killed at
any moment leaves either the old set of checkpoints or the old set plus the new one.
Nothing is ever unpickled: files are checked to be safetensors before they are parsed.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from progflow.checks import is_finite, shown, write_failure
from progflow.errors import CheckpointError

FORMAT = "progflow-checkpoint"
VERSION = 1
TENSOR_FILES = ("model", "ema", "optim")


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temporary file, fsync and rename. A failed write
    (full disk, I/O error) is a WriteError naming ``path``; ``path`` is then unchanged and
    the temporary file is gone."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_path(path.parent)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise write_failure(path, e) from None


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def check_safetensors(path: Path) -> None:
    """Refuse anything that is not a complete safetensors file, before parsing it.

    A pickle (first byte 0x80) or a ``torch.save`` zip ("PK") is refused without being
    read further, so no payload inside it can run.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(9)
            (n,) = struct.unpack("<Q", head[:8]) if len(head) >= 8 else (None,)
            # safetensors: a little-endian header length, then the JSON header. A header length
            # whose low byte is 0x80 starts like a pickle, so the pickle test comes second.
            if not (n is not None and 1 < n <= min(size - 8, 100_000_000) and head[8:9] == b"{"):
                if head[:1] == b"\x80" or head[:2] == b"PK":
                    raise CheckpointError(f"{path} is a pickle/torch.save file, not safetensors; progflow never "
                                          "unpickles")
                if n is None:
                    raise CheckpointError(f"{path} is truncated or not a safetensors file")
                raise CheckpointError(f"{path} is truncated or not a safetensors file (bad header length)")
            f.seek(8)
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{path} does not exist") from None
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise CheckpointError(f"{path} is not a safetensors file (header is not JSON)") from None
    except OSError as e:
        raise CheckpointError(f"{path} cannot be read: {e.strerror}") from None
    ends = [v["data_offsets"][1] for k, v in header.items() if k != "__metadata__" and isinstance(v, dict)]
    if max(ends, default=0) > size - 8 - n:
        raise CheckpointError(f"{path} is truncated ({size} bytes, header promises more)")


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    check_safetensors(path)
    try:
        return load_file(str(path))
    except (SafetensorError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt: {str(e).splitlines()[0]}") from None


def _write_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(path))
    fsync_path(path)


# ---- optimizer state <-> flat tensors + JSON --------------------------------------------
def flatten_optimizer(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, scalars = {}, {}
    for idx, st in state_dict["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"state.{idx}.{k}"] = v
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": state_dict["param_groups"], "scalars": scalars}


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in tensors.items():
        _, idx, k = key.split(".", 2)
        state.setdefault(int(idx), {})[k] = v
    for key, v in meta.get("scalars", {}).items():
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def encode_rng(state: torch.Tensor) -> str:
    return base64.b64encode(state.numpy().tobytes()).decode()


def decode_rng(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


# ---- checkpoint folders -------------------------------------------------------------------
def step_dir(ckpt_root: Path, step: int) -> Path:
    return Path(ckpt_root) / f"step_{step:08d}"


def save_checkpoint(ckpt_root: Path, step: int, tensors: dict[str, dict[str, torch.Tensor]], state: dict,
                    keep_last: int = 2) -> Path:
    """Atomically write one checkpoint folder and prune to the newest ``keep_last``."""
    ckpt_root = Path(ckpt_root)
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = step_dir(ckpt_root, step)
    if final.exists():  # the same step was saved before a resume; it is identical
        return final
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    name = "state.json"
    try:
        tmp.mkdir()
        for name, group in tensors.items():
            name = f"{name}.safetensors"
            _write_tensors(group, tmp / name)
        name = "state.json"
        with open(tmp / name, "w") as f:
            json.dump({"format": FORMAT, "version": VERSION, "step": step, **state}, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        fsync_path(tmp)
        os.rename(tmp, final)
        fsync_path(ckpt_root)
    except (OSError, SafetensorError) as e:  # full disk, I/O error: the previous checkpoints stay as they were
        shutil.rmtree(tmp, ignore_errors=True)
        kept = list_checkpoints(ckpt_root)
        raise write_failure(final / name, e, f"the last good checkpoint is {kept[-1]}" if kept
                            else "no checkpoint was kept") from None
    for old in list_checkpoints(ckpt_root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete checkpoint folders, oldest first (temporary folders are not listed)."""
    ckpt_root = Path(ckpt_root)
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.glob("step_*") if p.is_dir() and (p / "state.json").exists())


def clean_partial(ckpt_root: Path) -> None:
    """Remove temporary folders left by a run killed while writing a checkpoint."""
    for p in Path(ckpt_root).glob(".tmp-*"):
        shutil.rmtree(p, ignore_errors=True)


def read_state(path: Path) -> dict:
    f = Path(path) / "state.json"
    try:
        state = json.loads(f.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is not a progflow checkpoint (no state.json)") from None
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise CheckpointError(f"{f} is corrupt (not JSON)") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{f} is not a progflow checkpoint")
    if state.get("version", 0) > VERSION:
        raise CheckpointError(f"{f} was written by a newer progflow (version {state['version']})")
    return state


def load_checkpoint(path: Path, parts=TENSOR_FILES) -> tuple[dict[str, dict[str, torch.Tensor]], dict]:
    """Read and validate a checkpoint folder: ``({part: tensors}, state)``."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint folder")
    state = read_state(path)
    return {p: read_tensors(path / f"{p}.safetensors") for p in parts}, state


def check_state(state: dict, path: Path) -> None:
    """The JSON half of a checkpoint a run continues from: the step (matching the folder),
    the optimizer entry and the RNG state. A broken piece is a CheckpointError naming it."""
    path = Path(path)
    f = path / "state.json"
    step = state.get("step")
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise CheckpointError(f"{f} is corrupt: step must be a non-negative integer, got {shown(step)}")
    if path.name.startswith("step_") and path.name != step_dir(path.parent, step).name:
        raise CheckpointError(f"{f} is corrupt: step {step} in the folder {path.name}")
    opt = state.get("optimizer")
    if not (isinstance(opt, dict) and isinstance(opt.get("param_groups"), list)
            and all(isinstance(g, dict) for g in opt["param_groups"]) and isinstance(opt.get("scalars", {}), dict)):
        raise CheckpointError(f"{f} is corrupt: its optimizer entry is missing or malformed")
    try:
        rng = decode_rng(state["rng"]["torch_cpu"])
    except (KeyError, TypeError, ValueError):  # binascii.Error is a ValueError
        raise CheckpointError(f"{f} is corrupt: its rng entry is missing or not base64") from None
    if rng.numel() != torch.get_rng_state().numel():
        raise CheckpointError(f"{f} is corrupt: its rng state has {rng.numel()} bytes, torch's has "
                              f"{torch.get_rng_state().numel()}")


def load_optimizer_checked(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict,
                           source: Path) -> None:
    """Load a flattened optimizer state (``optim.safetensors`` + the state.json entry) into
    ``opt``, refusing one that does not fit its parameters or holds non-finite settings."""
    params = [p for g in opt.param_groups for p in g["params"]]
    where = f"{source}/optim.safetensors (with the optimizer entry of state.json)"
    try:
        sd = unflatten_optimizer(tensors, meta)
        if not set(sd["state"]) <= set(range(len(params))):
            raise ValueError("state for parameters the model does not have")
        for g in sd["param_groups"]:
            for k, v in g.items():
                if k != "params" and not (isinstance(v, (str, bool)) or v is None
                                          or all(is_finite(x) for x in (v if isinstance(v, (list, tuple)) else [v]))):
                    raise ValueError(f"param group setting {k} is {shown(v)}")
        opt.load_state_dict(sd)
    except (ValueError, KeyError, TypeError, IndexError) as e:
        raise CheckpointError(f"{where} does not fit the model: {shown(str(e), 100)}") from None
    for i, p in enumerate(params):
        for k, v in opt.state.get(p, {}).items():
            if torch.is_tensor(v) and v.ndim and v.shape != p.shape:
                raise CheckpointError(f"{where}: {k} of parameter {i} has shape {tuple(v.shape)}, the parameter "
                                      f"{tuple(p.shape)}")


def load_state_dict_checked(module: torch.nn.Module, tensors: dict[str, torch.Tensor], source: Path) -> None:
    """Load weights, turning missing/unexpected keys and shape mismatches into one-line errors."""
    own = module.state_dict()
    missing = sorted(set(own) - set(tensors))
    extra = sorted(set(tensors) - set(own))
    if missing or extra:
        raise CheckpointError(f"{source} does not match the model (missing {missing[:3]}, unexpected {extra[:3]})")
    for k, v in tensors.items():
        if own[k].shape != v.shape:
            raise CheckpointError(f"{source}: {k} has shape {tuple(v.shape)}, the model expects {tuple(own[k].shape)}")
    module.load_state_dict(tensors)


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over the state dict (names, dtypes, shapes, bytes, in name order): which weights
    a SideNet was fitted to, or which autoencoder made a latent cache."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
