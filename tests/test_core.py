"""Paths, time samplers, grids, solvers, layers and the DiT backbone."""

import math

import pytest
import torch
from hypothesis import given, settings, strategies as st

from progflow import paths
from progflow.config import DataConfig, ModelConfig, TrainConfig
from progflow.guidance import CFG
from progflow.nn.dit import DiT, count_parameters
from progflow.nn.layers import patchify, unpatchify
from progflow.schedules import shifted_grid, uniform_grid
from progflow.solvers import euler


def test_path_conversions_invert_each_other():
    g = torch.Generator().manual_seed(0)
    x1, x0 = torch.randn(5, 3, 4, 4, generator=g), torch.randn(5, 3, 4, 4, generator=g)
    t = torch.rand(5, generator=g) * 0.9 + 0.05
    xt = paths.interpolate(x1, x0, t)
    v = paths.velocity_target(x1, x0)
    assert torch.allclose(paths.data_from_velocity(xt, v, t), x1, atol=1e-5)
    assert torch.allclose(paths.noise_from_velocity(xt, v, t), x0, atol=1e-5)
    assert torch.allclose(paths.velocity_from_data(xt, x1, t), v, atol=1e-4)
    assert torch.allclose(paths.velocity_from_noise(xt, x0, t), v, atol=1e-4)
    # t = 0 is noise, t = 1 is data
    assert torch.equal(paths.interpolate(x1, x0, torch.zeros(5)), x0)
    assert torch.equal(paths.interpolate(x1, x0, torch.ones(5)), x1)


def test_time_samplers_have_the_right_distribution():
    g = torch.Generator().manual_seed(1)
    t = paths.sample_time("logit-normal", 200_000, generator=g, loc=1.5, scale=1.0)
    logit = torch.log(t) - torch.log1p(-t)
    assert abs(logit.mean().item() - 1.5) < 0.02 and abs(logit.std().item() - 1.0) < 0.02
    u = paths.sample_time("uniform", 200_000, generator=g)
    assert abs(u.mean().item() - 0.5) < 0.01 and u.min() >= 0 and u.max() < 1
    # the density integrates to one
    grid = torch.linspace(1e-4, 1 - 1e-4, 20001, dtype=torch.float64)
    assert abs(torch.trapezoid(paths.logit_normal_density(grid, 0.0, 1.0), grid).item() - 1) < 1e-3


def test_grids():
    g = uniform_grid(10)
    assert g.dtype == torch.float64 and g[0] == 0 and g[-1] == 1 and len(g) == 11
    s = shifted_grid(10, 3.0)
    assert s[0] == 0 and s[-1] == 1 and torch.all(s[1:] > s[:-1])
    assert torch.all(s[1:-1] < g[1:-1])  # shift > 1 spends more steps near noise
    with pytest.raises(ValueError):
        uniform_grid(0)


def test_euler_converges_at_first_order_on_a_known_field():
    # dx/dt = x - t  has the solution x(t) = (x0 - 1) e^t + t + 1
    x0 = torch.tensor([0.3], dtype=torch.float64)
    exact = (x0 - 1) * math.e + 2
    errs = []
    for n in (8, 16, 32, 64):
        x, nfe = euler(lambda x, t: x - t, x0.clone(), uniform_grid(n))
        assert nfe == n
        errs.append((x - exact).abs().item())
    orders = [math.log2(a / b) for a, b in zip(errs, errs[1:])]
    assert all(0.9 < o < 1.1 for o in orders), orders


def test_euler_on_stage_lists_uses_per_stage_times():
    grid = torch.tensor([[0.0, 0.0], [0.5, 0.0], [1.0, 1.0]], dtype=torch.float64)
    x, _ = euler(lambda x, t: [torch.ones_like(s) for s in x], [torch.zeros(2), torch.zeros(3)], grid)
    assert torch.equal(x[0], torch.ones(2)) and torch.equal(x[1], torch.ones(3))


@settings(max_examples=25, deadline=None)
@given(c=st.integers(1, 3), gh=st.integers(1, 4), gw=st.integers(1, 4), p=st.sampled_from([1, 2, 4]),
       video=st.booleans())
def test_patchify_unpatchify_round_trip(c, gh, gw, p, video):
    patch = (2, p, p) if video else (p, p)
    grid = (3, gh, gw) if video else (gh, gw)
    x = torch.randn(2, c, *[g * q for g, q in zip(grid, patch)])
    tok = patchify(x, patch)
    assert tok.shape == (2, math.prod(grid), c * math.prod(patch))
    assert torch.equal(unpatchify(tok, c, grid, patch), x)
    # each token holds one contiguous patch (the pitfall of methods.md section 6)
    if not video:
        assert torch.equal(tok[0, 0].reshape(c, p, p), x[0, :, :p, :p])


def test_dit_shapes_zero_init_and_sizes():
    data = DataConfig(dataset="synthetic")
    for size, lo, hi in (("xs", 1e5, 5e5), ("s", 3.5e6, 4.5e6)):
        assert lo < count_parameters(DiT(data, ModelConfig(size=size))) < hi
    m = DiT(data, ModelConfig(size="xs"))
    x = torch.randn(3, 1, 32, 32)
    v = m(x, torch.rand(3), torch.tensor([0, 5, 10]))  # 10 is the null class
    assert v.shape == x.shape and torch.all(v == 0)  # zero-initialised head
    video = DataConfig(dataset="moving-fmnist", frames=4)
    mv = DiT(video, ModelConfig(size="xs", temporal_patch=2))
    xv = torch.randn(2, 1, 4, 32, 32)
    assert mv(xv, torch.rand(2), torch.tensor([1, 2])).shape == xv.shape


def test_cfg_combines_conditional_and_unconditional():
    class Toy(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, y):
            return x + (y != 10).float()[:, None]  # conditional adds 1

    x = torch.zeros(2, 3)
    y = torch.tensor([1, 2])
    out = CFG(Toy(), y, scale=3.0, interval=(0.2, 0.8))(x, torch.zeros(2), guide_time=0.5)
    assert torch.allclose(out, torch.full((2, 3), 3.0))  # 0 + 3 * (1 - 0)
    outside = CFG(Toy(), y, scale=3.0, interval=(0.2, 0.8))(x, torch.zeros(2), guide_time=0.9)
    assert torch.allclose(outside, torch.ones(2, 3))


def test_config_round_trip_and_validation():
    from progflow.errors import ConfigError

    cfg = TrainConfig(steps=7)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.with_overrides({"model.depth": 2}).model.depth == 2
    for bad in ({"steps": -1}, {"model": {"patch": 5}}, {"method": {"label_dropout": 1.5}},
                {"method": {"stages": 2, "stage_probs": [0.5, 0.6]}}, {"model": {"size": "zz"}},
                {"unknown": 1}):
        with pytest.raises(ConfigError):
            TrainConfig.from_dict(bad)


def test_config_saved_in_the_flat_pre_registry_layout_still_loads():
    """Runs saved before the method/architecture config classes wrote every DFM field into
    every section; with their "not used" values those fields are dropped, others refused."""
    from progflow.errors import ConfigError
    from progflow.presets import preset_config

    cfg = preset_config("fmnist-base-xs")
    old = cfg.to_dict()
    old["model"]["stage_patches"] = []
    old["method"].update({"decomposition": "laplacian", "stages": 1, "stage_probs": [], "earlier_loc": 1.5,
                          "earlier_scale": 1.0, "per_sample_stage": True, "tied_times": False, "standardize": False,
                          "stage_std": [], "thresholds": [], "stage_steps": []})
    assert TrainConfig.from_dict(old) == cfg
    old["method"]["stages"] = 2  # a DFM setting on plain flow matching is still an error
    with pytest.raises(ConfigError, match="method.stages"):
        TrainConfig.from_dict(old)
