"""The trainer: AdamW with warm-up, gradient clipping, EMA, optional bf16 autocast,
torchrun/DDP, JSONL logging, sample grids, atomic checkpoints and exact resume.

Exact resume: all randomness of step ``k`` comes from a generator seeded by
``(seed, k)`` (:mod:`progflow.rng`) and the data order from ``(seed, epoch)``, so the
state to restore is only weights, EMA, optimizer and the step. A run killed at any
moment and resumed with ``resume=True`` ends bit for bit where the uninterrupted run ends
(same machine, same thread count).

Under ``torchrun --nproc_per_node P`` each process takes a contiguous ``1/P`` slice of the
same global batch (and of the same random draws); DDP averages the gradients, so the
update equals the single-process one up to floating-point reduction order.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import time
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm import tqdm

from progflow import checkpoint as ckpt
from progflow.checks import check_device, check_out_dir, write_failure
from progflow.config import TrainConfig
from progflow.data import center_crop, save_grid_png, to_model_range, to_uint8
from progflow.errors import CheckpointError, ProgflowError, TrainingDiverged
from progflow.hardware import bf16_autocast
from progflow.latent import load_run_data, to_pixels
from progflow.methods import build_method, method_class
from progflow.nn.dit import build_model, count_parameters
from progflow.rng import BatchRandom, derive_seed, generator
from progflow.runlock import run_lock
from progflow.runs import load_run_config  # noqa: F401 (re-exported: progflow.train.load_run_config)


class Distributed:
    """World size, rank and helpers; world size 1 is the plain single-process path."""

    def __init__(self, device: str):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.owns_group = self.world > 1 and not dist.is_initialized()
        if self.owns_group:
            dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // self.world))
        self.main = self.rank == 0

    def close(self) -> None:
        """Destroy the process group this object created. Left to interpreter shutdown, gloo's
        worker threads can free tensors after Python is gone and the process dies with SIGABRT
        (seen under torchrun on a loaded 2-core machine)."""
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False

    def mean(self, value: torch.Tensor) -> torch.Tensor:
        if self.world > 1:
            value = value.clone()
            dist.all_reduce(value)
            value /= self.world
        return value

    def barrier(self):
        if self.world > 1:
            dist.barrier()


def lr_at(cfg: TrainConfig, step: int) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then constant."""
    return cfg.lr * min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else cfg.lr


def ema_decay_at(decay: float, step: int) -> float:
    """EMA decay with warm-up (methods.md section 6): early steps average over few updates."""
    return min(decay, (1 + step) / (10 + step))


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p.detach(), 1 - decay)


class BatchOrder:
    """Deterministic shuffled order: epoch ``e`` is a permutation seeded by ``(seed, e)``;
    step ``k`` takes batch ``k mod (N // B)`` of epoch ``k // (N // B)`` (last partial batch dropped)."""

    def __init__(self, n: int, batch: int, seed: int):
        if n < batch:
            raise ProgflowError(f"dataset has {n} samples, fewer than the batch size {batch}")
        self.n, self.batch, self.seed = n, batch, seed
        self.per_epoch = n // batch
        self._epoch, self._perm = -1, None

    def position(self, step: int) -> dict:
        return {"epoch": step // self.per_epoch, "batch_in_epoch": step % self.per_epoch}

    def indices(self, step: int) -> torch.Tensor:
        epoch, b = divmod(step, self.per_epoch)
        if epoch != self._epoch:
            self._perm = torch.randperm(self.n, generator=generator(self.seed, 1, epoch))
            self._epoch = epoch
        return self._perm[b * self.batch:(b + 1) * self.batch]


# fields a run fills in when it starts (from its data), so a resume's config does not give them
DERIVED_FIELDS = ("method.stage_std", "data.latent_scale", "data.latent_hash")


def check_resume_config(saved: TrainConfig, wanted: TrainConfig, run_dir: Path) -> None:
    a, b = saved.to_dict(), wanted.to_dict()
    diffs = []
    for key in a:
        if key in TrainConfig.RESUMABLE_CHANGES:
            continue
        if isinstance(a[key], dict):
            diffs += [f"{key}.{k}" for k in a[key] if a[key][k] != b[key][k] and f"{key}.{k}" not in DERIVED_FIELDS]
        elif a[key] != b[key]:
            diffs.append(key)
    if diffs:
        raise CheckpointError(f"--resume: config does not match the run in {run_dir} (differs in {', '.join(diffs)})")


def _log_record(line: str):
    try:
        rec = json.loads(line)
    except json.JSONDecodeError:
        return None
    ok = isinstance(rec, dict) and isinstance(rec.get("step"), int) and not isinstance(rec["step"], bool)
    return rec if ok else None


def read_log_lines(log_path: Path) -> list[tuple[int, str]]:
    """``(step, line)`` for every record of a run's ``log.jsonl``. A half-written last line
    (the process was killed or the disk filled mid-write) is dropped; any other line that is
    not a JSON record with an integer step is a CheckpointError naming the file and line."""
    if not log_path.exists():
        return []
    try:
        lines = log_path.read_text().split("\n")
    except UnicodeDecodeError:
        raise CheckpointError(f"{log_path} is corrupt (not text)") from None
    tail = lines.pop()  # "" when the file ends with a newline, else the unfinished last line
    out = []
    for i, line in enumerate(lines + ([tail] if _log_record(tail) else []), 1):
        if line.strip():
            rec = _log_record(line)
            if rec is None:
                raise CheckpointError(f"{log_path} is corrupt at line {i} (not a JSON record with a step)")
            out.append((rec["step"], line))
    return out


def _trim_log(log_path: Path, step: int) -> None:
    """After a resume, drop log lines written after the checkpoint we resume from."""
    if log_path.exists():
        keep = [line for s, line in read_log_lines(log_path) if s <= step]
        ckpt.atomic_write_text(log_path, "".join(line + "\n" for line in keep))


@torch.no_grad()
def save_sample_grid(method, model, cfg: TrainConfig, crop, path: Path, per_class: int = 6, nfe: int = 20) -> None:
    k = cfg.data.num_classes
    y = torch.arange(k * per_class, device=cfg.device) % k
    was_training = model.training
    model.eval()
    res = method.sample(model, y, generator=generator(cfg.seed, 2), nfe=nfe)
    model.train(was_training)
    x = center_crop(to_pixels(cfg.data, res.x), crop)
    if x.ndim == 5:  # video: show the first frame of each clip in the grid
        x = x[:, :, 0]
    # rows are samples of one index, columns the classes
    save_grid_png(to_uint8(x).permute(0, 2, 3, 1).cpu(), path, nrow=k)


def resume_point(ckpt_root: Path, resume: bool, out: Path):
    """``(existing checkpoints, tensors, state)`` of the checkpoint to resume from (``None``s
    for a fresh run); refuses to overwrite checkpoints without ``resume``."""
    existing = ckpt.list_checkpoints(ckpt_root)
    if existing and not resume:
        raise ProgflowError(f"{out} already holds checkpoints; pass --resume to continue or choose another --out")
    if resume and existing:
        tensors, state = ckpt.load_checkpoint(existing[-1])
        return existing, tensors, state
    return existing, None, None


def restore_state(model: torch.nn.Module, ema: torch.nn.Module, opt: torch.optim.Optimizer, resumed,
                  source: Path) -> None:
    """Load a checkpoint's ``(tensors, state)`` into the model, its EMA, the optimizer and
    torch's RNG; each piece is checked first and a broken one named (CheckpointError)."""
    tensors, state = resumed
    source = Path(source)
    ckpt.check_state(state, source)
    ckpt.load_state_dict_checked(model, tensors["model"], source / "model.safetensors")
    ckpt.load_state_dict_checked(ema, tensors["ema"], source / "ema.safetensors")
    ckpt.load_optimizer_checked(opt, tensors["optim"], state["optimizer"], source)
    torch.set_rng_state(ckpt.decode_rng(state["rng"]["torch_cpu"]))


def check_resumable(model: torch.nn.Module, hp, resumed, source: Path, log_path: Path) -> None:
    """Everything a resume would load, loaded into copies, and the log read: a run whose
    saved state is broken is refused before anything in it is written."""
    rng = torch.get_rng_state()
    try:
        trial = copy.deepcopy(model)
        opt = torch.optim.AdamW(trial.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
        restore_state(trial, copy.deepcopy(trial), opt, resumed, source)
    finally:
        torch.set_rng_state(rng)
    read_log_lines(log_path)


def training_loop(hp, model: torch.nn.Module, objective, *, ckpt_root: Path, log_path: Path, resumed=(None, None),
                  last_saved: Path | None = None, extra_state=None, after_step=None, env: Distributed | None = None,
                  progress: bool = True, desc: str = "train") -> Path:
    """The one optimisation loop of progflow (``progflow train`` and ``progflow fit-solver``).

    ``hp`` carries ``steps, batch_size, lr, warmup, weight_decay, grad_clip, ema_decay, seed,
    log_every, ckpt_every, keep_last`` (a :class:`TrainConfig` or a solver-fit config).
    ``objective(step) -> (loss, stats)`` computes the loss of optimizer step ``step`` with all
    its randomness derived from ``(seed, step)``, so that weights, EMA, optimizer state and
    the step are the whole state: ``resumed = (tensors, state)`` of a checkpoint continues
    bit for bit. Per step: warm-up learning rate, NaN check, backward, clipping, AdamW, EMA
    with warm-up. Every ``log_every`` steps a JSONL line (step, loss, lr, images/s) and the
    progress bar; every ``ckpt_every`` steps (and at the end) an atomic checkpoint with
    ``model``, ``ema`` and ``optim`` safetensors plus ``extra_state(step)`` in its JSON;
    ``after_step(step, ema)`` after that (sample grids). Returns the last checkpoint folder.
    """
    env = env or Distributed("cpu")
    tensors_in, state_in = resumed
    start = state_in["step"] if state_in is not None else 0
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=hp.lr, weight_decay=hp.weight_decay)
    if state_in is not None:
        restore_state(model, ema, opt, resumed, last_saved)
    if env.main:
        if state_in is not None:
            ckpt.clean_partial(ckpt_root)
            _trim_log(log_path, start)
        elif log_path.exists():
            log_path.unlink()
    env.barrier()

    def save(step: int) -> Path:
        nonlocal last_saved
        if env.main:
            otensors, ometa = ckpt.flatten_optimizer(opt.state_dict())
            state = {"optimizer": ometa,
                     "rng": {"torch_cpu": ckpt.encode_rng(torch.get_rng_state()), "derived_from": [hp.seed, step]},
                     "num_params": count_parameters(model), **(extra_state(step) if extra_state else {})}
            last_saved = ckpt.save_checkpoint(ckpt_root, step, {"model": model.state_dict(), "ema": ema.state_dict(),
                                                                "optim": otensors}, state, hp.keep_last)
        env.barrier()
        return last_saved

    bar = tqdm(total=hp.steps, initial=start, disable=not (progress and env.main), desc=desc, unit="step",
               dynamic_ncols=True)
    window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
    log = open(log_path, "a") if env.main else None
    try:
        for step in range(start, hp.steps):
            for g in opt.param_groups:
                g["lr"] = lr_at(hp, step)
            loss, _ = objective(step)
            loss_global = env.mean(loss.detach().float())
            if not torch.isfinite(loss_global):
                where = last_saved if last_saved is not None else "none was written"
                raise TrainingDiverged(f"loss became {loss_global.item()} at step {step + 1}; training stopped, "
                                       f"last good checkpoint kept: {where}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if hp.grad_clip:
                torch.nn.utils.clip_grad_norm_(model.parameters(), hp.grad_clip)
            opt.step()
            ema_update(ema, model, ema_decay_at(hp.ema_decay, step))

            done = step + 1
            window_loss += loss_global.item()
            window_n += 1
            bar.update(1)
            if done % hp.log_every == 0 or done == hp.steps:
                dt = time.perf_counter() - t_window
                rec = {"step": done, "loss": window_loss / window_n, "lr": lr_at(hp, step),
                       "images_per_s": window_n * hp.batch_size / max(dt, 1e-9), "time": time.time()}
                bar.set_postfix(loss=f"{rec['loss']:.4f}", img_s=f"{rec['images_per_s']:.0f}")
                if log:
                    try:
                        log.write(json.dumps(rec) + "\n")
                        log.flush()
                    except OSError as e:  # a full disk: one line, the checkpoints stay as they were
                        raise write_failure(log_path, e, f"the last good checkpoint is {last_saved}") from None
                window_loss, window_n, t_window = 0.0, 0, time.perf_counter()
            if done % hp.ckpt_every == 0 or done == hp.steps:
                save(done)
            if after_step is not None:
                after_step(done, ema)
    finally:
        bar.close()
        if log:
            try:
                log.close()
            except OSError:  # the write that failed is reported above
                pass
    if start >= hp.steps and last_saved is None:
        last_saved = save(start)
    return last_saved


def holds_run(out: Path) -> bool:
    """Whether ``out`` holds a run (or a solver fit): a config, a log or a checkpoint."""
    out = Path(out)
    return any((out / f).exists() for f in ("config.json", "log.jsonl")) or bool(ckpt.list_checkpoints(out / "ckpt"))


def _refuse_existing(out: Path, resume: bool, overwrite: bool) -> None:
    if holds_run(out) and not (resume or overwrite):
        raise ProgflowError(f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it")


def clear_run(out: Path) -> None:
    """``--overwrite``: remove the previous run's config, log, checkpoints and sample grids."""
    for name in ("ckpt", "samples"):
        shutil.rmtree(out / name, ignore_errors=True)
    for name in ("config.json", "log.jsonl"):
        (out / name).unlink(missing_ok=True)


def train(cfg: TrainConfig, out: str | Path, *, resume: bool = False, overwrite: bool = False,
          progress: bool = True) -> Path:
    """Train ``cfg`` into the run directory ``out``; returns the last checkpoint folder.

    ``resume`` continues the run in ``out`` (or starts one if there is none); without it a
    run already in ``out`` is refused unless ``overwrite``, which replaces it. The device,
    ``out`` and (on resume) the whole saved state are checked before anything is written,
    and the run's writer lock (:mod:`progflow.runlock`) is held throughout."""
    out = Path(out)
    if resume and overwrite:
        raise ProgflowError("--resume continues the run in --out and --overwrite replaces it; pass one of them")
    check_device(cfg.device, "device")
    check_out_dir(out)
    _refuse_existing(out, resume, overwrite)  # every process, before the others can write (torchrun)
    env = Distributed(cfg.device)
    try:
        with run_lock(out, enabled=env.main):
            if env.main:
                _refuse_existing(out, resume, overwrite)  # again under the lock: a run may have finished meanwhile
            return _train(cfg, out, env, resume=resume, overwrite=overwrite, progress=progress)
    finally:
        env.close()


def _train(cfg: TrainConfig, out: Path, env: Distributed, *, resume: bool, overwrite: bool, progress: bool) -> Path:
    ckpt_root, log_path = out / "ckpt", out / "log.jsonl"
    existing, tensors, state_in = resume_point(ckpt_root, resume, out) if not overwrite else ([], None, None)
    if state_in is not None:  # cheap checks first: the saved config, then the data
        saved = load_run_config(out)
        check_resume_config(saved, cfg, out)
        cfg = saved.replace(**{k: getattr(cfg, k) for k in TrainConfig.RESUMABLE_CHANGES})
        ckpt.check_state(state_in, existing[-1])
        read_log_lines(log_path)
    data, filled = load_run_data(cfg, "train", progress=progress and env.main)  # (latents: encoded once, cached)
    if state_in is None:
        cfg = filled  # (a latent run's scale and autoencoder hash)
    if tuple(data.images.shape[1:]) != cfg.data.shape:
        raise ProgflowError(f"dataset samples have shape {tuple(data.images.shape[1:])}, the config expects {cfg.data.shape}")
    if state_in is None:
        cfg = method_class(cfg.method.name).prepare(cfg, data)
    if cfg.batch_size % env.world:
        raise ProgflowError(f"batch_size {cfg.batch_size} is not divisible by the world size {env.world}")

    torch.manual_seed(derive_seed(cfg.seed, 0))
    model = build_model(cfg).to(cfg.device)
    if state_in is not None:
        check_resumable(model, cfg, (tensors, state_in), existing[-1], log_path)
    method = build_method(cfg)
    # a model whose steps leave some parameters unused (a cascade trains one of its two networks per step)
    ddp = {"find_unused_parameters": True} if getattr(model, "idle_parameters", False) else {}
    net = torch.nn.parallel.DistributedDataParallel(model, **ddp) if env.world > 1 else model
    if cfg.compile:  # the loss calls the compiled module; checkpoints keep saving `model`'s own weights
        net = torch.compile(net)
    if env.main:  # the first write into the run
        if overwrite:
            clear_run(out)
        (out / "samples").mkdir(parents=True, exist_ok=True)
        ckpt.atomic_write_text(out / "config.json", cfg.to_json())

    order = BatchOrder(len(data), cfg.batch_size, cfg.seed)
    local = cfg.batch_size // env.world
    rows = slice(env.rank * local, (env.rank + 1) * local)
    images, labels = data.images, data.labels
    autocast = bf16_autocast(cfg.device, enabled=cfg.bf16)

    def objective(step: int):
        idx = order.indices(step)[rows]
        x1 = to_model_range(images[idx]).to(cfg.device, non_blocking=True)
        y = labels[idx].to(cfg.device)
        rng = BatchRandom(cfg.seed, step, cfg.batch_size, rows, device=cfg.device)
        with autocast:
            return method.loss(net, x1, y, rng)

    def extra_state(step: int) -> dict:
        return {"config": cfg.to_dict(), "data_position": order.position(step)}

    def after_step(done: int, ema) -> None:
        if env.main and cfg.sample_every and (done % cfg.sample_every == 0 or done == cfg.steps):
            save_sample_grid(method, ema, cfg, data.crop, out / "samples" / f"step_{done:08d}.png")

    return training_loop(cfg, model, objective, ckpt_root=ckpt_root, log_path=log_path,
                         resumed=(tensors, state_in), last_saved=existing[-1] if existing else None,
                         extra_state=extra_state, after_step=after_step, env=env, progress=progress)
