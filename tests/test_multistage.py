"""The multi-stage baselines: a cascade of two models and Pyramidal Flow.

Closed-form checks on Gaussian toy data (the cascade's noise-augmented conditioning, the
Pyramidal Flow jump and the sampler's state after it), the training split, bad configs,
presets at the base model's tokens and FLOPs, and one tiny run per method through the CLI
(train, exact resume, sample with previews, eval, info)."""

import json

import pytest
import torch
from PIL import Image

from conftest import TINY
from test_reliability import run_main
from test_train import assert_bitwise_equal, final_weights

from progflow.config import DataConfig, TrainConfig
from progflow.errors import ConfigError, ProgflowError
from progflow.info import forward_flops, model_info
from progflow.methods import build_method
from progflow.methods.cascade import CascadeConfig, trains_sr, upsample_bilinear
from progflow.methods.pyramidal import PyramidalConfig, Windows, jump_level, renoise
from progflow.nn.cascade import CascadeModelConfig
from progflow.nn.dit import build_model
from progflow.nn.pyramidal import PyramidalModelConfig
from progflow.presets import preset_config
from progflow.representation import downsample, upsample
from progflow.rng import BatchRandom

pytestmark = pytest.mark.usefixtures("one_thread")

MU, SIGMA = 0.3, 0.5  # toy data: every pixel i.i.d. N(MU, SIGMA^2)
TOY = DataConfig(dataset="synthetic", image_size=8, n=64)
SMALL = {"size": "xs", "width": 32, "depth": 1, "heads": 2, "patch": 2}


def toy(n: int, side: int = 8, seed: int = 0) -> torch.Tensor:
    return MU + SIGMA * torch.randn(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


def cascade_cfg(**method) -> TrainConfig:
    return TrainConfig(data=TOY, model=CascadeModelConfig(**SMALL), method=CascadeConfig(nfe=4, **method))


def pyramidal_cfg(**method) -> TrainConfig:
    return TrainConfig(data=TOY, model=PyramidalModelConfig(**{**SMALL, "patch": 4}),
                       method=PyramidalConfig(nfe=6, **method))


def linear_rows(fn, side: int) -> torch.Tensor:
    """The matrix of a linear image map ``fn`` on ``side x side`` images, one row per output pixel."""
    basis = torch.eye(side * side, dtype=torch.float64).reshape(-1, 1, side, side)
    return fn(basis).reshape(side * side, -1).T


# ---- the cascade's conditioning -----------------------------------------------------------
def test_cascade_conditioning_has_the_intended_mean_and_variance():
    """cond = (1 - a) up(down(x1)) + a eps: per pixel mean (1 - a) MU and variance
    (1 - a)^2 SIGMA^2 |M_i|^2 + a^2, with M = up o down (bilinear after area means)."""
    method = build_method(cascade_cfg())
    a, n = 0.3, 40_000
    x1 = toy(n)
    cond = method.condition(downsample(x1, 4), a, torch.randn(n, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    M = linear_rows(lambda x: upsample_bilinear(downsample(x, 4), 8), 8)
    torch.testing.assert_close(M.sum(1), torch.ones(64, dtype=torch.float64))  # so the mean is kept
    want_mean = (1 - a) * MU
    want_var = (1 - a) ** 2 * SIGMA**2 * M.pow(2).sum(1) + a**2
    flat = cond.reshape(n, 64).double()
    assert (flat.mean(0) - want_mean).abs().max() < 4 * want_var.max().sqrt() / n**0.5
    torch.testing.assert_close(flat.var(0), want_var, rtol=0.05, atol=0)
    assert abs(flat.var(0).mean() / want_var.mean() - 1) < 0.01


def test_cascade_training_draws_the_level_and_sampling_fixes_it():
    cfg = cascade_cfg(aug_max=0.4, aug_level=0.15)
    method, seen = build_method(cfg), []

    def recorder(x, t, y, cond=None, aug=None):
        seen.append((x.shape[-1], cond, aug))
        return torch.zeros_like(x)

    recorder.num_classes = 10

    assert [k for k in range(1000) if trains_sr(k, 0.8)] == list(range(4, 1000, 5))
    assert sum(trains_sr(k, 0.7) for k in range(1000)) == 300
    n = 20_000
    x1 = toy(n)
    for step in (3, 4):  # step 3 trains the coarse model, step 4 the super-resolution model
        method.loss(recorder, x1, torch.zeros(n, dtype=torch.long), BatchRandom(0, step, n, slice(None)))
    (side_low, cond_low, _), (side_sr, cond, aug) = seen
    assert side_low == 4 and cond_low is None and side_sr == 8
    assert aug.min() >= 0 and aug.max() <= 0.4 and abs(float(aug.mean()) - 0.2) < 0.005
    # what is left after removing the signal part is a eps: eps has mean 0 and variance 1
    eps = (cond - (1 - aug[:, None, None, None]) * upsample_bilinear(downsample(x1, 4), 8)) / aug[:, None, None, None]
    assert abs(float(eps.mean())) < 0.01 and abs(float(eps.var()) - 1) < 0.01
    seen.clear()
    res = method.sample(recorder, torch.zeros(3, dtype=torch.long), generator=torch.Generator().manual_seed(0),
                        previews=True)
    assert res.nfe == 4 and [s for s, _, _ in seen] == [4, 4, 8, 8]  # 2 + 2 steps: two per phase when possible
    assert all(bool((aug == 0.15).all()) for _, cond, aug in seen if cond is not None)
    assert len(res.previews) == 2 and res.previews[0].shape == res.x.shape and torch.equal(res.previews[1], res.x)


# ---- Pyramidal Flow's jump ------------------------------------------------------------------
def block_stats(x: torch.Tensor) -> tuple[float, float, float, float]:
    """Mean, variance, covariance of the two pixels in a 2x2 block's top row, and of two
    horizontally adjacent pixels in different blocks; pooled over positions."""
    x = x.double()
    c = x - x.mean(0)
    inside = (c[..., 0::2] * c[..., 1::2]).mean()
    across = (c[..., 1:-1:2] * c[..., 2::2]).mean()
    return float(x.mean()), float(c.pow(2).mean()), float(inside), float(across)


@pytest.mark.parametrize("k", [1, 2])
def test_pyramidal_jump_keeps_the_marginal(k):
    """Three windows on 8px images (2, 4, 8px). Before the jump into window k the state is
    window k-1's end marginal e x1_{k-1} + (1 - e) n; after it, the training start marginal
    s U(x1_{k-1}) + (1 - s) n': mean s MU, variance s^2 v + (1 - s)^2, covariance s^2 v
    inside a 2x2 block and 0 across blocks (v = SIGMA^2 / 4^(3-k), the variance of area
    means of i.i.d. pixels). The jump is measured, the training start point too."""
    w = Windows((0.3, 0.7))
    s, e = w.start_levels[k], w.end_levels[k - 1]
    assert s == pytest.approx(jump_level(e)) and 1 - s == pytest.approx(2 * (s / e) * (1 - e))
    n, side = 40_000, 2 ** (k + 1)
    g = torch.Generator().manual_seed(k)
    x1_k = downsample(toy(n, seed=10 + k), side)  # the data at window k's side
    _, x_end = w.endpoints(k - 1, downsample(x1_k, side // 2), torch.randn(n, 1, side // 2, side // 2, generator=g))
    jumped = renoise(x_end, e, s, torch.randn(n, 1, side, side, generator=g))
    start, _ = w.endpoints(k, x1_k, torch.randn(n, 1, side, side, generator=g))
    v = SIGMA**2 / 4 ** (3 - k)
    want = (s * MU, s**2 * v + (1 - s) ** 2, s**2 * v, 0.0)
    for got in (block_stats(jumped), block_stats(start)):
        assert got == pytest.approx(want, abs=0.01), (got, want)
    # upsampling with fresh white noise (no correction) would not: its block covariance is too large
    naive = (s / e) * upsample(x_end, side) + (1 - s) * torch.randn(n, 1, side, side, generator=g)
    assert block_stats(naive)[2] > want[2] + 0.05


class Oracle:
    """The exact Pyramidal Flow velocity when the data is one image ``x_star``: in window k,
    recover the noise from the state and return X_e - X_s."""

    def __init__(self, x_star: torch.Tensor, windows: Windows, sides):
        self.w, self.num_classes, self.first = windows, 10, {}
        self.data = [downsample(x_star, s) for s in sides]

    def coarse(self, k):
        side = self.data[k].shape[-1]
        return upsample(downsample(self.data[k], side // 2), side) if k else torch.zeros_like(self.data[k])

    def __call__(self, x, t_B, y_B, k):
        w, d = self.w, self.data[k]
        self.first.setdefault(k, x.clone())
        s, e = w.start_levels[k], w.end_levels[k]
        u = ((t_B - w.edges[k]) / w.length(k))[:, None, None, None]
        signal = u * e * d + (1 - u) * s * self.coarse(k)
        noise = (x - signal) / (1 - (s + u * (e - s)))
        return e * d - s * self.coarse(k) + (s - e) * noise


def test_pyramidal_sampler_lands_on_the_data_and_starts_each_window_on_its_marginal():
    cfg = pyramidal_cfg(boundaries=(0.3, 0.7))
    method = build_method(cfg)
    x_star = toy(1, seed=5)
    oracle = Oracle(x_star, method.windows, method.sides)
    n = 4000
    res = method.sample(oracle, torch.zeros(n, dtype=torch.long), generator=torch.Generator().manual_seed(0),
                        previews=True)
    assert res.nfe == 6 and len(res.previews) == 3 and torch.equal(res.previews[-1], res.x)
    torch.testing.assert_close(res.x, x_star.expand(n, -1, -1, -1), atol=1e-4, rtol=0)
    for k in (1, 2):  # the state the sampler hands window k: s U(x*_{k-1}) + (1 - s) n', n' ~ N(0, I)
        s = method.windows.start_levels[k]
        n_k = (oracle.first[k] - s * oracle.coarse(k)) / (1 - s)
        mean, var, inside, across = block_stats(n_k)
        assert (mean, var, inside, across) == pytest.approx((0, 1, 0, 0), abs=0.03)


# ---- configuration --------------------------------------------------------------------------
@pytest.mark.parametrize("build, match", [
    (lambda: cascade_cfg(train_split=1.0), r"method.train_split must lie in \(0, 1\)"),
    (lambda: cascade_cfg(train_split=0.0), r"method.train_split must lie in \(0, 1\)"),
    (lambda: cascade_cfg(coarse_size=3), "method.coarse_size 3 must be smaller than data.image_size 8 and divide it"),
    (lambda: cascade_cfg(coarse_size=8), "must be smaller"),
    (lambda: cascade_cfg(aug_level=0.6), r"aug_level must lie in \[0, method.aug_max"),
    (lambda: cascade_cfg(stage_steps=(3, 3)), "sums to 6 but method.nfe is 4"),
    (lambda: pyramidal_cfg(boundaries=(0.7, 0.3)), "method.boundaries must increase strictly inside"),
    (lambda: pyramidal_cfg(boundaries=(0.5, 1.0)), "method.boundaries must increase strictly inside"),
    (lambda: pyramidal_cfg(boundaries=(0.0,)), "method.boundaries must increase strictly inside"),
    (lambda: pyramidal_cfg(boundaries=(0.1, 0.2, 0.3, 0.4, 0.5)), "8 is not divisible by 2\\*\\*5 = 32"),
    (lambda: pyramidal_cfg(stage_steps=(1, 2)), "sums to 3 but method.nfe is 6"),
    (lambda: TrainConfig(data=TOY, model=PyramidalModelConfig(**SMALL), method=CascadeConfig()), "needs model.arch"),
])
def test_bad_configs_fail_at_build(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


def test_configs_fill_their_derived_fields_and_round_trip():
    c, p = cascade_cfg(), pyramidal_cfg()
    assert (c.method.coarse_size, c.model.low_patch) == (4, 1) and p.model.stage_patches == (2, 4)
    assert TrainConfig.from_dict(c.to_dict()) == c and TrainConfig.from_dict(p.to_dict()) == p


@pytest.mark.parametrize("method", ["cascade", "pyramidal"])
@pytest.mark.parametrize("size", ["xs", "s"])
def test_presets_have_the_base_token_count_and_training_flops(method, size):
    info, base = model_info(f"fmnist-{method}-{size}"), build_model(preset_config(f"fmnist-base-{size}"))
    assert info["tokens"] == info["base_tokens"] == 64 and info["base_flops"] == forward_flops(base, base.example_inputs())
    assert abs(info["flop_ratio"] - 1) < 0.01 and abs(info["sample_flop_ratio"] - 1) < 0.01
    assert info["sample_nfe"] == 40 and info["stages"] == 2
    if method == "cascade":  # two models, one trained per step: 80 % of the steps the coarse one
        parts = info["parts"]
        assert parts["low-res model"]["sample_calls"] == 30 and parts["super-resolution model"]["sample_calls"] == 10
        assert sum(p["flops"] for p in parts.values()) == info["flops"]


# ---- through the command line -----------------------------------------------------------------
STEPS = ["--ckpt-every", "5", "--keep-last", "5"]
RUNS = {"cascade": ["--set", "method.stage_steps=[3,1]", "--set", "method.nfe=4"],
        "pyramidal": ["--set", "method.stage_steps=[2,2]", "--set", "method.nfe=4"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Per method: a 10-step run, and the same run stopped at step 5 and resumed to 10."""
    root = tmp_path_factory.mktemp("multistage")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    out = {}
    try:
        for name, extra in RUNS.items():
            args = ["train", "--preset", f"fmnist-{name}-xs", *TINY[2:], *extra, *STEPS]
            for run, steps in ((root / f"{name}-ref", "10"), (root / f"{name}-cut", "5"), (root / f"{name}-cut", "10")):
                more = ["--resume"] if steps == "10" and run.name.endswith("cut") else []
                p = run_main(*args, "--steps", steps, "--out", run, *more)
                assert p.returncode == 0, p.stderr
            out[name] = (root / f"{name}-ref", root / f"{name}-cut")
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.mark.parametrize("name", ["cascade", "pyramidal"])
def test_tiny_run_resumes_exactly_samples_with_previews_and_scores(runs, name, tmp_path):
    ref, cut = runs[name]
    assert_bitwise_equal(final_weights(cut, 10), final_weights(ref, 10))
    out = tmp_path / "s.npz"
    p = run_main("sample", ref, "--n", "10", "--cfg", "2", "--out", out, "--previews", "--no-progress")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["nfe"] == 4
    strips = sorted((tmp_path / "s_previews").glob("*.png"))
    w, h = Image.open(strips[0]).size
    assert len(strips) == 10 and 3 * h - 10 < w < 3 * h + 10  # coarse stage, its last preview, the final sample
    p = run_main("sample", ref, "--n", "10", "--solver", "heun", "--nfe", "6", "--out", tmp_path / "h.npz",
                 "--no-progress")
    assert p.returncode == 0 and json.loads(p.stdout)["nfe"] == 6, p.stderr  # Heun: 2n - 1 NFE per solve
    p = run_main("eval", out)
    assert p.returncode == 0, p.stderr
    scores = json.loads(p.stdout)
    assert scores["n"] == 10 and scores["fd"] > 0 and 0 <= scores["class_accuracy"] <= 1
    info = json.loads(run_main("info", ref).stdout)
    assert info["method"] == name and info["tokens"] == info["base_tokens"]


def test_cascade_diagnostics_condition_on_the_true_coarse_image(runs):
    """progflow diagnose on a cascade: the SR model's solve from the true coarse image (the
    conditioning it receives is that image, augmented at the sampling level), and the coarse
    image alone."""
    from progflow.diagnose import diagnose_run
    from progflow.methods.cascade import augment, upsample_bilinear
    from progflow.representation import downsample
    from progflow.sampling import load_run

    ref, _ = runs["cascade"]
    cfg, model, _ = load_run(ref)
    method = build_method(cfg)
    x1 = torch.rand(3, 1, 32, 32) * 2 - 1
    y = torch.arange(3)
    seen = []
    forward = model.forward

    def spy(x, t, yy, cond=None, level=None):
        if cond is not None:
            seen.append((cond[:3].clone(), level))
        return forward(x, t, yy, cond, level) if cond is not None else forward(x, t, yy)

    model.forward = spy
    try:
        views = method.stage_diagnostics(model, x1, y, generator=torch.Generator().manual_seed(0))
    finally:
        model.forward = forward
    coarse = downsample(x1, method.coarse)
    assert torch.allclose(views["coarse_only"], upsample_bilinear(coarse, 32))
    assert len(seen) == method.phase_steps()[1] and all((lv == method.mc.aug_level).all() for _, lv in seen)
    eps = torch.randn(3, 1, 32, 32, generator=torch.Generator().manual_seed(0))  # the first draw of the solve
    assert torch.allclose(seen[0][0], augment(upsample_bilinear(coarse, 32), method.mc.aug_level, eps), atol=1e-6)
    moved = method.stage_diagnostics(model, x1.flip(-1), y, generator=torch.Generator().manual_seed(0))
    assert not torch.allclose(moved["oracle_clean"], views["oracle_clean"], atol=1e-4)
    assert method.training_share(10, 0, 8)["steps_per_stage"] == [8, 2]  # 80 / 20: steps 4 and 9 train SR
    # (the tiny run trains on synthetic data, which has no scoring reference: progflow diagnose
    # itself is run end to end on a DFM run in test_diagnose.py; here it must accept the cascade)
    with pytest.raises(ProgflowError, match="no scoring reference for dataset 'synthetic'"):
        diagnose_run(ref, n=12, batch_size=6, progress=False, out=ref.parent / "cascade-diagnose.json")
