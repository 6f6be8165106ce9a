"""``progflow bench speed``: training and sampling images/s per preset, with the machine's
fp32 matmul GFLOP/s measured in the same run, so the share of peak is visible.

Per preset (default: base and DFM at ``xs`` and ``s``):

* **training step** (batch 64, AdamW, the method's own loss) and **sampling** (the method's
  sampler, ``nfe`` evaluations) images/s, and FLOPs per image counted by torch;
* **peer**: diffusers' ``DiTTransformer2DModel`` at the same width, depth, heads, patch,
  image size and classes (``pip install progflow[peer]``; skipped with a note without it),
  timed *interleaved* with progflow's model, round by round, so both see the same machine
  state: its training step (same batch, the flow-matching loss computed around it, AdamW)
  and one forward pass of a sampling batch, against progflow's forward on the same batch.
  The ratios are medians over rounds; a ratio below 1 means progflow is faster;
* **memory**: the peak resident set of a fresh process that trains ``steps`` steps or
  samples one batch, and that peak above the same process idle with torch imported;
* **bf16**: the same training step and sampling under bfloat16 autocast;
* **compile** (``--compile``): the same training step and sampling through
  ``torch.compile``, with the first call's time (the compile) and the training steps after
  which the compile has paid for itself;
* **profile** (``--profile``): where a training step's CPU time goes, by operator, from
  ``torch.profiler``, into ``speed_profile.json``.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

from progflow.bench.common import result_header, train_steps, write_result
from progflow.hardware import bf16_autocast
from progflow.methods import build_method
from progflow.nn.dit import build_model, count_parameters
from progflow.presets import preset_config
from progflow.rng import BatchRandom, generator

PRESETS = ("fmnist-base-xs", "fmnist-base-s", "fmnist-dfm-xs", "fmnist-dfm-s")


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


def _setup(preset: str, batch: int):
    """``(cfg, model, method, opt, x, y)``: the preset's model from seed 0, AdamW and a fixed
    batch, the same for every measurement of the benchmark."""
    cfg = preset_config(preset, batch_size=batch)
    torch.manual_seed(0)
    model, method = build_model(cfg), build_method(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x, y = torch.rand(batch, *cfg.data.shape) * 2 - 1, torch.arange(batch) % cfg.data.num_classes
    return cfg, model, method, opt, x, y


def _sample_seconds(method, model, ys, nfe: int):
    """``(seconds, result)`` of sampling ``ys`` at ``nfe`` (guidance 1)."""
    t0 = time.perf_counter()
    res = method.sample(model, ys, generator=generator(0), nfe=nfe, cfg_scale=1.0)
    return time.perf_counter() - t0, res


# ---- the peer: diffusers' DiT at the same configuration ------------------------------------
def peer_model(cfg) -> torch.nn.Module | None:
    """diffusers' ``DiTTransformer2DModel`` shaped like ``cfg``'s DiT (None without diffusers)."""
    try:
        from diffusers import DiTTransformer2DModel
    except ImportError:
        return None
    m, d = cfg.model, cfg.data
    return DiTTransformer2DModel(num_attention_heads=m.heads, attention_head_dim=m.width // m.heads,
                                 in_channels=d.channels, out_channels=d.channels, num_layers=m.depth,
                                 sample_size=d.image_size, patch_size=m.patch, num_embeds_ada_norm=d.num_classes,
                                 activation_fn="gelu-approximate")


class PeerStep:
    """One training step of the peer: the flow-matching loss around its forward (noise, time,
    interpolation, velocity MSE, as progflow's loss), backward, AdamW."""

    def __init__(self, model, x, y):
        self.model, self.x, self.y = model, x, y
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def __call__(self, steps: int) -> float:
        t0 = time.perf_counter()
        for k in range(steps):
            g = generator(k)
            x0 = torch.randn(self.x.shape, generator=g)
            t = torch.rand(self.x.shape[0], generator=g)
            xt = (1 - t.view(-1, 1, 1, 1)) * x0 + t.view(-1, 1, 1, 1) * self.x
            v = self.model(xt, timestep=t * 1000, class_labels=self.y, return_dict=False)[0]
            loss = (v - (self.x - x0)).pow(2).mean()
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return (time.perf_counter() - t0) / steps


def forward_seconds(fn, reps: int) -> float:
    """Median seconds of ``fn()`` under inference mode, after one warm-up call."""
    with torch.inference_mode():
        fn()
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def peer_rows(cfg, model, method, opt, x, y, *, rounds: int, steps: int, sample_batch: int) -> dict:
    """progflow vs the peer, interleaved round by round: training step and sampling forward."""
    torch.manual_seed(0)
    peer = peer_model(cfg)
    if peer is None:
        return {"skipped": "diffusers is not installed (pip install progflow[peer])"}
    step = PeerStep(peer, x, y)
    inputs = model.example_inputs(sample_batch)  # the model's own forward (every stage of DFM)
    xs = torch.randn(sample_batch, *cfg.data.shape)
    ts, ys = torch.full((sample_batch,), 0.5), torch.arange(sample_batch) % cfg.data.num_classes
    ours_train, peer_train, ours_fwd, peer_fwd = [], [], [], []
    step(1)
    train_steps(method, model, opt, x, y, 1)  # warm-up of both
    for r in range(rounds):
        ours_train.append(train_steps(method, model, opt, x, y, steps, first=1 + r * steps))
        peer_train.append(step(steps))
        ours_fwd.append(forward_seconds(lambda: model(*inputs), 1))
        peer_fwd.append(forward_seconds(lambda: peer(xs, timestep=ts * 1000, class_labels=ys, return_dict=False), 1))
    med = statistics.median
    return {"model": "diffusers.DiTTransformer2DModel", "params": count_parameters(peer), "rounds": rounds,
            "train_step_s": med(peer_train), "ours_train_step_s": med(ours_train),
            "train_ratio": med(o / p for o, p in zip(ours_train, peer_train)),
            "forward_batch": sample_batch, "forward_s": med(peer_fwd), "ours_forward_s": med(ours_fwd),
            "forward_ratio": med(o / p for o, p in zip(ours_fwd, peer_fwd))}


# ---- memory: a fresh process per measurement -----------------------------------------------
def _peak_rss_mb() -> float:
    """Peak resident memory of this process image in MB: ``VmHWM`` (Linux; unlike
    ``ru_maxrss`` it is not carried over from the parent through fork and exec), else
    ``ru_maxrss``."""
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _rss_job(preset: str, phase: str, batch: int, steps: int, nfe: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    idle = _peak_rss_mb()
    cfg, model, method, opt, x, y = _setup(preset, batch)
    if phase == "train":
        train_steps(method, model, opt, x, y, steps)
    else:
        model.eval()
        _sample_seconds(method, model, y, nfe)
    peak = _peak_rss_mb()
    return {"peak_rss_mb": peak, "above_idle_mb": peak - idle}


def peak_memory(preset: str, phase: str, **kw) -> dict:
    """Peak resident memory of a fresh process (spawned: nothing of this one's heap) that
    trains or samples ``preset``."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_rss_job, (preset, phase), {**kw, "threads": torch.get_num_threads()})


# ---- profile -------------------------------------------------------------------------------
def profile_train_step(preset: str, *, batch: int, steps: int, top: int = 15) -> dict:
    """The operators a training step spends its CPU time in (self time, share of the total)."""
    from torch.profiler import ProfilerActivity, profile

    _, model, method, opt, x, y = _setup(preset, batch)
    train_steps(method, model, opt, x, y, 2)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        train_steps(method, model, opt, x, y, steps, first=2)
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    ops = sorted(events, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]
    return {"preset": preset, "batch": batch, "steps": steps, "self_cpu_ms_per_step": total / 1e3 / steps,
            "top_ops": [{"op": e.key, "calls_per_step": e.count / steps, "ms_per_step": e.self_cpu_time_total / 1e3 / steps,
                         "share": e.self_cpu_time_total / total} for e in ops]}


def bf16_row(method, model, opt, x, y, ys, *, steps: int, nfe: int, eager: dict) -> dict:
    """The same training step and sampling under bfloat16 autocast (``TrainConfig.bf16``,
    ``progflow sample --bf16``): fast where the CPU multiplies bfloat16 natively (AVX512-BF16,
    AMX), slower where autocast only adds casts."""
    with bf16_autocast("cpu"):
        model.train()
        train_steps(method, model, opt, x, y, 1)
        train_s = train_steps(method, model, opt, x, y, steps, first=1)
        model.eval()
        _sample_seconds(method, model, ys[:4], 2)  # warm-up
        sample_s, _ = _sample_seconds(method, model, ys, nfe)
    return {"train_step_s": train_s, "train_speedup": eager["train_step_s"] / train_s,
            "sample_images_per_s": len(ys) / sample_s, "sample_speedup": len(ys) / sample_s / eager["sample_images_per_s"]}


def compiled_row(preset: str, *, steps: int, batch: int, sample_n: int, nfe: int, eager: dict) -> dict:
    """``torch.compile`` against eager on the same preset: the first training step and the
    first sampling call (compile included), then the timed steps and sampling. The compile
    is cold, as on a user's first run: dynamo is reset and inductor gets an empty cache
    folder (a warm one from an earlier run made the first step 2 s instead of 30)."""
    import os
    import shutil
    import tempfile

    cold = tempfile.mkdtemp(prefix="progflow-inductor-")
    before = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = cold
    torch._dynamo.reset()
    try:
        return _compiled_row(preset, steps=steps, batch=batch, sample_n=sample_n, nfe=nfe, eager=eager)
    finally:
        if before is None:
            os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        else:
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = before
        shutil.rmtree(cold, ignore_errors=True)


def _compiled_row(preset: str, *, steps: int, batch: int, sample_n: int, nfe: int, eager: dict) -> dict:
    cfg, model, method, opt, x, y = _setup(preset, batch)
    net = torch.compile(model)
    train_compile_s = train_steps(method, net, opt, x, y, 1)
    train_steps(method, net, opt, x, y, 1, first=1)
    train_s = train_steps(method, net, opt, x, y, steps, first=2)
    model.eval()
    ys = torch.arange(sample_n) % cfg.data.num_classes
    sample_first_s, _ = _sample_seconds(method, net, ys, nfe)  # the compile included
    sample_s, _ = _sample_seconds(method, net, ys, nfe)
    return {"train_first_step_s": train_compile_s, "train_step_s": train_s, "train_images_per_s": batch / train_s,
            "train_speedup": eager["train_step_s"] / train_s, "sample_first_call_s": sample_first_s,
            "sample_images_per_s": sample_n / sample_s,
            "sample_speedup": sample_n / sample_s / eager["sample_images_per_s"],
            "break_even_train_steps": break_even(train_compile_s, train_s, eager["train_step_s"])}


def break_even(first_s: float, step_s: float, eager_step_s: float) -> float | None:
    """Training steps after which the compile has paid for itself; None when the compiled
    step is not faster (it never does)."""
    return (first_s - step_s) / (eager_step_s - step_s) if step_s < eager_step_s else None


# ---- the command ---------------------------------------------------------------------------
def measure(preset: str, *, steps: int, batch: int, sample_n: int, nfe: int, rounds: int) -> dict:
    cfg, model, method, opt, x, y = _setup(preset, batch)
    flops = train_step_flops(method, model, x, y)

    train_steps(method, model, opt, x, y, 2)  # warm-up
    train_s = train_steps(method, model, opt, x, y, steps, first=2)
    model.eval()
    ys = torch.arange(sample_n) % cfg.data.num_classes
    _sample_seconds(method, model, ys[:4], 2)  # warm-up
    sample_s, res = _sample_seconds(method, model, ys, nfe)
    row = {"preset": preset, "method": cfg.method.name, "params": count_parameters(model), "batch": batch,
           "timed_steps": steps, "train_step_s": train_s, "train_images_per_s": batch / train_s,
           "train_gflop_per_image": flops / batch / 1e9, "train_gflop_per_s": flops / train_s / 1e9,
           "sample_nfe": res.nfe, "sample_images_per_s": sample_n / sample_s,
           "sample_forward_images_per_s": sample_n * res.nfe / sample_s}
    row["bf16"] = bf16_row(method, model, opt, x, y, ys, steps=steps, nfe=nfe, eager=row)
    model.train()
    row["peer"] = peer_rows(cfg, model, method, opt, x, y, rounds=rounds, steps=steps, sample_batch=sample_n)
    return row


def run_speed(args) -> Path:
    tiny = args.tiny
    presets = args.presets or (["fmnist-base-xs", "fmnist-dfm-xs"] if tiny else list(PRESETS))
    steps = args.steps or (2 if tiny else 10)
    batch, sample_n, nfe = (8, 8, 2) if tiny else (64, 100, 20)
    peak = matmul_gflops(512 if tiny else 1024, 0.3 if tiny else 3.0)
    rows = []
    for p in presets:
        r = measure(p, steps=steps, batch=batch, sample_n=sample_n, nfe=nfe, rounds=2 if tiny else 5)
        r["share_of_matmul_peak"] = r["train_gflop_per_s"] / peak
        if getattr(args, "compile", False):
            r["compiled"] = compiled_row(p, steps=steps, batch=batch, sample_n=sample_n, nfe=nfe, eager=r)
        r["memory"] = {phase: {"batch": batch if phase == "train" else sample_n,
                               **peak_memory(p, phase, batch=batch if phase == "train" else sample_n,
                                             steps=steps, nfe=nfe)} for phase in ("train", "sample")}
        rows.append(r)
        peer = r["peer"]
        vs = (f"; vs diffusers DiT: train step {peer['train_ratio']:.2f}x, forward {peer['forward_ratio']:.2f}x"
              if "train_ratio" in peer else f"; peer skipped: {peer['skipped']}")
        vs += f"; bf16: train {r['bf16']['train_speedup']:.2f}x, sample {r['bf16']['sample_speedup']:.2f}x"
        if "compiled" in r:
            c = r["compiled"]
            vs += (f"; compiled: train {c['train_speedup']:.2f}x (first step {c['train_first_step_s']:.0f} s), "
                   f"sample {c['sample_speedup']:.2f}x (first call {c['sample_first_call_s']:.0f} s)")
        print(f"{p}: train {r['train_images_per_s']:.1f} img/s ({r['train_gflop_per_s']:.1f} GFLOP/s, "
              f"{100 * r['share_of_matmul_peak']:.0f}% of matmul peak); sample {r['sample_images_per_s']:.1f} img/s "
              f"at {r['sample_nfe']} NFE; peak memory train {r['memory']['train']['peak_rss_mb']:.0f} MB, sample "
              f"{r['memory']['sample']['peak_rss_mb']:.0f} MB{vs}", flush=True)
    data_s = data_seconds_per_batch(batch, getattr(args, "data_dir", None), tiny)
    for r in rows:
        r["data_share_of_step"] = data_s / r["train_step_s"]
    print(f"data loading: {1e3 * data_s:.2f} ms per batch of {batch} "
          f"({100 * max(r['data_share_of_step'] for r in rows):.2f}% of a training step at most)")
    header = result_header(args.seed)
    result = {**header, "benchmark": "speed", "matmul_fp32_gflop_per_s": peak, "data_s_per_batch": data_s,
              "torch_threads": torch.get_num_threads(), "results": rows}
    path = write_result(result, Path(args.out_dir) / ("speed_tiny.json" if tiny else "speed.json"))
    if getattr(args, "profile", False):
        prof = [profile_train_step(p, batch=batch, steps=steps) for p in presets]
        ppath = write_result({**header, "benchmark": "speed-profile", "profiles": prof},
                             path.with_name(path.stem + "_profile.json"))
        for p in prof:
            print(f"{p['preset']}: " + ", ".join(f"{o['op']} {100 * o['share']:.0f}%" for o in p["top_ops"][:6]))
        print(f"wrote {ppath}")
    print(f"matmul fp32 peak {peak:.1f} GFLOP/s; wrote {path}")
    return path


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
