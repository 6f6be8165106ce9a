"""``progflow eval-ae RUN``: how well an autoencoder run reconstructs the test split.

On ``n`` test images (a fixed subset, numpy ``default_rng(0)``), each encoded to its
posterior mean and decoded:

* ``psnr``: mean over images of ``10 log10(2^2 / MSE)`` in model range [-1, 1] (a peak-to-peak
  of 2; the same number as 8-bit PSNR with a peak of 255);
* ``fd_reconstructions`` and ``fd_originals``: FD against the dataset's test split with its
  scoring classifier (``progflow eval``'s), of the reconstructions and of the same ``n``
  originals; the difference is what the autoencoder costs a generator in FD at best.
  Datasets without a scoring classifier (synthetic, folders) get PSNR only;
* ``psnr_half``: the scale-equivariance check, PSNR of decoding the 2x2-average-pooled
  latent against the 2x2-average-pooled image (what the ``equivariance`` term trains).

Writes ``RUN/eval_ae.json`` (or ``out``), headed by the command, machine and date, and a PNG of
original / reconstruction pairs. When ``n`` is the whole test split, ``fd_originals`` is 0:
the originals are then the reference itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from progflow.checks import check_count, check_out_file, check_run_dir
from progflow.errors import ConfigError

SCORED = ("fashion-mnist", "emoji")
DEFAULT_N = 1000


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1).clamp_min(1e-12)
    return 10 * torch.log10(4.0 / mse)


@torch.no_grad()
def evaluate_autoencoder(run_dir, *, n: int | None = None, data_dir=None, out=None, batch_size: int = 250,
                         progress: bool = True) -> dict:
    """Scores of the autoencoder run in ``run_dir`` (see the module docstring) on ``n`` test
    images (default: 1,000, or the whole test split when it is smaller)."""
    from progflow.checkpoint import atomic_write_text
    from progflow.data import center_crop, load_dataset, output_crop, save_grid_png, to_model_range, to_uint8
    from progflow.sampling import load_run, to_nhwc

    if n is not None:
        check_count(n, "--n", minimum=2)
    check_count(batch_size, "--batch-size")
    check_run_dir(run_dir)
    out = check_out_file(out or Path(run_dir) / "eval_ae.json", suffix=".json")
    cfg, model, path = load_run(run_dir)
    if cfg.model.arch != "autoencoder":
        raise ConfigError(f"{run_dir} is a {cfg.method.name} run, not an autoencoder (score it with progflow eval)")
    d = cfg.data
    test = load_dataset(d.dataset, split="test", data_dir=data_dir or d.data_dir, image_size=d.image_size,
                        channels=d.channels, n=d.n, seed=cfg.seed)
    if n is None:
        n = min(DEFAULT_N, len(test))
    elif n > len(test):
        raise ConfigError(f"--n {n} exceeds the {len(test)} test images of {d.dataset}")
    idx = torch.from_numpy(np.sort(np.random.default_rng(0).permutation(len(test))[:n]))
    images, labels = test.images[idx], test.labels[idx]
    crop = output_crop(d.dataset)
    recs, psnr, psnr_half = [], [], []
    for start in tqdm(range(0, n, batch_size), disable=not progress, desc="eval-ae", unit="batch", delay=1.0):
        x = to_model_range(images[start:start + batch_size])
        z = model.encode(x)[0]
        rec = model.decode(z).clamp(-1, 1)
        psnr.append(_psnr(center_crop(rec, crop), center_crop(x, crop)))
        psnr_half.append(_psnr(model.decode(F.avg_pool2d(z, 2)).clamp(-1, 1), F.avg_pool2d(x, 2)))
        recs.append(to_uint8(center_crop(rec, crop)))
    recs = torch.cat(recs)
    originals = to_uint8(center_crop(to_model_range(images), crop))
    from progflow.results import result_header  # (command, machine, date: a result file like the benchmarks')

    result = {**result_header(0), "run": str(run_dir), "checkpoint": str(path), "dataset": d.dataset, "n": n,
              "latent_shape": list(model.latent_shape), "psnr": float(torch.cat(psnr).mean()),
              "psnr_half": float(torch.cat(psnr_half).mean()), "fd_reconstructions": None, "fd_originals": None}
    if d.dataset in SCORED:
        from progflow.eval import evaluate_arrays, get_extractor
        from progflow.eval.evaluate import reference_set
        from progflow.eval.features import default_spec

        extractor = get_extractor(default_spec(d.dataset), data_dir=data_dir)
        ref, ref_labels = reference_set(extractor, data_dir=data_dir or d.data_dir, dataset=d.dataset)
        for key, u8 in (("fd_reconstructions", recs), ("fd_originals", originals)):
            result[key] = evaluate_arrays(to_nhwc(u8), labels.numpy(), extractor, ref, ref_labels=ref_labels)["fd"]
        result["features"] = str(extractor.name)
    pairs = torch.stack([originals[:50], recs[:50]], dim=1).flatten(0, 1)
    out.parent.mkdir(parents=True, exist_ok=True)
    save_grid_png(to_nhwc(pairs), out.with_suffix(".png"), nrow=10)
    atomic_write_text(out, json.dumps(result, indent=2) + "\n")
    return result
