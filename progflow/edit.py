"""Editing by inversion: ``progflow edit RUN --images FILE.npz --to-class C --solver NAME --nfe K``.

Real images are integrated back to noise along the run's own sampling schedule (time from
1 to 0, under their source class) and forward again under another class, with the same
solver, NFE, guidance and grid both ways. For DFM the schedule is run phase by phase in
reverse: after a phase, the stages that entered in it are read off as that phase's noise
(:func:`progflow.solvers.phases.integrate_phases`); the forward pass starts every stage
from its recovered noise instead of fresh noise. Without ``--to-class`` the images go back
to their own class: the round trip, whose error measures how well the solver inverts.

Input: an ``.npz`` with ``images`` ``(N, H, W, C)`` (or ``(N, H, W)`` for one channel), at
the run's image size or the dataset's content crop (28x28 for Fashion-MNIST, as
``progflow sample`` writes them), uint8 ``[0, 255]`` or float ``[0, 1]``; optional
``labels`` ``(N,)``, the source classes (missing: inverted unconditionally, null class).
Output: an ``.npz`` with ``images`` (edited, same layout as ``progflow sample``),
``source``, ``labels`` and ``source_labels``, and a PNG of before/after pairs beside it.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from progflow.checks import check_out_file, check_run_dir, check_sampling_args
from progflow.data import center_crop, output_crop, save_grid_png, to_model_range, to_uint8
from progflow.errors import ConfigError, DataError
from progflow.latent import pixel_geometry, to_model_space, to_pixels
from progflow.methods import build_method
from progflow.solvers import get_solver
from progflow.solvers.phases import from_state, integrate_phases, record_phases, to_state


def read_images(path: str | Path, cfg) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x in [-1, 1] (N, C, H, W) at the run's size, labels or None)`` from an ``.npz``."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as f:
            if "images" not in f:
                raise DataError(f"{path} has no 'images' array (found {', '.join(f.files) or 'nothing'})")
            images, labels = f["images"], (f["labels"] if "labels" in f else None)
    except FileNotFoundError:
        raise DataError(f"images file {path} does not exist") from None
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path} is not a readable .npz ({str(e).splitlines()[0]})") from None
    d = cfg.data
    if d.frames:
        raise ConfigError("progflow edit works on image runs; this run is a video run")
    channels, size = pixel_geometry(d)  # (a latent run: the autoencoder's images)
    if images.ndim == 3 and channels == 1:
        images = images[..., None]
    crop = output_crop(d.dataset) or (size, size)
    sizes = {(size, size), tuple(crop)}
    if images.ndim != 4 or tuple(images.shape[1:3]) not in sizes or images.shape[3] != channels or not len(images):
        want = " or ".join(f"(N, {h}, {w}, {channels})" for h, w in sorted(sizes))
        raise DataError(f"{path}: images have shape {tuple(images.shape)}, the run needs {want}")
    if np.issubdtype(images.dtype, np.integer):
        lo, hi, scale = 0, 255, 1.0
    elif np.issubdtype(images.dtype, np.floating):
        lo, hi, scale = 0.0, 1.0, 255.0
    else:
        raise DataError(f"{path}: images have dtype {images.dtype}; use uint8 [0, 255] or float [0, 1]")
    if not np.isfinite(images).all() or images.min() < lo or images.max() > hi:
        raise DataError(f"{path}: image values span [{images.min()}, {images.max()}], outside [{lo}, {hi}] "
                        f"for dtype {images.dtype}")
    u8 = torch.from_numpy(np.ascontiguousarray(np.round(images.astype(np.float64) * scale))).to(torch.uint8)
    x = to_model_range(u8.permute(0, 3, 1, 2))
    pad_h, pad_w = size - x.shape[2], size - x.shape[3]
    if pad_h or pad_w:  # content crop -> padded frame, as the dataset pads it (background -1)
        x = torch.nn.functional.pad(x, (pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2), value=-1.0)
    if labels is not None:
        labels = np.asarray(labels)
        if labels.shape != (len(images),) or not np.issubdtype(labels.dtype, np.integer):
            raise DataError(f"{path}: labels must be integers of shape ({len(images)},); got {labels.dtype} "
                            f"{tuple(labels.shape)}")
        if labels.min() < 0 or labels.max() >= d.num_classes:
            raise DataError(f"{path}: labels span [{labels.min()}, {labels.max()}], the run has classes "
                            f"0..{d.num_classes - 1}")
        labels = torch.from_numpy(labels.astype(np.int64))
    return x, labels


def check_class(c: int, cfg) -> int:
    if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < cfg.data.num_classes:
        raise ConfigError(f"--to-class {c} is not a class of this run (0..{cfg.data.num_classes - 1})")
    return c


def inversion_solver(name, run_dir, model, nfe, cfg):
    """The solver spec for inversion and generation; refuses solvers that cannot run backwards."""
    spec = get_solver(name).for_run(run_dir, model)
    if not spec.backward:
        able = ", ".join(n for n in sorted(_names()) if get_solver(n).backward)
        raise ConfigError(f"solver {spec.name} cannot integrate from data to noise at its order, so it cannot "
                          f"invert images; use one of {able}")
    if spec.adaptive and nfe is not None:
        raise ConfigError(f"solver {spec.name} is adaptive: its tolerances set the NFE; drop --nfe")
    if not spec.adaptive and (cfg.method.nfe if nfe is None else nfe) < spec.min_nfe:
        raise ConfigError(f"solver {spec.name} needs at least {spec.min_nfe} NFE; got {nfe}")
    return spec


def _names():
    from progflow.solvers import solver_names

    return solver_names()


@torch.no_grad()
def invert_and_generate(method, model, spec, x: torch.Tensor, y_src: torch.Tensor | None, y_dst: torch.Tensor, *,
                        nfe: int | None = None, cfg_scale: float | None = None, shift: float | None = None):
    """``(edited images, inverted noise, nfe back, nfe forward)`` for one batch ``x`` (model range).
    ``y_src`` None inverts with the null class."""
    null = torch.full_like(y_dst, method.num_classes)
    src = record_phases(method, model, null if y_src is None else y_src, nfe=nfe, cfg_scale=cfg_scale, shift=shift,
                        solver=spec)
    noise, back = integrate_phases(spec, src, None, backward=True, state=to_state(method, x))
    dst = record_phases(method, model, y_dst, nfe=nfe, cfg_scale=cfg_scale, shift=shift, solver=spec)
    out, fwd = integrate_phases(spec, dst, noise)
    return from_state(method, out), noise, back, fwd


def edit_run(run_dir: str | Path, *, images: str | Path, to_class: int | None = None, solver: str = "euler",
             nfe: int | None = None, cfg_scale: float | None = None, shift: float | None = None,
             out: str | Path | None = None, batch_size: int = 250, step: int | None = None,
             device: str = "cpu") -> dict:
    """Invert ``images`` and generate them again under ``to_class`` (default: their own
    class, the round trip); writes ``out`` (default ``RUN/edit.npz``) and a PNG of pairs."""
    from progflow.sampling import atomic_savez, load_run, to_nhwc

    check_sampling_args(nfe=nfe, cfg_scale=cfg_scale, shift=shift, batch_size=batch_size, step=step)
    check_run_dir(run_dir)
    out = check_out_file(out or Path(run_dir) / "edit.npz", suffix=".npz")
    cfg, model, path = load_run(run_dir, step=step, device=device)
    x, labels = read_images(images, cfg)
    if to_class is not None:
        check_class(to_class, cfg)
    spec = inversion_solver(solver, run_dir, model, nfe, cfg)
    method = build_method(cfg)
    crop = output_crop(cfg.data.dataset)
    src_labels = labels if labels is not None else torch.full((len(x),), cfg.data.num_classes)
    dst_labels = torch.full((len(x),), to_class) if to_class is not None else src_labels
    if to_class is None and labels is None:
        raise DataError(f"{images} has no labels: pass --to-class (the round trip needs the source classes)")
    edited, used = [], (0, 0)
    for b in range(0, len(x), batch_size):
        sl = slice(b, b + batch_size)
        res, _, back, fwd = invert_and_generate(method, model, spec, to_model_space(cfg.data, x[sl].to(device)),
                                                None if labels is None else labels[sl].to(device),
                                                dst_labels[sl].to(device), nfe=nfe, cfg_scale=cfg_scale, shift=shift)
        edited.append(to_pixels(cfg.data, res).cpu())
        used = (back, fwd)
    edited = torch.cat(edited)
    before, after = to_uint8(center_crop(x, crop)), to_uint8(center_crop(edited, crop))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_savez(out, images=to_nhwc(after), source=to_nhwc(before), labels=dst_labels.numpy(),
                 source_labels=src_labels.numpy())
    pairs = torch.stack([before, after], dim=1).flatten(0, 1)  # before, after, before, after, ...
    grid = out.with_suffix(".png")
    save_grid_png(to_nhwc(pairs[:200]), grid, nrow=min(20, len(pairs)))
    rms = float((center_crop(edited, crop) - center_crop(x, crop)).pow(2).mean().sqrt())
    summary = {"npz": str(out), "grid": str(grid), "n": len(x), "checkpoint": str(path), "solver": spec.name,
               "nfe_inversion": used[0], "nfe_generation": used[1],
               "cfg_scale": cfg.method.cfg_scale if cfg_scale is None else cfg_scale,
               "to_class": to_class, ("round_trip_rms" if to_class is None else "change_rms"): rms, **spec.options}
    side = getattr(spec.integrate, "side", None)
    if side is not None:
        summary["sidenet_calls"] = side.calls / -(-len(x) // batch_size)
    return summary
