"""``progflow diagnose RUN``: which stage limits a multi-stage run.

Three measurements, all against the test split of the run's dataset with the dataset's own
scoring classifier (the FD of ``progflow eval``):

* **oracle FD**: the model generates only the finest stage, from the *true* coarser stages
  of ``n`` test images (their own labels), once with the coarser stages clean and once
  noised to where the sampler has them when the finest stage enters. A low oracle FD with
  a high FD for full generation says the coarse stage limits the run; an oracle FD as high
  as full generation says the fine stage does.
* **coarse-only FD**: the true coarser stages with no finest stage at all. If the model's
  finest stage does not bring the oracle's FD well below this, it adds little.
* **floor**: the FD of the ``n`` true test images themselves (a finite-``n`` floor).
* **training share**: per stage, the share of training samples in which it was the active
  stage and in which it received a loss, replayed from the run's ``(seed, step)`` draws up
  to the checkpoint's step.

A method takes part by offering two hooks (no method is named here):

* ``stage_diagnostics(model, x1, y, *, generator) -> {name: images}``: full-size images in
  model range made from true data ``x1`` (``oracle_clean``, ``oracle_noised``,
  ``coarse_only`` for DFM; a method may return other names, each gets an FD);
* ``training_share(steps, seed, batch_size) -> dict`` (optional).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from progflow.checkpoint import atomic_write_text
from progflow.checks import check_count, check_out_file, check_run_dir
from progflow.data import center_crop, output_crop, to_model_range, to_uint8
from progflow.errors import ProgflowError
from progflow.latent import load_run_data, to_pixels
from progflow.methods import build_method
from progflow.rng import generator

__all__ = ["diagnose_run", "DIAGNOSE_FILE"]

DIAGNOSE_FILE = "diagnose.json"


def _test_subset(cfg, n: int, data_dir):
    """The first ``n`` images of a fixed permutation of the test split (seed 0), in model space
    (a latent run's: their scaled latents)."""
    data, _ = load_run_data(cfg, "test", data_dir=data_dir)
    if n > len(data):
        raise ProgflowError(f"--n {n} exceeds the {len(data)} test images of {cfg.data.dataset}")
    idx = torch.from_numpy(np.sort(np.random.default_rng(0).permutation(len(data))[:n]))
    return data.images[idx], data.labels[idx]


def diagnose_run(run_dir, *, n: int = 1000, seed: int = 0, batch_size: int = 250, step: int | None = None,
                 data_dir=None, features: str | None = None, out=None, progress: bool = True) -> dict:
    """Stage diagnostics of the run in ``run_dir`` (see the module docstring); writes them to
    ``out`` (default ``RUN/diagnose.json``) and returns them."""
    from progflow.eval import evaluate_arrays, get_extractor
    from progflow.eval.evaluate import reference_set
    from progflow.eval.features import default_spec
    from progflow.sampling import load_run, to_nhwc

    check_count(n, "--n", minimum=6)
    check_count(seed, "--seed", minimum=0)
    check_count(batch_size, "--batch-size")
    check_run_dir(run_dir)
    out = check_out_file(out or Path(run_dir) / DIAGNOSE_FILE, suffix=".json")
    cfg, model, path = load_run(run_dir, step=step)
    method = build_method(cfg)
    if not hasattr(method, "stage_diagnostics") or getattr(method, "S", 1) < 2:
        raise ProgflowError(f"{run_dir} is a single-stage run (method {cfg.method.name}"
                            f"{', 1 stage' if hasattr(method, 'stage_diagnostics') else ''}): there is no coarse "
                            "stage to diagnose")
    extractor = get_extractor(features or default_spec(cfg.data.dataset), data_dir=data_dir)
    ref, ref_labels = reference_set(extractor, data_dir=data_dir or cfg.data.data_dir, dataset=cfg.data.dataset)
    images, labels = _test_subset(cfg, n, data_dir)
    crop = output_crop(cfg.data.dataset)
    t0 = time.time()
    views: dict[str, list] = {}
    for b, start in enumerate(tqdm(range(0, n, batch_size), disable=not progress, desc="diagnose", delay=1.0)):
        x1, y = to_model_range(images[start:start + batch_size]), labels[start:start + batch_size]
        made = method.stage_diagnostics(model, x1, y, generator=generator(seed, 5, b))
        for name, x in {"true_images": x1, **made}.items():  # (true_images of a latent run: decoded latents)
            views.setdefault(name, []).append(to_nhwc(to_uint8(center_crop(to_pixels(cfg.data, x), crop))))

    def score(name):
        r = evaluate_arrays(np.concatenate(views[name]), labels.numpy(), extractor, ref, ref_labels=ref_labels)
        return {k: r[k] for k in ("fd", "precision", "recall", "density", "coverage", "class_accuracy")}

    step_done = int(path.name.split("_")[-1])
    result = {"run": str(run_dir), "checkpoint": str(path), "n": n, "seed": seed, "method": cfg.method.name,
              "stages": method.S, "nfe": cfg.method.nfe, "cfg_scale": cfg.method.cfg_scale,
              "features": str(extractor.name), "reference": f"{cfg.data.dataset} test ({ref.shape[0]})",
              "scores": {name: score(name) for name in views}, "seconds": None}
    if hasattr(method, "training_share"):
        result["training_share"] = {"steps": step_done, **method.training_share(step_done, cfg.seed, cfg.batch_size)}
    result["seconds"] = round(time.time() - t0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result
