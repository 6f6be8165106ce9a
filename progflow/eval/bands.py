"""Where in scale a generator's error sits: scores of the coarse and fine bands.

Images are split by the 2-stage Laplacian pyramid of :mod:`progflow.decompose` (the
decomposition DFM uses): the coarse band is ``up(down(x))`` (half resolution, brought
back to full size), the fine band the residual ``x - up(down(x))``.

* ``fd_coarse``: the Frechet distance between the coarse bands of the samples and of
  the reference images, in the extractor's feature space. Detail at the scale of one or
  two pixels is mostly averaged out of it (bilinear halving averages 2x2 blocks).
* ``fine_rms_ratio``: the RMS of the samples' fine band over the reference's (1.0 is
  as much fine detail as real images; above 1 is excess high-frequency energy such as
  speckle, below 1 is blur).

A model whose ``fd_coarse`` matches another's while its full FD is worse loses in the
fine band.
"""

from __future__ import annotations

import numpy as np
import torch

from ..decompose import LaplacianPyramid
from .features import FeatureExtractor, check_images_u8
from .metrics import feature_stats, frechet_distance

__all__ = ["split_bands", "band_scores"]


def split_bands(images_u8: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 ``(N, H, W, C)`` -> (coarse, fine) float32 ``(N, C, H, W)`` in pixel units
    (0..255 scale), ``coarse + fine == images``. ``H`` and ``W`` must be even."""
    arr = check_images_u8(images_u8)
    x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
    pyramid = LaplacianPyramid(2)
    low, high = pyramid.split(x)
    coarse = pyramid.merge([low, torch.zeros_like(high)])
    return coarse, x - coarse


def _coarse_u8(coarse: torch.Tensor) -> np.ndarray:
    return coarse.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().numpy()


def band_scores(images_u8: np.ndarray, extractor: FeatureExtractor, ref_images_u8: np.ndarray) -> dict:
    """``{"fd_coarse", "fine_rms_ratio", "n"}`` of ``images_u8`` against ``ref_images_u8``
    (both uint8 ``(N, H, W, C)`` of the same frame size)."""
    coarse, fine = split_bands(images_u8)
    ref_coarse, ref_fine = split_bands(ref_images_u8)
    if coarse.shape[1:] != ref_coarse.shape[1:]:
        raise ValueError(f"samples {tuple(coarse.shape[1:])} and reference {tuple(ref_coarse.shape[1:])} "
                         "differ in shape")
    feats = np.asarray(extractor.features(_coarse_u8(coarse)), dtype=np.float64)
    ref_feats = np.asarray(extractor.features(_coarse_u8(ref_coarse)), dtype=np.float64)
    fd = frechet_distance(*feature_stats(feats), *feature_stats(ref_feats))
    ratio = float(fine.pow(2).mean().sqrt() / ref_fine.pow(2).mean().sqrt())
    return {"fd_coarse": float(fd), "fine_rms_ratio": ratio, "n": int(coarse.shape[0])}
