"""Decompositions: exact round trips, the Laplacian/Haar definitions, shapes and errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from progflow.decompose import (Decomposition, HaarDWT, Identity, LaplacianPyramid, Standardized,
                                build_decomposition, estimate_stage_std, sample_stage_shapes)
from progflow.errors import ConfigError


def bilinear_down(x):
    return F.interpolate(x, scale_factor=0.5, mode="bilinear", align_corners=False, antialias=False)


def bilinear_up(x):
    return F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False, antialias=False)


DECOMPS = [LaplacianPyramid(1), LaplacianPyramid(2), LaplacianPyramid(3), LaplacianPyramid(4),
           HaarDWT(1), HaarDWT(2), HaarDWT(3), HaarDWT(4), Identity()]


@pytest.mark.parametrize("decomp", DECOMPS, ids=repr)
@pytest.mark.parametrize("shape", [(3, 2, 16, 24), (2, 1, 3, 16, 8)], ids=["image", "video"])
def test_round_trip_exact(decomp, shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(0))
    stages = decomp.split(x)
    assert isinstance(decomp, Decomposition)
    assert len(stages) == decomp.num_stages
    assert [tuple(s.shape) for s in stages] == decomp.stage_shapes(shape)
    torch.testing.assert_close(decomp.merge(stages), x, atol=1e-5, rtol=1e-5)


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(["laplacian", "haar"]), stages=st.integers(1, 4), n=st.integers(1, 3),
       c=st.integers(1, 3), frames=st.integers(0, 3), mh=st.integers(1, 3), mw=st.integers(1, 3),
       seed=st.integers(0, 2**16))
def test_round_trip_property(kind, stages, n, c, frames, mh, mw, seed):
    f = 2 ** (stages - 1)
    shape = (n, c, frames, mh * f, mw * f) if frames else (n, c, mh * f, mw * f)
    x = 3 * torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    d = build_decomposition(kind, stages)
    parts = d.split(x)
    assert [tuple(p.shape) for p in parts] == d.stage_shapes(shape)
    assert parts[0].shape[-1] == mw  # the coarsest stage is 2**(S-1) times smaller
    torch.testing.assert_close(d.merge(parts), x, atol=1e-4, rtol=1e-5)


def test_laplacian_stages_follow_the_definition():
    x = torch.randn(2, 3, 32, 32)
    s1, s2, s3 = LaplacianPyramid(3).split(x)
    d1, d2 = bilinear_down(x), bilinear_down(bilinear_down(x))
    torch.testing.assert_close(s1, d2, atol=0, rtol=0)  # X_1 = down^(S-1)(X)
    torch.testing.assert_close(s2, d1 - bilinear_up(d2), atol=1e-6, rtol=0)
    torch.testing.assert_close(s3, x - bilinear_up(d1), atol=1e-6, rtol=0)
    assert not torch.equal(s1, F.avg_pool2d(x, 4))  # bilinear without antialias, not box


def test_laplacian_video_is_spatial_per_frame():
    x = torch.randn(2, 1, 4, 16, 16)
    d = LaplacianPyramid(3)
    video = d.split(x)
    for t in range(4):
        frame = d.split(x[:, :, t])
        for v, f in zip(video, frame):
            torch.testing.assert_close(v[:, :, t], f, atol=0, rtol=0)


def test_haar_is_orthonormal_with_known_bands():
    x = torch.randn(2, 3, 16, 16)
    stages = HaarDWT(3).split(x)
    energy = sum(s.double().pow(2).sum() for s in stages)
    torch.testing.assert_close(energy, x.double().pow(2).sum(), rtol=1e-5, atol=0)
    const = torch.full((1, 2, 8, 8), 0.5)
    ll, d2, d1 = HaarDWT(3).split(const)
    torch.testing.assert_close(ll, torch.full((1, 2, 2, 2), 0.5 * 4))  # LL grows by 2 per level
    assert d1.abs().max() == 0 and d2.abs().max() == 0
    assert d1.shape == (1, 6, 4, 4) and d2.shape == (1, 6, 2, 2)  # [LH, HL, HH] on channels
    # a vertical edge (change along the width) lands only in LH, the first band
    edge = torch.tensor([[1.0, -1.0]]).repeat(2, 1)[None, None]
    (_, details) = HaarDWT(2).split(edge)
    assert details[0, 0].item() == 2.0 and details[0, 1:].abs().sum() == 0


def test_identity_and_standardized():
    x = torch.randn(4, 1, 8, 8)
    assert Identity().split(x)[0] is x
    lap = LaplacianPyramid(2)
    std = estimate_stage_std(lap, x)
    assert len(std) == 2 and all(s > 0 for s in std)
    sd = Standardized(lap, std)
    parts = sd.split(x)
    for p in parts:
        assert abs(float(p.double().std()) - 1.0) < 1e-5
    torch.testing.assert_close(sd.merge(parts), x, atol=1e-5, rtol=1e-5)
    assert estimate_stage_std(lap, torch.zeros(2, 1, 8, 8)) == (1e-6, 1e-6)  # floored, never 0


def test_shape_errors():
    with pytest.raises(ValueError, match="divisible"):
        LaplacianPyramid(3).split(torch.randn(1, 1, 12, 10))
    with pytest.raises(ValueError, match="divisible"):
        HaarDWT(2).stage_shapes((1, 1, 7, 8))
    with pytest.raises(ValueError):
        LaplacianPyramid(2).split(torch.randn(8, 8))
    with pytest.raises(ValueError):
        LaplacianPyramid(0)
    with pytest.raises(ConfigError):
        build_decomposition("identity", 2)
    with pytest.raises(ConfigError):
        build_decomposition("dct", 2)


def test_sample_stage_shapes():
    assert sample_stage_shapes(LaplacianPyramid(2), (1, 32, 32)) == [(1, 16, 16), (1, 32, 32)]
    assert sample_stage_shapes(HaarDWT(3), (2, 4, 32, 32)) == [(2, 4, 8, 8), (6, 4, 8, 8), (6, 4, 16, 16)]
