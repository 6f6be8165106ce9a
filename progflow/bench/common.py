"""What every benchmark shares: the result header (command, machine, date, seed) and atomic
JSON writing (kept in :mod:`progflow.results`, below the package's other layers, and re-exported
here), and the training-time helpers. The package's ``__init__`` only parses and dispatches,
so no benchmark module imports its dispatcher."""

from __future__ import annotations

from progflow.results import machine_info, result_header, write_result  # noqa: F401  (re-exported)


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
