"""DFM: config validation, schedule, loss masking, backbone, sampler, training and video."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn as nn

from progflow.config import DataConfig, ModelConfig, TrainConfig
from progflow.data import ImageData
from progflow.errors import ConfigError
from progflow.info import model_info
from progflow.methods import build_method
from progflow.methods.dfm import DecomposableFlowMatching, DFMConfig, default_stage_probs
from progflow.nn.dfm import DFMDiT, DFMModelConfig
from progflow.nn.dit import build_model, count_parameters
from progflow.presets import preset_config
from progflow.rng import BatchRandom
from progflow.schedules import dfm_active, dfm_schedule

TINY = {"size": "xs", "width": 32, "depth": 2, "heads": 2}


def dfm_cfg(stages=2, data=None, model=None, **method):
    return TrainConfig(data=data or DataConfig(), model=DFMModelConfig(**{**TINY, **(model or {})}),
                       method=DFMConfig(stages=stages, **method))


pytestmark = pytest.mark.usefixtures("one_thread")


def rng(step=0, batch=8):
    return BatchRandom(0, step, batch, slice(0, batch))


# ---- configuration ----------------------------------------------------------------------
def test_valid_config_fills_stage_patches_and_round_trips():
    cfg = dfm_cfg(3)
    assert cfg.model.stage_patches == (1, 2, 4)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert dfm_cfg(2, decomposition="haar").model.stage_patches == (2, 2)  # haar stages are 16px
    assert default_stage_probs(2) == (0.9, 0.1) and sum(default_stage_probs(3)) == pytest.approx(1)


@pytest.mark.parametrize("kwargs, match", [
    ({"model": {"stage_patches": (4, 4)}}, "unequal token grids"),
    ({"model": {"stage_patches": (2, 2)}}, "unequal token grids"),
    ({"model": {"stage_patches": (1, 2, 4)}}, "stage_patches has 3 entries"),
    ({"model": {"patch": 2}, "stages": 3}, "no integer patch"),
    ({"data": DataConfig(image_size=20), "stages": 4}, "not divisible by 2"),
    ({"stage_probs": (0.5, 0.6)}, "sum to 1"),
    ({"stage_probs": (1.0,)}, "entries for 2 stages"),
    ({"thresholds": (0.7, 0.8)}, "needs 1 entries"),
    ({"thresholds": (1.0,)}, r"in \(0, 1\)"),
    ({"stage_steps": (30, 0), "nfe": 30}, "positive integers"),
    ({"stage_steps": (30,), "nfe": 30}, "positive integers"),
    ({"stage_steps": (20, 10)}, "sums to 30 but method.nfe is 40"),
    ({"stage_std": (1.0,)}, "stage_std"),
    ({"decomposition": "identity"}, "identity"),
])
def test_bad_configs_fail_at_build(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        dfm_cfg(**{"stages": 2, **kwargs})


def test_method_needs_dfm_arch():
    with pytest.raises(ConfigError, match="arch 'dfm'"):
        TrainConfig(model=ModelConfig(arch="dit"), method=DFMConfig(stages=2))


# ---- schedule ---------------------------------------------------------------------------
def test_schedule_two_stages_matches_paper():
    g = dfm_schedule((30, 10), (0.7,))
    assert g.dtype == torch.float64 and g.shape == (41, 2)
    k = torch.arange(31, dtype=torch.float64)
    torch.testing.assert_close(g[:31, 0], 0.7 * k / 30)  # stage 1 alone, 0 -> 0.7
    assert (g[:31, 1] == 0).all()
    k = torch.arange(11, dtype=torch.float64)
    torch.testing.assert_close(g[30:, 0], 0.7 + 0.3 * k / 10)  # joint: 0.7 -> 1
    torch.testing.assert_close(g[30:, 1], k / 10)  # and 0 -> 1
    active = dfm_active((30, 10))
    assert active[:30, 1].sum() == 0 and active[30:].all()


def test_schedule_three_stages():
    steps, taus = (20, 10, 10), (0.6, 0.8)
    g = dfm_schedule(steps, taus)
    assert g.shape == (41, 3)
    torch.testing.assert_close(g[:21, 0], 0.6 * torch.arange(21, dtype=torch.float64) / 20)
    assert (g[:21, 1:] == 0).all()
    assert g[20, 0] == pytest.approx(0.6)  # stage 2 enters when stage 1 reaches tau_1
    assert g[30, 1] == pytest.approx(0.8) and (g[:31, 2] == 0).all()  # stage 3 enters at tau_2
    assert g[30, 0] == pytest.approx(0.6 + 0.4 * 10 / 20)  # stage 1 runs linearly 0.6 -> 1 over 20 steps
    torch.testing.assert_close(g[40], torch.ones(3, dtype=torch.float64))
    assert (g[1:] >= g[:-1]).all()  # monotone
    slope = g[21:, 0] - g[20:-1, 0]
    torch.testing.assert_close(slope, torch.full_like(slope, 0.02))
    assert dfm_active(steps).sum(1).tolist() == [1] * 20 + [2] * 10 + [3] * 10


# ---- loss -------------------------------------------------------------------------------
class Recorder(nn.Module):
    """Wraps a backbone and keeps the inputs of its last call."""

    def __init__(self, net):
        super().__init__()
        self.net, self.num_classes, self.calls = net, net.num_classes, []

    def forward(self, x, t, y, active=None):
        self.calls.append(([s.detach().clone() for s in x], t.detach().clone(), active))
        return self.net(x, t, y, active)


def _with_trained_heads(net):
    with torch.no_grad():  # zero-initialised heads would hide gradients; make them non-zero
        for p in net.parameters():
            if p.abs().sum() == 0:
                p.normal_(std=0.02)
    return net


def test_later_stages_get_zeros_and_no_loss_or_gradient():
    torch.manual_seed(0)
    cfg = dfm_cfg(2, stage_probs=(1.0, 0.0))  # stage 1 active in every sample
    method = DecomposableFlowMatching(cfg)
    net = Recorder(_with_trained_heads(build_model(cfg)))
    x1 = [torch.randn(8, 1, 16, 16), torch.randn(8, 1, 32, 32)]
    y = torch.arange(8) % 10

    def loss_and_grads(stages):
        net.zero_grad()
        loss, stats = method.stage_loss(net, stages, y, rng())
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()], stats

    loss, grads, stats = loss_and_grads(x1)
    (xin, t, active), = net.calls[-1:]
    assert (xin[1] == 0).all() and (t[:, 1] == 0).all() and (active == 0).all()
    assert (xin[0] != 0).any() and (t[:, 0] > 0).all()
    perturbed = [x1[0], x1[1] + 1e3 * torch.randn_like(x1[1])]
    loss2, grads2, _ = loss_and_grads(perturbed)
    assert torch.equal(loss, loss2) and all(torch.equal(a, b) for a, b in zip(grads, grads2))
    assert stats["frac_stage1"] == 1.0 and stats["loss_stage2"] == 0.0
    # control: with stage 2 active the same perturbation changes the loss
    method2 = DecomposableFlowMatching(dfm_cfg(2, stage_probs=(0.0, 1.0)))
    a = method2.stage_loss(net, x1, y, rng())[0]
    assert not torch.equal(a, method2.stage_loss(net, perturbed, y, rng())[0])
    _, t, active = net.calls[-1]
    assert (t > 0).all() and (active == 1).all()


def test_time_draws_per_sample_tied_and_per_batch():
    x1, y = torch.rand(64, 1, 32, 32) * 2 - 1, torch.zeros(64, dtype=torch.long)
    for kw in ({}, {"tied_times": True}, {"per_sample_stage": False}):
        cfg = dfm_cfg(3, **kw)
        net = Recorder(build_model(cfg))
        DecomposableFlowMatching(cfg).loss(net, x1, y, rng(batch=64))
        xin, t, q = net.calls[-1]
        idx = torch.arange(3)[None]
        assert ((t > 0) == (idx <= q[:, None])).all()  # later stages at t = 0, active ones > 0
        for s in range(3):
            assert (xin[s][q < s] == 0).all()
        if kw.get("tied_times"):
            tq = t.gather(1, q[:, None])
            assert (torch.where(idx <= q[:, None], t, tq) == tq).all()
        elif kw.get("per_sample_stage") is False:
            assert (q == q[0]).all()
        else:
            assert len(q.unique()) > 1
            both = q >= 1  # independent times: earlier stage != active stage
            assert (t[both, 0] != t[both, 1]).all()


# ---- backbone ---------------------------------------------------------------------------
def test_backbone_shapes_zero_init_and_size():
    cfg = preset_config("fmnist-dfm3-s")
    net = build_model(cfg)
    assert isinstance(net, DFMDiT) and net.num_stages == 3 and net.grid == (8, 8)
    x = [torch.randn(2, *shape) for shape in net.stage_shapes]
    t = torch.tensor([[0.3, 0.0, 0.0], [0.9, 0.5, 0.0]])
    assert net.active_from_time(t).tolist() == [0, 1]
    v = net(x, t, torch.tensor([1, 10]))
    assert [tuple(a.shape) for a in v] == [(2, 1, 8, 8), (2, 1, 16, 16), (2, 1, 32, 32)]
    assert all((a == 0).all() for a in v)  # zero-initialised heads
    info = model_info(preset_config("fmnist-dfm-s"))
    assert info["tokens"] == info["base_tokens"] == 64
    assert 1.0 < info["param_ratio"] < 1.05 and 1.0 < info["flop_ratio"] < 1.01
    haar = dfm_cfg(3, decomposition="haar")
    hnet = DFMDiT(haar.data, haar.model, decomposition="haar")
    assert [s[0] for s in hnet.stage_shapes] == [1, 3, 3]
    assert count_parameters(hnet) > 0


# ---- sampling ---------------------------------------------------------------------------
class Oracle(nn.Module):
    """Velocity toward fixed stage targets: ``(x1_s - x_s) / (1 - t_s)``. Euler lands on the
    targets exactly, whatever the grid, so the sampler must return ``merge(targets)``."""

    num_classes = 10

    def __init__(self, targets):
        super().__init__()
        self.targets, self.calls = targets, []

    def forward(self, x, t, y, active):
        self.calls.append(([s.clone() for s in x], t.clone(), active.clone()))
        return [(x1[: s.shape[0]] - s) / (1 - t[:, i]).reshape(-1, *[1] * (s.ndim - 1))
                for i, (x1, s) in enumerate(zip(self.targets, x))]


@pytest.mark.parametrize("stages", [2, 3])
def test_sampler_hits_known_solution_and_feeds_zeros(stages):
    cfg = dfm_cfg(stages)
    method = DecomposableFlowMatching(cfg)
    image = torch.rand(2, 1, 32, 32) * 2 - 1
    targets = method.decomposition.split(image)
    oracle = Oracle([torch.cat([s, s]) for s in targets])
    res = method.sample(oracle, torch.tensor([3, 4]), generator=torch.Generator().manual_seed(0),
                        previews=True, cfg_scale=2.0)
    torch.testing.assert_close(res.x, image, atol=1e-4, rtol=0)
    assert res.nfe == 40 == len(oracle.calls)
    assert len(res.previews) == stages and all(p.shape == image.shape for p in res.previews)
    torch.testing.assert_close(res.previews[-1], res.x)
    torch.testing.assert_close(res.previews[0], method.decomposition.merge(
        [targets[0]] + [torch.zeros_like(s) for s in targets[1:]]), atol=1e-4, rtol=0)
    active = dfm_active(method.phase_steps())
    for k, (xin, t, q) in enumerate(oracle.calls):
        latest = int(active[k].sum()) - 1
        assert (q == latest).all() and xin[0].shape[0] == 4  # conditional + unconditional batch
        for s in range(latest + 1, stages):
            assert (xin[s] == 0).all() and (t[:, s] == 0).all()
        if k and latest != int(active[k - 1].sum()) - 1:  # entering step: fresh noise at t = 0
            assert (t[:, latest] == 0).all() and xin[latest].std() > 0.5


def test_sampler_tiny_model_shapes_and_nfe_rescale():
    cfg = dfm_cfg(2)
    method, net = build_method(cfg), build_model(cfg)
    gen = torch.Generator().manual_seed(1)
    res = method.sample(net, torch.tensor([0, 1, 2]), generator=gen, previews=True)
    assert res.x.shape == (3, 1, 32, 32) and res.nfe == 40 and len(res.previews) == 2
    assert method.phase_steps(20) == (15, 5) and method.sample(net, torch.tensor([0]), generator=gen, nfe=8).nfe == 8
    a = method.sample(net, torch.tensor([5]), generator=torch.Generator().manual_seed(3)).x
    b = method.sample(net, torch.tensor([5]), generator=torch.Generator().manual_seed(3)).x
    assert torch.equal(a, b)


# ---- training ---------------------------------------------------------------------------
def _images(n, size=32):
    try:
        from progflow.data import make_synthetic, to_model_range

        return to_model_range(make_synthetic(n, image_size=size).images), make_synthetic(n, image_size=size).labels
    except ImportError:  # pragma: no cover - the data package is being written in parallel
        return torch.rand(n, 1, size, size) * 2 - 1, torch.arange(n) % 10


def _train(cfg, x, y, steps, batch=32, lr=2e-3):
    method, net = build_method(cfg), build_model(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr)
    n = min(64, len(x))
    probe = lambda: float(sum(method.loss(net, x[:n], y[:n], BatchRandom(7, i, n, slice(0, n)))[0]  # noqa: E731
                              for i in range(3)))
    with torch.no_grad():
        before = probe()
    for step in range(steps):
        i = torch.arange(step * batch, (step + 1) * batch) % len(x)
        loss, _ = method.loss(net, x[i], y[i], BatchRandom(0, step, batch, slice(0, batch)))
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        return method, net, before, probe()


def test_training_fmnist_dfm_xs_decreases_loss():
    torch.manual_seed(0)
    cfg = preset_config("fmnist-dfm-xs")
    x, y = _images(256)
    _, _, before, after = _train(cfg, x, y, steps=40)
    assert after < 0.8 * before


@pytest.mark.parametrize("preset", ["mfmnist-dfm-xs", "mfmnist-base-xs"])
def test_video_end_to_end(preset):
    torch.manual_seed(0)
    cfg = preset_config(preset).with_overrides({"model.width": 32, "model.depth": 2, "model.heads": 2,
                                                "data.frames": 4})
    clips = (torch.rand(16, 1, 4, 32, 32) * 255).to(torch.uint8)
    data = ImageData(clips, torch.arange(16) % 10, 10)
    cfg = build_method(cfg).prepare(cfg, data)
    if cfg.method.name == "dfm":
        assert cfg.method.standardize and len(cfg.method.stage_std) == 2
        again = cfg.replace(method=dataclasses.replace(cfg.method, stage_std=()))
        assert DecomposableFlowMatching.prepare(again, data).method.stage_std == cfg.method.stage_std
        cfg = cfg.with_overrides({"method.stage_steps": [2, 2], "method.nfe": 4})
    x = clips.float() / 127.5 - 1
    method, net, before, after = _train(cfg, x, torch.arange(16) % 10, steps=3, batch=4)
    assert after == after and after < 1.5 * before  # finite and not exploding
    res = method.sample(net, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(0), nfe=4,
                        previews=cfg.method.name == "dfm")
    assert res.x.shape == (2, 1, 4, 32, 32) and res.nfe == 4
    if cfg.method.name == "dfm":
        assert len(res.previews) == 2 and res.previews[0].shape == res.x.shape


def test_cfg_interval_is_judged_on_the_latest_stage():
    cfg = dfm_cfg(2)
    method = DecomposableFlowMatching(cfg)
    oracle = Oracle([torch.zeros(2, 1, 16, 16), torch.zeros(2, 1, 32, 32)])
    method.sample(oracle, torch.tensor([1]), generator=torch.Generator().manual_seed(0),
                  cfg_scale=3.0, cfg_interval=(0.0, 0.5))
    grid = dfm_schedule(method.phase_steps(), method.thresholds)
    guided = [xin[0].shape[0] == 2 for xin, _, _ in oracle.calls]
    latest = dfm_active(method.phase_steps()).sum(1) - 1
    expected = [bool(grid[k, latest[k]] <= 0.5) for k in range(len(guided))]
    assert guided == expected and any(expected) and not all(expected)
    assert guided[30]  # stage 2 enters at t = 0: guided again although stage 1 is at 0.7
