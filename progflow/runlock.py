"""One writer per run directory: an advisory ``fcntl.flock`` on ``RUN/.progflow.lock``.

Every command that writes into a run holds its lock while it writes: ``train`` (and the
``demo`` and benchmark runs built on it) and ``fit-solver`` (which writes ``RUN/solver``).
A second writer is refused at once with one line naming the holder's PID. The kernel drops
the lock when its process exits or is killed, so a crash leaves no stale lock (at most the
file, which the next writer reuses). Readers (``sample``, ``eval``, ``info``) take no lock:
checkpoints and configs appear by an atomic rename, so a reader never sees half of one.

>>> import tempfile
>>> run = Path(tempfile.mkdtemp()) / "run"
>>> with run_lock(run):
...     with run_lock(run):  # re-entrant within one process (demo -> train)
...         (run / LOCK_NAME).exists()
True
>>> (run / LOCK_NAME).exists()  # removed on release
False
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from progflow.checks import write_failure
from progflow.errors import RunLocked

LOCK_NAME = ".progflow.lock"
_held: dict[str, int] = {}  # real path of a run this process holds -> nesting depth


def lock_holder(run_dir) -> str:
    """The PID written into the run's lock file ("unknown" when unreadable)."""
    try:
        return (Path(run_dir) / LOCK_NAME).read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def _acquire(lock: Path, run_dir: Path) -> int:
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"{run_dir} is being written by another progflow process (PID {lock_holder(run_dir)}); "
                            "wait for it to finish or stop it") from None
        try:  # the holder before us may have removed the file after we opened it: lock the new one
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


@contextmanager
def run_lock(run_dir, *, enabled: bool = True):
    """Hold ``run_dir``'s writer lock (creating the folder) for the ``with`` block.

    Folders created here are removed again if they are still empty when the block ends (a
    run refused after the lock was taken leaves nothing behind). ``enabled=False`` (the
    non-main processes under torchrun) does nothing.
    """
    run_dir = Path(run_dir)
    key = os.path.realpath(run_dir)
    if not enabled:
        yield run_dir
        return
    if key in _held:
        _held[key] += 1
        try:
            yield run_dir
        finally:
            _held[key] -= 1
        return
    created = []
    p = run_dir
    while not p.exists():
        created.append(p)
        p = p.parent
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        lock = run_dir / LOCK_NAME
        fd = _acquire(lock, run_dir)
    except OSError as e:
        raise write_failure(run_dir / LOCK_NAME, e) from None
    _held[key] = 1
    try:
        yield run_dir
    finally:
        del _held[key]
        try:
            os.unlink(lock)  # while still holding it: a waiter then sees a new inode and retries
        except OSError:
            pass
        os.close(fd)
        for d in created:  # innermost first
            try:
                d.rmdir()
            except OSError:
                break


__all__ = ["LOCK_NAME", "lock_holder", "run_lock"]
