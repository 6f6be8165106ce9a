"""FlowAR: block-causal AR transformer, cached generation, spatial adaLN, scale weights,
presets at equal training FLOPs, bad configs, and a tiny run through the CLI (train,
resume after SIGKILL, sample with previews, score)."""

import json

import pytest
import torch
from PIL import Image

from conftest import TINY, assert_one_line_error, kill_after_log_lines, read_log, run_cli
from test_train import assert_bitwise_equal, final_weights

from progflow.config import DataConfig, TrainConfig
from progflow.errors import ConfigError
from progflow.info import model_info
from progflow.methods import build_method
from progflow.methods.flowar import FlowARConfig, cfg_ramp, scale_weights
from progflow.nn.dit import build_model
from progflow.nn.flowar import FlowARModelConfig
from progflow.presets import preset_config
from progflow.rng import BatchRandom, generator

FLOWAR_TINY = ["--preset", "fmnist-flowar-xs", *TINY[2:]]


def tiny_cfg(spatial: bool = True, scales=(1, 2, 4, 8)) -> TrainConfig:
    return TrainConfig(data=DataConfig(dataset="synthetic", n=64),
                       model=FlowARModelConfig(size="xs", depth=2, head_width=32, head_depth=2, spatial_adaln=spatial),
                       method=FlowARConfig(scales=scales, nfe=8))


def randomized(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised layers (adaLN-Zero, output heads) get random weights, so every
    block does something and the checks below cannot pass trivially."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if not p.abs().sum():
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.eval()


def random_scales(cfg, batch: int, seed: int = 1) -> list[torch.Tensor]:
    method = build_method(cfg)
    return method.scales_of(torch.rand(batch, *cfg.data.shape, generator=torch.Generator().manual_seed(seed)) * 2 - 1)


def test_block_causal_mask_hides_later_scales():
    cfg = tiny_cfg()
    net = randomized(build_model(cfg))
    scales = random_scales(cfg, 3)
    y = torch.tensor([0, 4, 10])  # 10 is the null class
    lay = net.layout
    base = net.ar([None, *scales[:-1]], y)
    for k in range(len(scales) - 1):  # scales[k] is the input of scale k + 1
        changed = list(scales)
        changed[k] = changed[k] + torch.randn_like(changed[k])
        out = net.ar([None, *changed[:-1]], y)
        early = lay.span(0, k + 1)
        assert torch.equal(out[:, early], base[:, early]), f"changing scale {k + 1} moved an earlier output"
        assert not torch.allclose(out[:, lay.span(k + 1, k + 2)], base[:, lay.span(k + 1, k + 2)])


def test_cached_generation_equals_teacher_forced_pass():
    cfg = tiny_cfg()
    net = randomized(build_model(cfg))
    scales = random_scales(cfg, 4)
    y = torch.tensor([1, 2, 3, 10])
    full = net.ar([None, *scales[:-1]], y)
    cache = net.ar.new_cache()
    steps = [net.ar([None if k == 0 else scales[k - 1]], y, first=k, cache=cache) for k in range(len(scales))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    # and the packed training pass of the head equals running it scale by scale
    t_BK = torch.rand(4, len(scales))
    v = net(scales, scales, t_BK, y)
    for k, s in enumerate(scales):
        from progflow.representation import map_from_tokens, tokens_from_map

        alone = net.head(tokens_from_map(s), t_BK[:, k:k + 1], full[:, net.layout.span(k, k + 1)], (k,))
        torch.testing.assert_close(map_from_tokens(alone, s.shape[-1]), v[k], rtol=1e-5, atol=1e-5)


def _first_modulation(net, scales, y):
    seen = []
    hook = net.head.blocks[0].ada.register_forward_hook(lambda m, i, o: seen.append(o))
    net(scales, scales, torch.full((y.shape[0], len(scales)), 0.5), y)
    hook.remove()
    return seen[0]  # (B, L, 6 * head_width)


def test_spatial_adaln_modulates_each_position_differently():
    y = torch.tensor([3, 7])
    cfg = tiny_cfg(spatial=True)
    net = randomized(build_model(cfg))
    mod = _first_modulation(net, random_scales(cfg, 2), y)
    finest = mod[0, net.layout.span(3, 4)]  # the 64 positions of one sample's finest scale
    assert torch.cdist(finest, finest).fill_diagonal_(float("inf")).min() > 1e-4  # all different
    # the ablation: one modulation vector per sample and scale
    cfg = tiny_cfg(spatial=False)
    net = randomized(build_model(cfg))
    mod = _first_modulation(net, random_scales(cfg, 2), y)
    for k in range(4):
        part = mod[0, net.layout.span(k, k + 1)]
        torch.testing.assert_close(part, part[:1].expand_as(part))
    assert not torch.allclose(mod[0, 0], mod[1, 0])  # but per sample


def test_scale_weights_sum_to_the_token_share_and_every_token_counts_equally():
    assert scale_weights((1, 2, 4, 8)) == (1 / 64, 4 / 64, 16 / 64, 1.0)
    assert sum(scale_weights((1, 2, 4, 8))) == 85 / 64
    assert sum(scale_weights((2, 8))) == 68 / 64
    cfg = tiny_cfg()
    method = build_method(cfg)
    seen = {}

    def zero_model(scales, x_t, t_BK, y):
        seen.update(scales=scales, x_t=x_t, t=t_BK)
        return [torch.zeros_like(x) for x in x_t]

    x1 = torch.rand(5, *cfg.data.shape) * 2 - 1
    loss, stats = method.loss(zero_model, x1, torch.arange(5), BatchRandom(0, 3, 5, slice(None)))
    # target v = s - x0 = (s - x_t) / (1 - t); with a zero prediction the loss is the summed
    # squared target over all tokens of all scales / (tokens of the finest scale * channels)
    total = sum(((s - x) / (1 - seen["t"][:, k, None, None, None])).pow(2).sum()
                for k, (s, x) in enumerate(zip(seen["scales"], seen["x_t"])))
    C = seen["scales"][0].shape[1]
    torch.testing.assert_close(loss, total / (5 * C * 64), rtol=1e-4, atol=0)
    assert set(stats) == {"loss_scale1", "loss_scale2", "loss_scale3", "loss_scale4"}


def test_cfg_ramps_from_one_to_the_scale():
    assert cfg_ramp(3.0, 4) == [1.0, 1 + 2 / 3, 1 + 4 / 3, 3.0]
    assert cfg_ramp(2.0, 1) == [2.0]


def test_sampling_counts_head_evaluations_and_returns_each_scale():
    cfg = tiny_cfg()
    net = randomized(build_model(cfg))
    method = build_method(cfg)
    y = torch.tensor([0, 5])
    res = method.sample(net, y, generator=generator(0), nfe=8, cfg_scale=2.0, cfg_interval=(0.3, 1.0), previews=True)
    assert res.nfe == 8 and res.x.shape == (2, *cfg.data.shape)
    assert len(res.previews) == 4 and torch.equal(res.previews[-1], res.x)
    # each preview is its scale: blocks of (32 / side) pixels repeat the same patch
    coarse = res.previews[1]  # 2x2 scale: each 16x16 quadrant is one 4x4 patch tiled
    quadrant = coarse[:, :, :16, :16]
    assert torch.equal(quadrant, quadrant[:, :, :4, :4].repeat(1, 1, 4, 4))
    with pytest.raises(ConfigError, match="nfe 3 cannot cover FlowAR's 4 scales"):
        method.sample(net, y, generator=generator(0), nfe=3)


@pytest.mark.parametrize("prefix", ["fmnist", "emoji", "emoji-latent"])
@pytest.mark.parametrize("size", ["xs", "s"])
def test_presets_match_base_training_flops_and_sample_cheaper(prefix, size):
    info = model_info(f"{prefix}-flowar-{size}")
    base = model_info(f"{prefix}-base-{size}")
    assert info["base_flops"] == base["flops"] and info["base_params"] == base["params"]
    assert 0.9 <= info["flop_ratio"] <= 1.1  # AR over all scales + head over all scales, per image
    parts = info["parts"]
    assert set(parts) == {"AR transformer", "flow head"}
    assert sum(p["params"] for p in parts.values()) == info["params"]
    assert sum(p["flops"] for p in parts.values()) == info["flops"]
    scales = preset_config(f"{prefix}-flowar-{size}").method.scales  # one cached AR pass per scale
    assert parts["AR transformer"]["sample_calls"] == len(scales) and parts["flow head"]["sample_calls"] == 40
    assert info["sample_nfe"] == info["base_sample_nfe"] == 40
    assert sum(p["sample_flops"] for p in parts.values()) == info["sample_flops"]
    assert info["sample_flops"] < 0.2 * info["base_sample_flops"]


@pytest.mark.parametrize("args,needles", [
    (["--set", "method.scales=[1,3,8]"], ["method.scales must double"]),
    (["--set", "method.scales=[2,2,8]"], ["method.scales must double"]),
    (["--set", "method.scales=[1,2,4]"], ["must end at the token grid, 8"]),
    (["--set", "method.scales=[]"], ["method.scales must be positive integers"]),
    (["--set", "model.head_width=128"], ["model.head_width 128 is wider"]),
    (["--set", "model.head_heads=5"], ["not divisible by model.head_heads"]),
    (["--set", "method.cfg_scale=-1"], ["method.cfg_scale must be a number in [0, 100]"]),
    (["--set", "method.nfe=3"], ["method.nfe 3 cannot give each of the 4 scales"]),
])
def test_invalid_flowar_configs(tmp_path, args, needles):
    p = run_cli("train", *FLOWAR_TINY, *args, "--out", tmp_path / "r")
    assert_one_line_error(p, *needles)
    assert not (tmp_path / "r").exists()


def test_flowar_method_needs_its_network(tmp_path):
    p = run_cli("train", *TINY, "--set", "method.name=flowar", "--out", tmp_path / "r")
    assert_one_line_error(p, "method flowar needs model.arch flowar")


STEPS = ["--steps", "16", "--ckpt-every", "4", "--keep-last", "2"]


def test_tiny_flowar_trains_resumes_samples_and_scores(tmp_path):
    ref = tmp_path / "ref"
    run_cli("train", *FLOWAR_TINY, *STEPS, "--out", ref, check=0)
    log = read_log(ref)
    assert log[-1]["loss"] < log[0]["loss"]

    run = tmp_path / "run"  # killed after a checkpoint, resumed: bit-identical to the uninterrupted run
    kill_after_log_lines(["train", *FLOWAR_TINY, *STEPS], run)
    assert not (run / "ckpt" / "step_00000016").exists(), "the run finished before it was killed"
    run_cli("train", *FLOWAR_TINY, *STEPS, "--out", run, "--resume", check=0)
    assert_bitwise_equal(final_weights(run, 16), final_weights(ref, 16))

    out = tmp_path / "s.npz"
    p = run_cli("sample", run, "--n", "20", "--nfe", "8", "--cfg", "2", "--out", out, "--previews", "--no-progress",
                check=0)
    assert json.loads(p.stdout)["nfe"] == 8  # flow-head evaluations per sample, 2 per scale
    strips = sorted((tmp_path / "s_previews").glob("*.png"))
    assert len(strips) == 20
    w, h = Image.open(strips[0]).size
    assert 4 * h < w < 5 * h  # the 4 scales, then the final sample (32px each, plus a border)
    scores = json.loads(run_cli("eval", out, check=0).stdout)
    assert scores["n"] == 20 and scores["fd"] > 0 and 0 <= scores["class_accuracy"] <= 1
    assert_one_line_error(run_cli("sample", run, "--n", "2", "--nfe", "2"), "nfe 2 cannot cover FlowAR's 4 scales")
    assert_one_line_error(run_cli("sample", run, "--n", "2", "--cfg", "-3"), "cfg scale must be a number")
    p = run_cli("info", run, check=0)
    assert set(json.loads(p.stdout)["parts"]) == {"AR transformer", "flow head"}
