"""``progflow bench speed``: training and sampling images/s per preset, with the machine's
fp32 matmul GFLOP/s measured in the same run, so the share of peak is visible."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from progflow.bench.common import result_header, train_steps, write_result
from progflow.methods import build_method
from progflow.nn.dit import build_model, count_parameters
from progflow.presets import preset_config
from progflow.rng import BatchRandom, generator


def matmul_gflops(n: int = 1024, seconds: float = 2.0) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
    return 2 * n**3 * reps / (time.perf_counter() - t0) / 1e9


def train_step_flops(method, model, x, y) -> float:
    """FLOPs of one forward + backward of the training loss (counted by torch)."""
    counter = FlopCounterMode(display=False)
    with counter:
        loss, _ = method.loss(model, x, y, BatchRandom(0, 0, x.shape[0], slice(None)))
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def measure(preset: str, *, steps: int, batch: int, sample_n: int, nfe: int) -> dict:
    cfg = preset_config(preset, batch_size=batch)
    torch.manual_seed(0)
    model = build_model(cfg)
    method = build_method(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.rand(batch, *cfg.data.shape) * 2 - 1
    y = torch.arange(batch) % cfg.data.num_classes
    flops = train_step_flops(method, model, x, y)

    train_steps(method, model, opt, x, y, 2)  # warm-up
    train_s = train_steps(method, model, opt, x, y, steps, first=2)
    model.eval()
    ys = torch.arange(sample_n) % cfg.data.num_classes
    method.sample(model, ys[:4], generator=generator(0), nfe=2)
    t0 = time.perf_counter()
    res = method.sample(model, ys, generator=generator(0), nfe=nfe, cfg_scale=1.0)
    sample_s = time.perf_counter() - t0
    return {"preset": preset, "params": count_parameters(model), "batch": batch, "timed_steps": steps,
            "train_step_s": train_s, "train_images_per_s": batch / train_s,
            "train_gflop_per_image": flops / batch / 1e9, "train_gflop_per_s": flops / train_s / 1e9,
            "sample_nfe": res.nfe, "sample_images_per_s": sample_n / sample_s,
            "sample_forward_images_per_s": sample_n * res.nfe / sample_s}


def data_seconds_per_batch(batch: int, data_dir=None, tiny: bool = False) -> float:
    """Time to fetch one training batch from Fashion-MNIST as the trainer does it."""
    from progflow.data import load_dataset, to_model_range
    from progflow.train import BatchOrder

    if tiny:
        data = load_dataset("synthetic", n=256)
    else:
        data = load_dataset("fashion-mnist", data_dir=data_dir)
    order = BatchOrder(len(data), batch, 0)
    reps = 5 if tiny else 200
    t0 = time.perf_counter()
    for k in range(reps):
        idx = order.indices(k)
        to_model_range(data.images[idx]), data.labels[idx]
    return (time.perf_counter() - t0) / reps


def run_speed(args) -> Path:
    presets = args.presets or ["fmnist-base-xs", "fmnist-base-s"]
    steps = args.steps or (2 if args.tiny else 10)
    peak = matmul_gflops(512 if args.tiny else 1024, 0.3 if args.tiny else 3.0)
    rows = []
    for p in presets:
        r = measure(p, steps=steps, batch=8 if args.tiny else 64, sample_n=8 if args.tiny else 100,
                    nfe=2 if args.tiny else 20)
        r["share_of_matmul_peak"] = r["train_gflop_per_s"] / peak
        rows.append(r)
        print(f"{p}: train {r['train_images_per_s']:.1f} img/s ({r['train_gflop_per_s']:.1f} GFLOP/s, "
              f"{100 * r['share_of_matmul_peak']:.0f}% of matmul peak); sample {r['sample_images_per_s']:.1f} img/s "
              f"at {r['sample_nfe']} NFE")
    batch = 8 if args.tiny else 64
    data_s = data_seconds_per_batch(batch, getattr(args, "data_dir", None), args.tiny)
    for r in rows:
        r["data_share_of_step"] = data_s / r["train_step_s"]
    print(f"data loading: {1e3 * data_s:.2f} ms per batch of {batch} "
          f"({100 * max(r['data_share_of_step'] for r in rows):.2f}% of a training step at most)")
    result = {**result_header(args.seed), "benchmark": "speed", "matmul_fp32_gflop_per_s": peak,
              "data_s_per_batch": data_s, "results": rows}
    path = write_result(result, Path(args.out_dir) / ("speed_tiny.json" if args.tiny else "speed.json"))
    print(f"matmul fp32 peak {peak:.1f} GFLOP/s; wrote {path}")
    return path
