"""BA-solver: SideNet, bi-/single-anchor samplers, CFG per node, fitting, sampling and
editing through the CLI on base and DFM runs, bad input."""

import json
import math
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT, TINY, assert_one_line_error, cli_env, run_cli
from test_solvers import Counted  # a velocity that counts its calls
from progflow.guidance import CFG, GuidedVelocity
from progflow.nn.sidenet import SideNet
from progflow.schedules import uniform_grid
from progflow.solvers import get_solver
from progflow.solvers.ba import ALPHA, WEIGHTS, Side, ba_spec, bi_anchor, heun_reused, single_anchor
from progflow.solvers.ode import euler


# ---- quadrature and samplers against known answers -----------------------------------------------
def poly(coefs):
    """``p(t) = sum_i c_i t^i`` and its antiderivative from 0."""
    p = lambda t: sum(c * t**i for i, c in enumerate(coefs))
    P = lambda t: sum(c * t ** (i + 1) / (i + 1) for i, c in enumerate(coefs))
    return p, P


class Oracle:
    """Stands in for the SideNet: the true velocity ``p(t + h)`` of a velocity that depends on time only."""

    def __init__(self, ps):
        self.ps = ps  # one polynomial per stage

    def __call__(self, x, v, t_BS, hs, y):
        out = []
        for h in hs:
            vals = [torch.ones_like(vs) * p(float(t_BS[0, s] + h[0, s])) for s, (p, vs) in
                    enumerate(zip(self.ps, [v] if isinstance(v, torch.Tensor) else v))]
            out.append(vals[0] if isinstance(v, torch.Tensor) else vals)
        return out


def test_gauss_lobatto_constants():
    assert ALPHA == pytest.approx(0.2763932, abs=1e-7)
    assert WEIGHTS == pytest.approx((1 / 12, 5 / 12, 5 / 12, 1 / 12))


@pytest.mark.parametrize("sampler", [bi_anchor, single_anchor])
def test_quadrature_exact_up_to_degree_5_with_true_nodes(sampler):
    """With the SideNet replaced by the true velocity, every interval is a 4-point Gauss-Lobatto
    rule: exact for polynomials in t of degree <= 5, not for degree 6."""
    for degree, exact in ((3, True), (5, True), (6, False)):
        coefs = [1.0] + [(-1.5) ** i / math.factorial(i) * 3 for i in range(1, degree + 1)]
        p, P = poly(coefs)
        vel = lambda x, t: torch.ones_like(x) * p(float(t))
        x0 = torch.zeros(3, dtype=torch.float64)
        for grid, start in ((uniform_grid(3), 0.0), (torch.tensor([0.0, 0.1, 0.45, 1.0], dtype=torch.float64), 0.0),
                            (uniform_grid(2).flip(0), 1.0)):  # uneven and decreasing grids too
            x, _ = sampler(vel, x0, grid, Side(Oracle([p]), 10))
            err = abs(float(x[0]) - (P(float(grid[-1])) - P(start)))
            assert (err < 1e-12) == exact, (degree, grid.tolist(), err)


def test_quadrature_exact_per_stage_on_a_staged_grid():
    """A list of stages with its own time per stage (DFM): each stage integrates exactly."""
    p1, P1 = poly([0.5, -1.0, 2.0, 0.3, -0.7, 1.1])
    p2, P2 = poly([1.0, 0.2, -0.4, 0.9, 0.0, -2.0])
    grid = torch.tensor([[0.0, 0.0], [0.3, 0.0], [0.6, 0.0], [0.8, 0.5], [1.0, 1.0]], dtype=torch.float64)
    vel = lambda x, t: [torch.ones_like(x[0]) * p1(float(t[0])), torch.ones_like(x[1]) * p2(float(t[1]))]
    x = [torch.zeros(2, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.float64)]
    out, nfe = bi_anchor(vel, x, grid, Side(Oracle([p1, p2]), 10))
    assert float(out[0][0]) == pytest.approx(P1(1.0), abs=1e-12)
    assert float(out[1][0, 0]) == pytest.approx(P2(1.0), abs=1e-12)
    assert nfe == 4


def nonlinear(x, t):
    return torch.sin(3 * x) * (1 + float(t)) - x


@pytest.mark.parametrize("n", [1, 2, 5, 10])
def test_nfe_and_sidenet_call_counts(n):
    grid = uniform_grid(n)
    for fn, side_calls in ((bi_anchor, 2 * n - 1), (single_anchor, n)):
        vel = Counted(nonlinear)
        side = Side(SideNet([(1, 8, 8)], 10, width=8, patch=2), 10)
        _, nfe = fn(vel, torch.randn(2, 1, 8, 8), grid, side)
        assert nfe == n == vel.calls
        assert side.calls == side_calls


def test_untrained_sidenet_is_the_training_free_counterpart():
    """Zero-initialised last layer: bi-anchor = Heun with the end slope reused (heun_reused),
    single anchor = Euler, at any grid, both directions."""
    torch.manual_seed(0)
    net = SideNet([(1, 8, 8)], 10, width=8, patch=2)
    x = torch.randn(3, 1, 8, 8)
    for grid in (uniform_grid(4), torch.tensor([0.0, 0.2, 0.7, 1.0], dtype=torch.float64), uniform_grid(3).flip(0)):
        a, _ = bi_anchor(nonlinear, x, grid, Side(net, 10))
        b, _ = heun_reused(nonlinear, x, grid)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
        c, _ = single_anchor(nonlinear, x, grid, Side(net, 10))
        d, _ = euler(nonlinear, x, grid)
        torch.testing.assert_close(c, d, rtol=1e-5, atol=1e-6)
    # and heun_reused is a real second-order method: on v = 2t it is exact but for the last Euler step
    lin_t = lambda x, t: torch.ones_like(x) * 2 * float(t)
    out, _ = heun_reused(lin_t, torch.zeros(1, dtype=torch.float64), uniform_grid(4))
    assert float(out) == pytest.approx(1 - 0.25**2, abs=1e-12)


def test_a_trained_sidenet_changes_the_result():
    """Guard for the test above: once f's last layer is non-zero, bi-anchor is no longer heun_reused."""
    torch.manual_seed(0)
    net = SideNet([(1, 8, 8)], 10, width=8, patch=2)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    x = torch.randn(3, 1, 8, 8)
    a, _ = bi_anchor(nonlinear, x, uniform_grid(4), Side(net, 10))
    b, _ = heun_reused(nonlinear, x, uniform_grid(4))
    assert (a - b).abs().max() > 1e-3


class ToyBackbone(torch.nn.Module):
    """``v = -x * (1 + y/10)``, with the null class 10 giving ``-x``: guidance changes the field."""

    num_classes = 10

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x, t, y):
        self.calls += 1
        return -x * (1 + y.float()[:, None, None, None] / 10) + t[:, None, None, None]


class LabelRecorder(torch.nn.Module):
    """A SideNet stand-in that records the labels it is called with and adds ``h * y``."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def forward(self, x, v, t_BS, hs, y):
        self.seen.append(y.clone())
        return [v + h[:, 0, None, None, None] * y.float()[:, None, None, None] for h in hs]


def test_cfg_runs_the_sidenet_on_both_branches_and_combines_per_node():
    torch.manual_seed(0)
    y = torch.tensor([1, 3])
    x = torch.randn(2, 1, 4, 4)
    grid = uniform_grid(3)
    rec = LabelRecorder()
    velocity = GuidedVelocity(CFG(ToyBackbone(), y, 2.0))
    out, nfe = bi_anchor(velocity, x, grid, Side(rec, 10))
    assert nfe == 3 and len(rec.seen) == 5  # one SideNet call per node set, both branches batched
    assert all(torch.equal(s, torch.tensor([1, 3, 10, 10])) for s in rec.seen)
    # per node: v_u' + w (v_c' - v_u') with v' = v + h y -> guided v + h (y_null + w (y - y_null))
    w = 2.0

    class Guided:  # the same field as a guided SideNet would give, written out
        def __init__(self):
            self.inner = GuidedVelocity(CFG(ToyBackbone(), y, w))

        def __call__(self, x, t):
            return self.inner(x, t)

        @property
        def y(self):
            return y

    class Shift(torch.nn.Module):  # guided-only fallback: the SideNet sees the guided velocity once
        def forward(self, x, v, t_BS, hs, yy):
            c = 10 + w * (y.float() - 10)
            return [v + h[:, 0, None, None, None] * c[:, None, None, None] for h in hs]

    ref, _ = bi_anchor(Guided(), x, grid, Side(Shift(), 10))
    torch.testing.assert_close(out, ref)
    # without guidance (scale 1) there is one branch, the conditional one
    rec2 = LabelRecorder()
    bi_anchor(GuidedVelocity(CFG(ToyBackbone(), y, 1.0)), x, grid, Side(rec2, 10))
    assert all(torch.equal(s, y) for s in rec2.seen)


def test_cfg_interval_outside_gives_one_branch():
    y = torch.tensor([2])
    v = GuidedVelocity(CFG(ToyBackbone(), y, 3.0, interval=(0.5, 1.0)))
    parts, combine = v.branches(torch.ones(1, 1, 2, 2), torch.tensor(0.2, dtype=torch.float64))
    assert len(parts) == 1
    parts, combine = v.branches(torch.ones(1, 1, 2, 2), torch.tensor(0.7, dtype=torch.float64))
    assert [p[1].tolist() for p in parts] == [[2], [10]]
    torch.testing.assert_close(combine([p[0] for p in parts]), v(torch.ones(1, 1, 2, 2), torch.tensor(0.7)))


def test_sidenet_stage_layout_round_trip_and_h_zero():
    """DFM layout: 16px and 32px stages on one 8x8 grid; the patch map is exact, and a stage
    with h = 0 gets its velocity back whatever the weights."""
    torch.manual_seed(0)
    net = SideNet([(1, 16, 16), (1, 32, 32)], 10, width=16, patch=4)
    torch.nn.init.normal_(net.conv_out.weight, std=0.1)
    st = [torch.randn(2, 1, 16, 16), torch.randn(2, 1, 32, 32)]
    back = net._from_grid(net._to_grid(st))
    assert all(torch.equal(a, b) for a, b in zip(st, back))
    h = torch.tensor([[0.1, 0.0], [0.1, 0.0]])
    out = net(st, st, torch.full((2, 2), 0.5), [h], torch.zeros(2, dtype=torch.long))[0]
    assert torch.equal(out[1], st[1]) and not torch.equal(out[0], st[0])


def test_registered_ba_refuses_without_a_sidenet():
    from progflow.errors import ConfigError

    with pytest.raises(ConfigError, match="fit-solver"):
        get_solver("ba").integrate(nonlinear, torch.zeros(1), uniform_grid(3))
    assert ba_spec(Side(Oracle([lambda t: 1.0]), 10)).nfe(7) == 7


# ---- fitting --------------------------------------------------------------------------------------------
def test_fitting_lowers_the_sidenet_error_on_held_out_points(tmp_path):
    """A backbone whose velocity changes with time (random, non-zero heads); the SideNet's error
    against it on test-split chains with their own seed drops with fitting."""
    from progflow.data import make_synthetic
    from progflow.fit_solver import ChainObjective, FitConfig, heldout_error, sidenet_for, state_shapes
    from progflow.methods import build_method
    from progflow.nn.dit import build_model
    from progflow.presets import preset_config
    from progflow.solvers.phases import record_phases
    from progflow.train import training_loop

    cfg = preset_config("fmnist-base-xs").with_overrides({"model.depth": 1, "data.dataset": "synthetic"})
    torch.manual_seed(0)
    backbone = build_model(cfg).eval().requires_grad_(False)
    torch.nn.init.normal_(backbone.final.linear.weight, std=0.3)
    torch.nn.init.normal_(backbone.final.ada[1].weight, std=0.3)
    method = build_method(cfg)
    train = make_synthetic(256, image_size=32, channels=1, seed=0)
    test = make_synthetic(64, image_size=32, channels=1, seed=1)
    fit = FitConfig(steps=30, batch_size=8, chain=3, lr=3e-3, warmup=5, log_every=100,
                    ckpt_every=100).with_overrides({"sidenet.width": 8})
    net = sidenet_for(fit, state_shapes(record_phases(method, backbone, torch.zeros(1, dtype=torch.long))), 10)
    before = heldout_error(fit, cfg, method, backbone, net, test)
    training_loop(fit, net, ChainObjective(fit, cfg, method, backbone, net, train), ckpt_root=tmp_path / "ckpt",
                  log_path=tmp_path / "log.jsonl", progress=False)
    after = heldout_error(fit, cfg, method, backbone, net, test)
    assert after < 0.95 * before, (before, after)


def test_offsets_are_signed_truncated_and_stay_in_the_phase():
    from progflow.fit_solver import draw_offsets
    from progflow.rng import BatchRandom

    tau = torch.rand(20000, dtype=torch.float64)
    h = draw_offsets(BatchRandom(0, 0, 20000, slice(None)), tau, 0.0, 1.0, 0.05, 0.3)
    assert ((tau + h) >= 0).all() and ((tau + h) <= 1).all() and h.abs().max() <= 0.3 + 1e-12
    mid = (tau > 0.35) & (tau < 0.65)  # away from the ends no flip or clip: half each way, mean size ~ scale
    assert abs(float((h[mid] > 0).double().mean()) - 0.5) < 0.03
    assert float(h[mid].abs().mean()) == pytest.approx(0.05 * (1 - 7 * math.exp(-6)) / (1 - math.exp(-6)), rel=0.06)


# ---- through the command line, base and DFM ---------------------------------------------------------------
FIT = ["--batch-size", "8", "--chain", "3", "--set", "sidenet.width=8", "--log-every", "1", "--no-progress"]


def tiny_run(root: Path, preset: str) -> Path:
    run = root / preset
    args = [a if a != "fmnist-base-xs" else preset for a in TINY]
    run_cli("train", *args, "--steps", "30", "--out", run, check=0)
    return run


_FITTED: dict = {}


def fitted_run(preset: str, tmp_path_factory) -> tuple[Path, Path]:
    """A tiny run of ``preset`` with a SideNet fitted 8 steps and 10 Euler samples (built once)."""
    if preset not in _FITTED:
        run = tiny_run(tmp_path_factory.mktemp("ba"), preset)
        run_cli("fit-solver", run, *FIT, "--steps", "8", "--ckpt-every", "4", check=0)
        samples = run.parent / "s.npz"
        run_cli("sample", run, "--solver", "euler", "--nfe", "20", "--n", "10", "--out", samples, "--no-progress",
                check=0)
        _FITTED[preset] = run, samples
    return _FITTED[preset]


@pytest.fixture(scope="module", params=["fmnist-base-xs", "fmnist-dfm-xs"])
def fitted(request, tmp_path_factory):
    return fitted_run(request.param, tmp_path_factory)


@pytest.fixture(scope="module")
def base_fitted(tmp_path_factory):
    return fitted_run("fmnist-base-xs", tmp_path_factory)


def summary(p) -> dict:
    return json.loads(p.stdout)


def test_fit_writes_solver_dir_with_backbone_hash(fitted):
    run, _ = fitted
    rec = json.loads((run / "solver" / "solver.json").read_text())
    assert rec["steps_done"] == 8 and len(rec["backbone_hash"]) == 64 and rec["fit_wall_s"] > 0
    from progflow.sampling import load_run
    from progflow.checkpoint import weights_hash

    assert rec["backbone_hash"] == weights_hash(load_run(run)[1])
    assert [json.loads(x)["step"] for x in (run / "solver" / "log.jsonl").read_text().splitlines()] == list(range(1, 9))
    assert sorted(p.name for p in (run / "solver" / "ckpt").iterdir()) == ["step_00000004", "step_00000008"]
    info = summary(run_cli("info", run, check=0))["sidenet"]
    assert info["fitted"] and info["params"] == rec["sidenet_params"]
    assert info["share_of_backbone"] == pytest.approx(rec["sidenet_params"] / rec["backbone_params"])


@pytest.mark.parametrize("solver,calls", [("ba", lambda n, phases: 2 * n - phases), ("ba1", lambda n, phases: n)])
def test_sample_with_the_fitted_solver(fitted, tmp_path, solver, calls):
    run, _ = fitted
    phases = 2 if "dfm" in run.name else 1
    for cfg_scale in ("1", "2"):
        out = tmp_path / f"{solver}{cfg_scale}.npz"
        s = summary(run_cli("sample", run, "--solver", solver, "--nfe", "6", "--cfg", cfg_scale, "--n", "20",
                            "--out", out, "--no-progress", check=0))
        assert s["nfe"] == 6 and s["sidenet_calls"] == calls(6, phases) and s["sidenet"].endswith("solver")
        with np.load(out) as f:
            assert f["images"].shape == (20, 32, 32, 1) and f["images"].std() > 0  # synthetic data: no crop


def test_edit_round_trip_and_class_change(fitted, tmp_path):
    run, samples = fitted
    errs = {}
    for solver, nfe in (("ba", "8"), ("euler", "8"), ("rk4", "40")):
        out = tmp_path / f"rt-{solver}.npz"
        s = summary(run_cli("edit", run, "--images", samples, "--solver", solver, "--nfe", nfe, "--out", out, check=0))
        assert s["nfe_inversion"] == s["nfe_generation"] == int(nfe)
        errs[solver] = s["round_trip_rms"]
        with np.load(out) as f, np.load(samples) as g:
            assert np.array_equal(f["source"], g["images"]) and np.array_equal(f["labels"], g["labels"])
    assert errs["rk4"] < 1e-3 and errs["ba"] < 0.05, errs  # inversion retraces the trajectory
    out = tmp_path / "to3.npz"
    s = summary(run_cli("edit", run, "--images", samples, "--to-class", "3", "--solver", "ba", "--nfe", "6",
                        "--cfg", "2", "--out", out, check=0))
    with np.load(out) as f:
        assert (f["labels"] == 3).all() and f["images"].shape == (10, 32, 32, 1)
        assert not np.array_equal(f["images"], f["source"])
    assert s["change_rms"] > errs["ba"] and out.with_suffix(".png").exists()


def test_fit_resumes_bit_exactly_after_sigkill(base_fitted, tmp_path):
    run, _ = base_fitted  # fits go to their own --out folders
    steps = ["--steps", "30", "--ckpt-every", "5", "--keep-last", "10"]
    ref = tmp_path / "ref"
    run_cli("fit-solver", run, *FIT, *steps, "--out", ref, check=0)
    killed = tmp_path / "killed"
    p = subprocess.Popen([sys.executable, "-m", "progflow.cli", "fit-solver", str(run), *FIT, *steps, "--out",
                          str(killed)], env=cli_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        log = killed / "log.jsonl"
        if log.exists() and len(log.read_text().splitlines()) >= 12:
            break
        time.sleep(0.02)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert not (killed / "ckpt" / "step_00000030").exists(), "the fit finished before it was killed"
    run_cli("fit-solver", run, *FIT, *steps, "--out", killed, "--resume", check=0)
    for part in ("model", "ema", "optim"):
        a = load_file(str(ref / "ckpt" / "step_00000030" / f"{part}.safetensors"))
        b = load_file(str(killed / "ckpt" / "step_00000030" / f"{part}.safetensors"))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), part
    assert [json.loads(x)["step"] for x in (killed / "log.jsonl").read_text().splitlines()] == list(range(1, 31))
    p = run_cli("fit-solver", run, *FIT, *steps, "--out", killed)  # finished fit, no --resume: refused
    assert_one_line_error(p, "--resume")


# ---- bad input: one line, exit 2, nothing written -----------------------------------------------------------
def test_bad_input(base_fitted, tmp_path):
    run, samples = base_fitted
    out = tmp_path / "x.npz"

    def refused(args, *needles):
        assert_one_line_error(run_cli(*args, "--out", out), *needles)
        assert not out.exists() and not out.with_suffix(".png").exists()

    refused(["sample", run, "--solver", "ba", "--nfe", "1", "--n", "4"], "at least 2 NFE")
    refused(["edit", run, "--images", samples, "--solver", "ba", "--nfe", "1"], "at least 2 NFE")
    refused(["edit", run, "--images", samples, "--to-class", "10"], "--to-class 10", "0..9")
    refused(["edit", run, "--images", samples, "--to-class", "-1"], "not a class")
    refused(["edit", run, "--images", samples, "--solver", "dpmpp2m", "--nfe", "6"], "dpmpp2m", "cannot")
    with np.load(samples) as f:
        images, labels = f["images"], f["labels"]
    bad = {"shape": dict(images=images[:, :20], labels=labels), "range": dict(images=images / 100.0, labels=labels),
           "dtype": dict(images=images.astype(bool), labels=labels), "labels": dict(images=images, labels=labels + 10)}
    for what, arrays in bad.items():
        f = tmp_path / f"{what}.npz"
        np.savez(f, **arrays)
        refused(["edit", run, "--images", f], str(f), {"shape": "shape", "range": "outside [0.0, 1.0]",
                                                       "dtype": "dtype", "labels": "0..9"}[what])
    refused(["edit", run, "--images", tmp_path / "missing.npz"], "does not exist")


def test_ba_refused_without_a_fit_or_with_other_weights(base_fitted, tmp_path):
    out = tmp_path / "x.npz"
    run = tmp_path / "unfitted"
    shutil.copytree(base_fitted[0], run, ignore=shutil.ignore_patterns("solver"))
    p = run_cli("sample", run, "--solver", "ba", "--nfe", "5", "--n", "4", "--out", out)
    assert_one_line_error(p, "no fitted SideNet", "fit-solver")
    run = tmp_path / "retrained"
    shutil.copytree(base_fitted[0], run)
    run_cli("train", *TINY, "--steps", "32", "--out", run, "--resume", check=0)  # new backbone weights
    for cmd in (["sample", run, "--solver", "ba1", "--nfe", "5", "--n", "4"],
                ["sample", run, "--solver", "ba", "--nfe", "5", "--n", "4", "--raw"]):
        assert_one_line_error(run_cli(*cmd, "--out", out), "fitted to other backbone weights")
    assert not out.exists()
    run_cli("sample", run, "--solver", "ba", "--nfe", "5", "--n", "4", "--out", out, "--step", "30", check=0)


def test_learned_solver_benchmark_tiny(tmp_path):
    """`bench solvers --learned` on a tiny budget: sweep, exact ceiling, cost, timing, round trips,
    and the ba / ba1 rows in the solvers JSON from the SideNet it chose."""
    out = tmp_path / "out"
    run_cli("bench", "solvers", "--tiny", "--learned", "--solvers", "ba", "ba1", "--arms", "base", "--runs-dir",
            tmp_path / "runs", "--out-dir", out, check=0, timeout=600)
    learned = json.loads((out / "solvers_learned_tiny.json").read_text())["runs"][0]
    scales = [r["offset_scale"] for r in learned["sweep"]]
    assert scales[0] == 0.0 and scales[-1].startswith("exact") and learned["chosen_offset_scale"] in scales
    assert {"fit_wall_s", "forward_ratio"} <= learned["fit_cost"].keys()
    assert learned["timing"]["cfg2"]["sidenet_per_interval_ms"] > 0
    assert {"ba", "ba1", "euler", "rk4"} <= {r["solver"] for r in learned["round_trip"]}
    assert not {"ab2", "dpmpp2m"} & {r["solver"] for r in learned["round_trip"]}
    measured = json.loads((out / "solvers_tiny.json").read_text())["runs"][0]
    assert {"ba", "ba1"} <= {r["solver"] for r in measured["endpoint"]}
    from progflow.solvers import solver_names

    assert set(measured["best_shift"]) <= set(solver_names())  # learned.json beside them is no solver
    assert (Path(learned["run"]) / "solver" / "solver.json").exists()


def test_learned_headline_profile_fits_once_and_measures_only_the_asked_cells(tmp_path):
    """On the headline arm (base-s) --learned fits one SideNet (no scale sweep, no exact ceiling,
    no round trips), and --nfes / --shifts restrict the ba cells measured."""
    out = tmp_path / "out"
    run_cli("bench", "solvers", "--tiny", "--learned", "--solvers", "ba", "--arms", "base-s", "--nfes", "4",
            "--shifts", "2", "--runs-dir", tmp_path / "runs", "--out-dir", out, check=0, timeout=600)
    learned = json.loads((out / "solvers_learned_tiny.json").read_text())["runs"][0]
    assert learned["arm"] == "base-s" and learned["round_trip"] is None
    assert [r["offset_scale"] for r in learned["sweep"]] == [0.0, 0.05] and learned["chosen_offset_scale"] == 0.05
    measured = json.loads((out / "solvers_tiny.json").read_text())
    assert measured["settings"]["shifts"] == [2.0] and measured["settings"]["only_nfes"] == [4]
    ba = [(r["nfe"], r["shift"]) for r in measured["runs"][0]["endpoint"] if r["solver"] == "ba"]
    assert ba == [(4, 2.0)]
    assert [(f["solver"], f["nfe"]) for f in measured["runs"][0]["fd"]] == [("ba", 4)]
