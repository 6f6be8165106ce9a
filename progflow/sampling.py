"""Sampling a trained run: ``progflow sample RUN_DIR --n N --nfe K --cfg W --seed S``.

Writes an ``.npz`` with ``images`` uint8 ``(N, H, W, C)`` (videos ``(N, T, H, W, C)``),
cropped to the dataset's original content (28x28 for Fashion-MNIST), and class-balanced
``labels`` ``(N,)``; a PNG grid beside it (and a GIF for video).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from progflow import checkpoint as ckpt
from progflow.checks import check_out_dir, check_out_file, check_run_dir, check_sampling_args
from progflow.config import TrainConfig
from progflow.data import center_crop, output_crop, save_grid_png, save_video, to_uint8
from progflow.errors import ProgflowError
from progflow.hardware import bf16_autocast
from progflow.latent import to_pixels
from progflow.methods import build_method
from progflow.rng import generator
from progflow.runs import load_run  # (also imported from here by callers)

def balanced_labels(n: int, num_classes: int) -> torch.Tensor:
    return torch.arange(n) % num_classes


def to_nhwc(x_u8: torch.Tensor) -> np.ndarray:
    """``(N, C, H, W)`` -> ``(N, H, W, C)``; ``(N, C, T, H, W)`` -> ``(N, T, H, W, C)``."""
    return x_u8.movedim(1, -1).cpu().numpy()


def atomic_savez(path: Path, **arrays) -> None:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    ckpt.atomic_write_bytes(path, buf.getvalue())


@torch.no_grad()
def generate(cfg: TrainConfig, model, *, n: int, seed: int = 0, nfe: int | None = None, cfg_scale: float | None = None,
             cfg_interval=None, batch_size: int = 250, previews: bool = False, progress: bool = True,
             device: str = "cpu", solver=None, shift: float | None = None, raw: bool = False, bf16: bool = False):
    """Class-balanced samples: ``(images uint8 NCHW/NCTHW cropped, labels, nfe, previews)``.

    Batch ``b`` draws its noise from a generator seeded by ``(seed, b)``. ``solver`` is a
    name or a :class:`~progflow.solvers.SolverSpec`. ``raw`` returns the float samples in
    [-1, 1] (cropped) instead of uint8. ``nfe`` is per sample; an adaptive solver's varies
    from batch to batch, and then the mean over batches is returned. ``bf16`` runs the
    network under bfloat16 autocast (the state and the solver stay float32).
    """
    method = build_method(cfg)
    labels = balanced_labels(n, cfg.data.num_classes)
    out, strips, used = [], [], []
    crop = output_crop(cfg.data.dataset)
    # the bar shows after a second: input errors found when the first batch starts print one line only
    for b, start in enumerate(tqdm(range(0, n, batch_size), disable=not progress, desc="sample", unit="batch",
                                   delay=1.0)):
        y = labels[start:start + batch_size].to(device)
        with bf16_autocast(device, enabled=bf16):
            res = method.sample(model, y, generator=generator(seed, 3, b), nfe=nfe, cfg_scale=cfg_scale,
                                cfg_interval=cfg_interval, previews=previews, solver=solver, shift=shift)
        if bf16 and not torch.isfinite(res.x).all():
            raise ProgflowError("sampling under bf16 autocast gave non-finite values; sample without --bf16")
        used.append(res.nfe)
        x = center_crop(to_pixels(cfg.data, res.x), crop)  # (a latent run's samples are decoded first)
        out.append(x.cpu() if raw else to_uint8(x).cpu())
        if previews and res.previews:
            # one strip per sample: the partial recompositions side by side, then the final image
            parts = [to_uint8(center_crop(p, crop)).cpu() for p in to_pixels(cfg.data, res.previews)] + [out[-1]]
            strips.append(torch.cat(parts, dim=-1))
    used = used[0] if len(set(used)) == 1 else round(sum(used) / len(used), 1)
    return torch.cat(out), labels, used, (torch.cat(strips) if strips else None)


def sample_run(run_dir: str | Path, *, n: int, out: str | Path | None = None, seed: int = 0, nfe: int | None = None,
               cfg_scale: float | None = None, cfg_interval=None, batch_size: int = 250, step: int | None = None,
               ema: bool = True, previews: bool = False, progress: bool = True, device: str = "cpu",
               solver: str | None = None, shift: float | None = None, rtol: float | None = None,
               atol: float | None = None, compile: bool = False, bf16: bool | None = None) -> dict:
    """Sample a run to ``out`` (default ``RUN_DIR/samples.npz``); returns a summary dict.
    ``rtol`` / ``atol`` configure an adaptive solver (dopri5), which takes no ``nfe``.
    ``compile`` samples through ``torch.compile(model)`` (equal to eager up to float rounding);
    ``bf16`` under bfloat16 autocast (about 2x faster at size s on a CPU with AVX512-BF16, not
    equal: see docs/speed.md); None samples in the precision the run was trained in, as the
    demo scores it."""
    from progflow.solvers import get_solver

    check_sampling_args(n=n, nfe=nfe, cfg_scale=cfg_scale, cfg_interval=cfg_interval, shift=shift,
                        batch_size=batch_size, seed=seed, step=step)
    check_run_dir(run_dir)
    out = check_out_file(out or Path(run_dir) / "samples.npz", suffix=".npz")
    if previews:
        check_out_dir(out.with_name(out.stem + "_previews"), "--previews folder")
    cfg, model, path = load_run(run_dir, step=step, ema=ema, device=device)
    bf16 = cfg.bf16 if bf16 is None else bf16
    spec = get_solver(solver or cfg.method.solver, rtol=rtol, atol=atol).for_run(run_dir, model)
    if spec.adaptive and nfe is not None:
        raise ProgflowError(f"solver {spec.name} is adaptive: its tolerances (--rtol, --atol) set the NFE; drop --nfe")
    if not spec.adaptive and (cfg.method.nfe if nfe is None else nfe) < spec.min_nfe:
        raise ProgflowError(f"solver {spec.name} needs at least {spec.min_nfe} NFE; got {nfe}")
    net = torch.compile(model) if compile else model
    images, labels, used, strips = generate(cfg, net, n=n, seed=seed, nfe=nfe, cfg_scale=cfg_scale,
                                            cfg_interval=cfg_interval, batch_size=batch_size, previews=previews,
                                            progress=progress, device=device, solver=spec, shift=shift, bf16=bf16)
    out.parent.mkdir(parents=True, exist_ok=True)  # only now: bad input writes nothing
    atomic_savez(out, images=to_nhwc(images), labels=labels.numpy().astype(np.int64))
    grid = out.with_suffix(".png")
    k = cfg.data.num_classes
    show = images[: k * 10]
    if images.ndim == 5:
        save_video(show, out.with_suffix(".gif"))
        show = show[:, :, 0]
    save_grid_png(to_nhwc(show), grid, nrow=k)
    summary = {"npz": str(out), "grid": str(grid), "n": n, "nfe": used, "checkpoint": str(path),
               "cfg_scale": cfg.method.cfg_scale if cfg_scale is None else cfg_scale, "seed": seed,
               "solver": spec.name, "shift": cfg.method.shift if shift is None else shift, **spec.options,
               "bf16": bf16}
    side = getattr(spec.integrate, "side", None)
    if side is not None:  # a solver network's calls per sample, apart from the backbone NFE
        summary["sidenet_calls"] = side.calls / -(-n // batch_size)
    if strips is not None:
        pdir = out.with_name(out.stem + "_previews")
        pdir.mkdir(exist_ok=True)
        for i, s in enumerate(strips):
            save_grid_png(to_nhwc(s[None] if s.ndim == 3 else s[None, :, 0]), pdir / f"{i:05d}.png", nrow=1)
        summary["previews"] = str(pdir)
    return summary
