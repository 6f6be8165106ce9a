"""Stage diagnostics (progflow.diagnose and DFM's hooks) on tiny untrained or 2-step models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from progflow.errors import ProgflowError
from progflow.methods import build_method
from progflow.nn.dit import build_model
from progflow.presets import preset_config


@pytest.fixture(autouse=True)
def _one_thread(one_thread, tmp_path, monkeypatch):
    monkeypatch.setenv("PROGFLOW_CACHE", str(tmp_path / "cache"))


def tiny_dfm(**method):
    cfg = preset_config("fmnist-dfm-xs").with_overrides({"model.depth": 1, **{f"method.{k}": v for k, v in method.items()}})
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for p in model.parameters():  # the heads start at zero: give every output a say
        torch.nn.init.normal_(p, std=0.05)
    return cfg, model, build_method(cfg)


def test_oracle_receives_the_true_coarse_stage():
    cfg, model, method = tiny_dfm()
    x1 = torch.rand(4, 1, 32, 32) * 2 - 1
    y = torch.arange(4)
    views = method.stage_diagnostics(model, x1, y, generator=torch.Generator().manual_seed(0))
    assert set(views) == {"oracle_clean", "oracle_noised", "coarse_only"}
    assert all(v.shape == x1.shape and torch.isfinite(v).all() for v in views.values())
    decomp = method.decomposition
    coarse = decomp.split(x1)[0]
    assert torch.allclose(views["coarse_only"], decomp.merge([coarse, torch.zeros_like(decomp.split(x1)[1])]))
    # the backbone sees the true coarse stage: clean (t = 1) in every call of the clean oracle,
    # and noised to tau = 0.7 in the first call of the noised one
    seen = []

    class Spy(torch.nn.Module):
        num_classes = model.num_classes

        def forward(self, x, t, y, q):
            seen.append((x[0].clone(), t.clone()))
            return model(x, t, y, q)

    method.stage_diagnostics(Spy(), x1, y, generator=torch.Generator().manual_seed(0))
    steps = method.phase_steps()[-1]
    clean, noised = seen[:steps], seen[steps:]
    assert len(noised) == steps and all(torch.equal(c, coarse) and (t[:, 0] == 1).all() for c, t in clean)
    assert torch.allclose(noised[0][1][:, 0], torch.tensor(0.7)) and not torch.equal(noised[0][0], coarse)
    assert (noised[0][0] - 0.7 * coarse).std() < 0.4  # 0.3 x unit noise around 0.7 x the true stage
    # another coarse stage (same fine stage of the data, same noise) changes every view
    other = decomp.merge([coarse.flip(-1), decomp.split(x1)[1]])
    moved = method.stage_diagnostics(model, other, y, generator=torch.Generator().manual_seed(0))
    for name in views:
        assert not torch.allclose(views[name], moved[name], atol=1e-4), name


def test_noised_oracle_is_the_last_sampler_phase():
    """With the coarse stage given noised at tau, the oracle runs what sample() runs after tau."""
    cfg, model, method = tiny_dfm(stage_steps=[3, 2], nfe=5, thresholds=[0.6])
    from progflow.schedules import dfm_schedule

    rows = dfm_schedule((3, 2), (0.6,))
    assert rows[3].tolist() == [0.6, 0.0]  # where the oracle starts: coarse at tau, fine from noise
    x1 = torch.rand(2, 1, 32, 32) * 2 - 1
    a = method.stage_diagnostics(model, x1, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(3))
    b = method.stage_diagnostics(model, x1, torch.tensor([1, 2]), generator=torch.Generator().manual_seed(3))
    assert torch.equal(a["oracle_noised"], b["oracle_noised"])  # deterministic in the generator
    assert not torch.allclose(a["oracle_noised"], a["oracle_clean"])


def test_training_share_replays_the_stage_draws():
    from progflow.rng import BatchRandom

    cfg, model, method = tiny_dfm(stage_probs=[0.7, 0.3])
    share = method.training_share(40, seed=3, batch_size=16)
    assert share["samples"] == 640 and math.isclose(sum(share["active_share"]), 1.0)
    assert share["loss_share"][0] == 1.0 and share["loss_share"][1] == share["active_share"][1]
    q0 = method.draw_stage(BatchRandom(3, 0, 16, slice(None)), 16, "cpu")
    assert share["active_samples"][1] >= int((q0 == 1).sum())
    assert 0.2 < share["active_share"][1] < 0.4


def test_diagnose_run_end_to_end(tmp_path):
    from conftest import TINY

    from progflow.cli import main
    from progflow.diagnose import diagnose_run

    base = [a for a in TINY if a not in ("fmnist-base-xs",)]
    base[base.index("--preset") + 1] = "fmnist-dfm-xs"
    run = tmp_path / "run"
    assert main(["train", *base[:2], "--set", "model.depth=1", "--batch-size", "8", "--steps", "2",
                 "--ckpt-every", "2", "--sample-every", "0", "--no-progress", "--out", str(run)]) == 0
    result = diagnose_run(run, n=12, batch_size=6, progress=False)
    assert set(result["scores"]) == {"true_images", "coarse_only", "oracle_clean", "oracle_noised"}
    for scores in result["scores"].values():
        assert set(scores) >= {"fd", "precision", "recall", "density", "coverage", "class_accuracy"}
        assert all(math.isfinite(v) for v in scores.values())
    share = result["training_share"]
    assert share["steps"] == 2 and share["samples"] == 16
    assert json.loads((run / "diagnose.json").read_text())["scores"] == result["scores"]

    # bench quality attaches the diagnostics of every multi-stage run it collects: computed once,
    # then read back from RUN/diagnose.json; single-stage runs have none
    import progflow.diagnose as diag_mod
    from progflow.bench import quality
    from progflow.sampling import load_run

    cfg = load_run(run)[0]
    monkeypatch_free = diag_mod.diagnose_run
    try:
        diag_mod.diagnose_run = lambda *a, **k: pytest.fail("diagnosed again instead of reading diagnose.json")
        assert quality._diagnose(run, cfg, 10_000, None)["scores"] == result["scores"]
    finally:
        diag_mod.diagnose_run = monkeypatch_free
    (run / "diagnose.json").unlink()
    again = quality._diagnose(run, cfg, 12, None)  # n = min(1000, reference size)
    assert again["n"] == 12 and (run / "diagnose.json").exists()
    assert quality._diagnose(run, preset_config("fmnist-base-xs"), 10_000, None) is None


def test_diagnose_refuses_bad_arguments(tmp_path):
    with pytest.raises(ProgflowError, match="--n must be at least 6"):
        from progflow.diagnose import diagnose_run

        diagnose_run(tmp_path, n=2)
