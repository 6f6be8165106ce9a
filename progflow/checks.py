"""Checks every command makes on its arguments before it does any work.

Numbers: NaN and infinities are refused, counts must be positive, seeds non-negative;
nothing is silently replaced by a default. Devices: the name must parse, and at the
point of use the machine must have it. Output paths: a file or folder that cannot be
written (a read-only or virtual filesystem like ``/proc``, an existing file used as a
folder, a folder where a file is wanted) is refused before the work that would write it.
Write failures (full disk, I/O errors) become one :class:`~progflow.errors.WriteError`
line naming the file.

>>> check_count(3, "--n")
3
>>> check_finite(float("nan"), "--cfg")
Traceback (most recent call last):
...
progflow.errors.ConfigError: --cfg must be a finite number; got nan
"""

from __future__ import annotations

import math
import os
import re
import tempfile
from pathlib import Path

from progflow.errors import ConfigError, ProgflowError, WriteError

DEVICE_NAME = re.compile(r"(cpu|cuda|mps)(:\d+)?")
# Upper bounds where a larger request can only be a mistake (it would run for days or not fit in memory).
MAX_NFE = 100_000
MAX_SAMPLES = 10_000_000
MAX_SEED = 2**32 - 1  # rng.derive_seed keeps 32 bits of each part: larger seeds would repeat smaller ones


# ---- numbers --------------------------------------------------------------------------------
def shown(v, limit: int = 60) -> str:
    """``repr(v)`` shortened for an error line (a huge number, a long list)."""
    try:
        r = repr(v)
    except ValueError:  # an int too long to print
        r = f"<{type(v).__name__}>"
    return r if len(r) <= limit else r[: limit - 3] + "..."


def is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def is_finite(v) -> bool:
    """An int (however large) or a float that is neither NaN nor infinite."""
    return is_number(v) and (isinstance(v, int) or math.isfinite(v))


def check_finite(v, name: str, *, positive: bool = False):
    """A finite int or float (``positive``: also > 0)."""
    if not is_finite(v) or (positive and v <= 0):
        raise ConfigError(f"{name} must be a {'positive' if positive else 'finite'} number; got {shown(v)}")
    return v


def check_count(v, name: str, minimum: int = 1, maximum: int | None = None):
    """An integer of at least ``minimum`` (1: a count; 0: a seed or an index) and at most
    ``maximum`` (if given)."""
    if not isinstance(v, int) or isinstance(v, bool):
        raise ConfigError(f"{name} must be an integer; got {shown(v)}")
    if v < minimum:
        what = {0: "non-negative", 1: "positive"}.get(minimum, f"at least {minimum}")
        raise ConfigError(f"{name} must be {what}; got {shown(v)}")
    if maximum is not None and v > maximum:
        raise ConfigError(f"{name} must be at most {maximum}; got {shown(v)}")
    return v


def check_sampling_args(*, n=None, nfe=None, cfg_scale=None, cfg_interval=None, shift=None, batch_size=None,
                        seed=None, step=None) -> None:
    """The arguments ``sample`` and ``edit`` share; ``None`` means "the run's default"."""
    for name, v, most in (("--n", n, MAX_SAMPLES), ("--nfe", nfe, MAX_NFE), ("--batch-size", batch_size, None),
                          ("--step", step, None)):
        if v is not None:
            check_count(v, name, maximum=most)
    if seed is not None:
        check_count(seed, "--seed", minimum=0, maximum=MAX_SEED)
    if cfg_scale is not None:
        check_finite(cfg_scale, "--cfg")
    if shift is not None:
        check_finite(shift, "--shift", positive=True)
    if cfg_interval is not None:
        lo, hi = cfg_interval
        if not (is_number(lo) and is_number(hi) and 0.0 <= lo <= hi <= 1.0):
            raise ConfigError(f"--cfg-interval must satisfy 0 <= LO <= HI <= 1; got {lo} {hi}")


def check_run_dir(run_dir) -> Path:
    """An existing run directory (its contents are checked by whoever reads them)."""
    if not Path(run_dir).is_dir():
        raise ProgflowError(f"run directory {run_dir} does not exist")
    return Path(run_dir)


# ---- devices --------------------------------------------------------------------------------
def check_device_name(device, name: str = "device") -> str:
    """The form of a device name (cpu, cuda, cuda:1, mps), whatever this machine has."""
    if not isinstance(device, str) or not DEVICE_NAME.fullmatch(device):
        raise ConfigError(f"{name} must be cpu, cuda, cuda:N or mps; got {shown(device)}")
    return device


def check_device(device, name: str = "--device") -> str:
    """A device this machine has: CUDA and MPS devices must be visible to torch."""
    import torch

    check_device_name(device, name)
    kind, _, index = device.partition(":")
    if kind == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{name} {device}: this machine has no CUDA device torch can use; use cpu")
        if index and int(index) >= count:
            raise ConfigError(f"{name} {device}: this machine has {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif kind == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"{name} {device}: MPS is not available on this machine; use cpu")
    return device


# ---- output paths ---------------------------------------------------------------------------
def _probe_folder(folder: Path, what: str, target: Path) -> None:
    """Create and remove a temporary file in ``folder``: the one test of writability that
    also holds for root and for virtual filesystems such as /proc."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=".progflow-probe-", dir=folder)
    except OSError as e:
        raise WriteError(f"{what} {target} cannot be written: {folder} is not writable ({e.strerror})") from None
    os.close(fd)
    os.unlink(tmp)


def _existing_ancestor(path: Path, what: str, target: Path) -> Path:
    """The nearest existing folder at or above ``path``; refuses a file on the way."""
    p = path
    while not p.exists():
        if p.is_symlink():  # a dangling link
            raise WriteError(f"{what} {target}: {p} is a broken symbolic link")
        p = p.parent
    if not p.is_dir():
        raise WriteError(f"{what} {target}: {p} is a file, not a folder")
    return p


def check_out_dir(path, what: str = "--out") -> Path:
    """A folder that can be created or written into (nothing is created here)."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise WriteError(f"{what} {path} is a file, not a folder")
    _probe_folder(_existing_ancestor(path, what, path), what, path)
    return path


def check_out_file(path, what: str = "--out", suffix: str | None = None) -> Path:
    """A file that can be (over)written, with ``suffix`` when given (nothing is created here)."""
    path = Path(path)
    if suffix and path.suffix != suffix:
        raise ConfigError(f"{what} must end in {suffix}; got {path}")
    if path.is_dir():
        raise WriteError(f"{what} {path} is a folder; name a file")
    _probe_folder(_existing_ancestor(path.parent, what, path), what, path)
    return path


def write_failure(path, exc: BaseException, after: str = "") -> WriteError:
    """One line for a failed write of ``path``: the OS's reason (safetensors' errors carry
    it inside their message) and ``after``, e.g. which checkpoint was kept."""
    reason = getattr(exc, "strerror", None)
    if not reason:
        m = re.search(r'message: "([^"]+)"|I/O error: (.+?) \(os error', str(exc))
        reason = next(filter(None, m.groups())) if m else (str(exc).splitlines() or [type(exc).__name__])[0]
    return WriteError(f"cannot write {path}: {reason}{'; ' + after if after else ''}")


__all__ = ["MAX_NFE", "MAX_SAMPLES", "MAX_SEED", "check_count", "check_device", "check_device_name", "check_finite",
           "check_out_dir", "check_out_file", "check_run_dir", "check_sampling_args", "is_finite", "is_number", "shown", "write_failure"]
