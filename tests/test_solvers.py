"""ODE solvers: orders measured on fields with closed-form solutions, agreement with
torchdiffeq, exact NFE counts on tensors and DFM stage lists, the CLI, bad input."""

import json
import math

import pytest
import torch

from conftest import TINY, assert_one_line_error, cli_env, run_cli
from progflow.errors import ConfigError
from progflow.schedules import time_grid
from progflow.solvers import get_solver

FIXED = {"euler": 1, "midpoint": 2, "heun": 2, "rk4": 4, "ab2": 2, "dpmpp2m": 2}


pytestmark = pytest.mark.usefixtures("one_thread")


# ---- fields with closed-form solutions --------------------------------------------------
def square_field(x, t):
    """``dx/dt = x^2``: ``x(1) = x0 / (1 - x0)``."""
    return x * x


Z_SQUARE = torch.linspace(-1.0, 0.5, 7, dtype=torch.float64)


def gaussian_field(mu: float, sigma: float):
    """Velocity ``E[x1 - x0 | x_t = x]`` for data ``x1 ~ N(mu, sigma^2)``, ``x0 ~ N(0, 1)``.

    ``x_t = t x1 + (1 - t) x0`` is Gaussian with mean ``t mu`` and variance
    ``D = t^2 sigma^2 + (1 - t)^2``; ``x1 - x0`` has mean ``mu`` and covariance
    ``t sigma^2 - (1 - t)`` with ``x_t``, so ``v = mu + (t sigma^2 - (1 - t)) / D (x - t mu)``.
    Its flow maps noise ``z`` to ``t mu + sqrt(D) z`` (differentiate to check), ending at
    ``mu + sigma z``.
    """
    def v(x, t):
        t = float(t)
        var = t * t * sigma ** 2 + (1 - t) ** 2
        return mu + (t * sigma ** 2 - (1 - t)) / var * (x - t * mu)

    return v


Z = torch.linspace(-2.0, 2.0, 9, dtype=torch.float64)


def endpoint_error(name, field, z, exact, n, shift=1.0):
    x, _ = get_solver(name).integrate(field, z.clone(), time_grid(n, shift))
    return float((x - exact).abs().max())


def slopes(errors):
    return [math.log2(a / b) for a, b in zip(errors, errors[1:])]


# ---- order of convergence ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(set(FIXED) - {"dpmpp2m"}))
@pytest.mark.parametrize("shift", [1.0, 3.0])
def test_fixed_grid_solver_reaches_its_order(name, shift):
    """Error at t = 1 on ``dx/dt = x^2`` while the intervals double; the last slope is
    the order (the shifted grid tests the variable-step forms, AB2's above all)."""
    order = FIXED[name]
    start = (4 if name == "rk4" else 16) * (4 if shift != 1.0 else 1)
    ns = [start * 2 ** k for k in range(4)]
    errs = [endpoint_error(name, square_field, Z_SQUARE, Z_SQUARE / (1 - Z_SQUARE), n, shift) for n in ns]
    assert abs(slopes(errs)[-1] - order) < 0.2, (errs, slopes(errs))


def test_ab2_and_dpmpp2m_reach_second_order_on_gaussian_data():
    mu, sigma = 1.0, 0.5
    v, exact = gaussian_field(mu, sigma), mu + sigma * Z
    ab2 = [endpoint_error("ab2", v, Z, exact, n) for n in (16, 32, 64, 128)]
    assert all(abs(s - 2) < 0.2 for s in slopes(ab2)), slopes(ab2)
    # DPM-Solver++(2M) from t = 0: its first steps span O(1) in lambda whatever N is, which
    # adds a log factor, error ~ C N^-2 log N; the slope of error / log N is the order
    ns = (64, 128, 256, 512, 1024)
    dpm = [endpoint_error("dpmpp2m", v, Z, exact, n) for n in ns]
    assert all(s > 1.65 for s in slopes(dpm)[1:]), slopes(dpm)
    corrected = slopes([e / math.log(n) for e, n in zip(dpm, ns)])
    assert all(abs(s - 2) < 0.15 for s in corrected[1:]), corrected
    assert dpm[0] < endpoint_error("euler", v, Z, exact, 64) / 5


def test_dpmpp2m_is_euler_on_three_intervals_and_at_first_order():
    """The ends of the grid (lambda = -inf at t = 0, +inf at t = 1) make steps 0, 1 and the
    last first order, and DPM-Solver++(1) is the Euler step: on 3 intervals both agree."""
    v = gaussian_field(0.3, 0.7)
    for shift in (1.0, 2.5):
        g = time_grid(3, shift)
        a, _ = get_solver("dpmpp2m").integrate(v, Z.clone(), g)
        b, _ = get_solver("euler").integrate(v, Z.clone(), g)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
        a, _ = get_solver("dpmpp2m").integrate(v, Z.clone(), time_grid(4, shift))
        b, _ = get_solver("euler").integrate(v, Z.clone(), time_grid(4, shift))
        assert (a - b).abs().max() > 1e-4  # the fourth interval's step 2 is second order


# ---- agreement with torchdiffeq ---------------------------------------------------------
def _theirs(method, field, z, grid):
    from torchdiffeq import odeint

    return odeint(lambda t, x: field(x, t), z.clone(), grid, method=method)[-1]


@pytest.mark.parametrize("ours,theirs", [("euler", "euler"), ("midpoint", "midpoint")])
def test_matches_torchdiffeq_fixed_grid(ours, theirs):
    grid = time_grid(7, 2.0)
    x, _ = get_solver(ours).integrate(square_field, Z_SQUARE.clone(), grid)
    torch.testing.assert_close(x, _theirs(theirs, square_field, Z_SQUARE, grid), rtol=0, atol=1e-13)


def test_heun_is_torchdiffeq_heun2_then_one_euler_step():
    grid = time_grid(7, 2.0)
    x, nfe = get_solver("heun").integrate(square_field, Z_SQUARE.clone(), grid)
    before_last = _theirs("heun2", square_field, Z_SQUARE, grid[:-1])
    after = before_last + float(grid[-1] - grid[-2]) * square_field(before_last, grid[-2])
    torch.testing.assert_close(x, after, rtol=0, atol=1e-13)
    assert nfe == 13


def test_rk4_is_classical_rk4_not_torchdiffeqs_three_eighths_rule():
    from torchdiffeq._impl.rk_common import rk4_step_func  # torchdiffeq's classical step

    grid = time_grid(6, 2.0)
    x = Z_SQUARE.clone()
    for k in range(6):
        x = x + rk4_step_func(lambda t, y, perturb=None: square_field(y, t), grid[k], grid[k + 1] - grid[k],
                              grid[k + 1], x)
    ours, _ = get_solver("rk4").integrate(square_field, Z_SQUARE.clone(), grid)
    torch.testing.assert_close(ours, x, rtol=0, atol=1e-13)
    # torchdiffeq's "rk4" (3/8 rule) is another fourth-order method: close, not equal, and
    # the gap shrinks at fourth order
    gaps = []
    for n in (12, 24, 48, 96):
        g = time_grid(n)
        ours, _ = get_solver("rk4").integrate(square_field, Z_SQUARE.clone(), g)
        gaps.append(float((ours - _theirs("rk4", square_field, Z_SQUARE, g)).abs().max()))
    assert gaps[0] > 1e-8 and all(s > 3.6 for s in slopes(gaps)[1:]), gaps


# ---- stage lists and NFE counts ---------------------------------------------------------
class Counted:
    def __init__(self, f):
        self.f, self.calls = f, 0

    def __call__(self, x, t):
        self.calls += 1
        return self.f(x, t)


def _two_stage_problem():
    """Stage 0 follows ``x^2``, stage 1 Gaussian data, each on its own time column."""
    gauss = gaussian_field(1.0, 0.5)
    grid = torch.stack([time_grid(6, 1.0), time_grid(6, 3.0)], dim=1)  # (7, 2): rows differ per stage

    def field(xs, t_S):
        return [square_field(xs[0], t_S[0]), gauss(xs[1], t_S[1])]

    return field, gauss, grid


@pytest.mark.parametrize("name", sorted(FIXED))
def test_stage_list_uses_per_stage_times_and_counts_nfe_exactly(name):
    field, gauss, grid = _two_stage_problem()
    spec, v = get_solver(name), Counted(field)
    xs, nfe = spec.integrate(v, [Z_SQUARE.clone(), Z.clone()], grid)
    assert nfe == v.calls == spec.nfe(6)
    # each stage exactly as if solved alone on its own column
    a, _ = spec.integrate(square_field, Z_SQUARE.clone(), grid[:, 0].contiguous())
    b, _ = spec.integrate(gauss, Z.clone(), grid[:, 1].contiguous())
    torch.testing.assert_close(xs[0], a, rtol=0, atol=1e-13)
    torch.testing.assert_close(xs[1], b, rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", sorted(FIXED))
def test_nfe_rules_are_exact_on_tensors(name):
    spec = get_solver(name)
    spendable = [spec.nfe(n) for n in range(1, 8)]
    for nfe in range(1, max(spendable) + 1):
        if nfe in spendable:
            v = Counted(square_field)
            _, used = spec.integrate(v, Z_SQUARE.clone(), time_grid(spec.intervals(nfe), 2.0))
            assert used == v.calls == nfe
        else:
            with pytest.raises(ConfigError, match=f"cannot spend exactly {nfe} NFE; it can spend|needs at least"):
                spec.intervals(nfe)
    assert spendable == {"euler": [1, 2, 3, 4, 5, 6, 7], "ab2": [1, 2, 3, 4, 5, 6, 7], "dpmpp2m": [1, 2, 3, 4, 5, 6, 7],
                         "midpoint": [2, 4, 6, 8, 10, 12, 14], "heun": [1, 3, 5, 7, 9, 11, 13],
                         "rk4": [4, 8, 12, 16, 20, 24, 28]}[name]


def test_dopri5_counts_its_nfe_follows_tolerance_and_handles_stage_lists():
    v, exact = gaussian_field(1.0, 0.5), 1.0 + 0.5 * Z
    spent = {}
    for tol in (1e-4, 1e-7, 1e-10):
        f = Counted(v)
        x, nfe = get_solver("dopri5", rtol=tol, atol=tol).integrate(f, Z.clone(), time_grid(1))
        assert nfe == f.calls > 0
        assert float((x - exact).abs().max()) < 100 * tol
        spent[tol] = nfe
    assert spent[1e-4] < spent[1e-7] < spent[1e-10]
    # a list with a bent (K + 1, S) grid: one straight piece per interval here
    field, gauss, grid = _two_stage_problem()
    f = Counted(field)
    xs, nfe = get_solver("dopri5", rtol=1e-9, atol=1e-9).integrate(f, [Z_SQUARE.clone(), Z.clone()], grid)
    assert nfe == f.calls
    torch.testing.assert_close(xs[0], Z_SQUARE / (1 - Z_SQUARE), rtol=0, atol=1e-6)
    torch.testing.assert_close(xs[1], exact, rtol=0, atol=1e-6)


@pytest.mark.parametrize("bad", [{"rtol": 0.0}, {"atol": -1e-6}, {"rtol": 0.5}, {"atol": 1e-14}, {"rtol": "x"}])
def test_dopri5_tolerances_are_checked(bad):
    with pytest.raises(ConfigError, match="dopri5 (rtol|atol) must be a number in"):
        get_solver("dopri5", **bad)


def test_unknown_solver_and_options_and_shift():
    with pytest.raises(ConfigError, match="unknown solver 'rk5'; choose from ab2, .*dopri5, dpmpp2m, euler, heun"):
        get_solver("rk5")
    with pytest.raises(ConfigError, match="solver euler takes no options; got rtol"):
        get_solver("euler", rtol=1e-3)
    for shift in (0.0, -2.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="shift must be a positive number"):
            time_grid(4, shift)


class CountingModel(torch.nn.Module):
    """A backbone wrapper counting forward calls (a guided pair is one call, one NFE)."""

    def __init__(self, net):
        super().__init__()
        self.net, self.num_classes, self.calls = net, net.num_classes, 0

    def forward(self, *args):
        self.calls += 1
        return self.net(*args)


@pytest.mark.parametrize("name", [*FIXED, "dopri5"])
def test_nfe_through_dfm_and_flow_sampling(name):
    from progflow.config import DataConfig, TrainConfig
    from progflow.methods import build_method
    from progflow.methods.dfm import DFMConfig
    from progflow.nn.dfm import DFMModelConfig
    from progflow.nn.dit import build_model
    from progflow.presets import preset_config

    tiny = {"size": "xs", "width": 32, "depth": 1, "heads": 2}
    dfm = TrainConfig(data=DataConfig(), model=DFMModelConfig(**tiny), method=DFMConfig(stages=2))
    base = preset_config("fmnist-base-xs").with_overrides({f"model.{k}": v for k, v in tiny.items()})
    y = torch.tensor([0, 1, 2])
    for cfg in (dfm, base):
        method, net = build_method(cfg), build_model(cfg)
        torch.manual_seed(0)
        for p in net.parameters():  # zero-initialised heads would make every velocity 0
            p.data.add_(0.02 * torch.randn_like(p))
        spec = get_solver(name)
        nfes = [None] if spec.adaptive else ([8, 12] if cfg is dfm else [spec.nfe(3), spec.nfe(5)])
        for nfe in nfes:
            for shift, scale in ((1.0, 1.0), (2.5, 2.0)):
                model = CountingModel(net)
                res = method.sample(model, y, generator=torch.Generator().manual_seed(0), nfe=nfe, solver=name,
                                    shift=shift, cfg_scale=scale)
                assert res.nfe == model.calls and (spec.adaptive or res.nfe == nfe)
                assert res.x.shape == (3, 1, 32, 32) and torch.isfinite(res.x).all()


def test_every_phase_gets_two_steps_when_the_budget_allows():
    """A phase enters its stage from noise at t = 0, where the velocity is least trained: one
    step there leaves the noise in (a trained DFM at 5 NFE: 0.73 RMS from 100 steps with
    (4, 1), 0.12 with (3, 2)). The proportional split is kept otherwise."""
    from progflow.schedules import split_steps

    assert split_steps(40, (3, 1)) == (30, 10) and split_steps(20, (3, 1)) == (15, 5)
    assert split_steps(5, (3, 1)) == (3, 2) and split_steps(4, (3, 1)) == (2, 2) and split_steps(6, (3, 1)) == (4, 2)
    assert split_steps(3, (3, 1)) == (2, 1)  # too few for two each: one at least
    assert split_steps(7, (3, 1, 1)) == (3, 2, 2) and split_steps(8, (1, 1, 1, 1)) == (2, 2, 2, 2)
    for weights in ((3, 1), (3, 1, 1), (1, 1, 1, 1), (1, 5)):
        n = len(weights)
        for total in range(n, 60):
            out = split_steps(total, weights)
            assert sum(out) == total
            assert min(out) >= (2 if total >= 2 * n else 1)


def test_dfm_phases_split_the_nfe_and_shift_keeps_the_phase_boundaries():
    from progflow.config import DataConfig, TrainConfig
    from progflow.methods.dfm import DecomposableFlowMatching, DFMConfig
    from progflow.nn.dfm import DFMModelConfig

    cfg = TrainConfig(data=DataConfig(), model=DFMModelConfig(size="xs"), method=DFMConfig(stages=2))
    m = DecomposableFlowMatching(cfg)  # stage_steps (30, 10)
    assert m.phase_steps(40, "euler") == (30, 10)
    assert m.phase_steps(40, "rk4") == (8, 2)  # 4 NFE per interval
    assert m.phase_steps(40, "heun") == (16, 5)  # (2 * 16 - 1) + (2 * 5 - 1)
    assert m.phase_steps(12, "midpoint") == (4, 2)  # 6 intervals: at least 2 per phase
    assert m.phase_steps(None, "dopri5") == (1, 1)
    with pytest.raises(ConfigError, match="heun cannot spend exactly 9 NFE over DFM's 2 sampling phases.*8, 10"):
        m.phase_steps(9, "heun")
    # shift: the rows a solver sees during the fine phase stay on the schedule's segment
    seen = []

    def record(velocity, x, grid, callback=None):
        seen.append(grid)
        return x, grid.shape[0] - 1

    from progflow.solvers import SolverSpec

    spec = SolverSpec("record", record, nfe=lambda n: n)

    class Zero(torch.nn.Module):
        num_classes = 10

        def forward(self, x, t, y, active):
            return [torch.zeros_like(s) for s in x]

    m.sample(Zero(), torch.tensor([0]), generator=torch.Generator().manual_seed(0), nfe=8, solver=spec, shift=3.0)
    coarse, fine = seen
    assert coarse[0].tolist() == [0.0, 0.0] and coarse[-1].tolist() == pytest.approx([0.7, 0.0])
    assert fine[0].tolist() == pytest.approx([0.7, 0.0]) and fine[-1].tolist() == [1.0, 1.0]
    steps = (fine[1:, 1] - fine[:-1, 1]).tolist()
    assert steps[0] < steps[-1]  # shift 3: small steps where the fine stage is noisiest
    torch.testing.assert_close((fine[:, 0] - 0.7) / 0.3, fine[:, 1])  # both stages on one straight line


# ---- the command line -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("solvers") / "run"
    run_cli("train", *TINY, "--steps", "3", "--set", "method.solver=heun", "--set", "method.nfe=5", "--out", run,
            check=0)
    return run


def test_every_solver_samples_a_trained_model_through_the_cli(tiny_run, tmp_path):
    import numpy as np

    for name, extra in [("euler", ["--nfe", "5"]), ("midpoint", ["--nfe", "6"]), ("heun", ["--nfe", "9", "--shift", "3"]),
                        ("rk4", ["--nfe", "8"]), ("ab2", ["--nfe", "5"]), ("dpmpp2m", ["--nfe", "5", "--shift", "2"]),
                        ("dopri5", ["--rtol", "1e-4", "--atol", "1e-4"])]:
        out = tmp_path / f"{name}.npz"
        p = run_cli("sample", tiny_run, "--solver", name, *extra, "--n", "10", "--out", out, "--no-progress", check=0)
        summary = json.loads(p.stdout)
        assert summary["solver"] == name
        if name == "dopri5":
            assert summary["nfe"] > 0 and summary["rtol"] == 1e-4
        else:
            assert summary["nfe"] == int(extra[1])
        with np.load(out, allow_pickle=False) as z:
            assert z["images"].shape == (10, 32, 32, 1) and z["images"].std() > 0  # synthetic data: no crop
    # the run's own default solver (method.solver=heun, method.nfe=5)
    p = run_cli("sample", tiny_run, "--n", "10", "--out", tmp_path / "default.npz", "--no-progress", check=0)
    assert (json.loads(p.stdout)["solver"], json.loads(p.stdout)["nfe"]) == ("heun", 5)


def test_dfm_samples_with_multi_evaluation_and_adaptive_solvers_through_the_cli(tmp_path):
    run = tmp_path / "dfm"
    dfm = [a if a != "fmnist-base-xs" else "fmnist-dfm-xs" for a in TINY]
    run_cli("train", *dfm, "--steps", "2", "--out", run, check=0)
    for name, extra, nfe in [("heun", ["--nfe", "10", "--shift", "2"], 10), ("rk4", ["--nfe", "12"], 12),
                             ("dopri5", ["--rtol", "1e-3"], None)]:
        p = run_cli("sample", run, "--solver", name, *extra, "--n", "4", "--out", tmp_path / f"{name}.npz",
                    "--no-progress", check=0)
        summary = json.loads(p.stdout)
        assert summary["solver"] == name and (summary["nfe"] == nfe if nfe else summary["nfe"] > 0)


@pytest.mark.parametrize("args,needles", [
    (["--solver", "rk5"], ["unknown solver 'rk5'", "choose from ab2, ", "dopri5, dpmpp2m, euler, heun, midpoint, rk4"]),
    (["--solver", "rk4", "--nfe", "10"], ["rk4 cannot spend exactly 10 NFE", "4, 8, 12"]),
    (["--solver", "heun", "--nfe", "8"], ["heun cannot spend exactly 8 NFE", "1, 3, 5, 7, 9"]),
    (["--shift", "0"], ["shift must be a positive number"]),
    (["--solver", "euler", "--nfe", "4", "--shift", "-1"], ["shift must be a positive number"]),
    (["--solver", "dopri5", "--rtol", "2"], ["dopri5 rtol must be a number in [1e-12, 0.1]"]),
    (["--solver", "dopri5", "--atol", "0"], ["dopri5 atol must be a number in"]),
    (["--solver", "dopri5", "--nfe", "10"], ["dopri5 is adaptive", "drop --nfe"]),
    (["--solver", "euler", "--rtol", "1e-3"], ["solver euler takes no options"]),
])
def test_bad_solver_input_is_one_line_and_writes_nothing(tiny_run, tmp_path, args, needles):
    out = tmp_path / "new" / "s.npz"
    assert_one_line_error(run_cli("sample", tiny_run, *args, "--n", "4", "--out", out), *needles)
    assert not out.parent.exists()


def test_run_config_refuses_an_unknown_solver(tmp_path):
    p = run_cli("train", *TINY, "--set", "method.solver=rk5", "--out", tmp_path / "r")
    assert_one_line_error(p, "method.solver must be one of", "dpmpp2m")
    assert not (tmp_path / "r").exists()


# ---- the benchmark, on a tiny budget ----------------------------------------------------
def test_solver_benchmark_tiny_writes_json_plots_and_resumes(tmp_path, quick_classifier_cache):
    env = cli_env(PROGFLOW_CACHE=str(quick_classifier_cache))
    args = ("bench", "solvers", "--tiny", "--out-dir", tmp_path, "--runs-dir", tmp_path / "runs")
    run_cli(*args, env=env, check=0, timeout=600)
    r = json.loads((tmp_path / "solvers_tiny.json").read_text())
    assert {"command", "machine", "date", "seed", "settings", "runs"} <= r.keys()
    assert [run["arm"] for run in r["runs"]] == ["base", "dfm2", "base-s"]
    for run in r["runs"]:
        rows = run["endpoint"]
        assert {row["solver"] for row in rows} == (set(FIXED) if run["profile"] == "full" else
                                                   {"euler", "heun", "midpoint", "ab2", "dpmpp2m"})
        for row in rows:
            spec = get_solver(row["solver"])
            assert row["rms"] >= 0 and row["ms_per_image"] > 0 and row["nfe"] in r["settings"]["nfes"]
            assert run["arm"] == "dfm2" or spec.intervals(row["nfe"])  # base: NFE the solver can spend
        assert run["reference"]["nfe"] > 0
        assert {(f["solver"], f["nfe"]) for f in run["fd"]} and all(f["fd"] > 0 for f in run["fd"])
        best = run["best_shift"]
        for f in run["fd"]:
            assert f["shift"] == best[f["solver"]][str(f["nfe"])]
        top = max(r["settings"]["fd_nfes"])  # there, only the reference solver (Euler) is scored
        assert {f["solver"] for f in run["fd"] if f["nfe"] == top} == set(r["settings"]["fd_top_solvers"])
    for plot in ("solvers_tiny_fd.png", "solvers_tiny_error.png"):
        assert (tmp_path / plot).stat().st_size > 1000
    # a second call reads every run's cached results instead of sampling again
    cache = sorted((tmp_path / "runs").rglob("bench_solvers/*.json"))
    assert len(cache) == 6 + 6 + 5 + 3 * 2  # per solver, and the reference with its check
    for run in r["runs"]:  # dopri5 at 10x the tolerance, on the same samples, lands close
        assert 0 < run["reference"]["rms_of_10x_looser"] < 1e-2
    before = [c.stat().st_mtime_ns for c in cache]
    p = run_cli(*args, env=env, check=0, timeout=600)
    assert "cached" in p.stdout and [c.stat().st_mtime_ns for c in cache] == before
    assert json.loads((tmp_path / "solvers_tiny.json").read_text())["runs"] == r["runs"]


def test_quality_benchmark_takes_a_solver_and_refuses_one_it_cannot_use(tmp_path, quick_classifier_cache):
    env = cli_env(PROGFLOW_CACHE=str(quick_classifier_cache))
    args = ("bench", "quality", "--tiny", "--out-dir", tmp_path, "--runs-dir", tmp_path / "runs")
    p = run_cli(*args, "--solver", "heun", env=env)  # tiny NFE 8: Heun spends odd NFEs on base
    assert_one_line_error(p, "arm base: solver heun cannot spend exactly 8 NFE")
    assert not (tmp_path / "runs").exists()
    run_cli(*args, "--arms", "base", "--solver", "midpoint", "--shift", "2", env=env, check=0, timeout=600)
    r = json.loads((tmp_path / "quality_tiny.json").read_text())
    assert r["settings"]["solver"] == "midpoint" and r["settings"]["shift"] == 2.0
    assert all(f["nfe"] == 8 for f in r["runs"][0]["final"])
    key = json.loads((tmp_path / "runs" / "bench-quality-tiny" / "base-seed0" / "bench_result.json").read_text())["key"]
    assert (key["solver"], key["shift"]) == ("midpoint", 2.0)  # another sampler is another cached result
