"""Latent space: the autoencoder (train-ae / eval-ae), the latent cache, latent runs of base and
DFM end to end through the CLI, a locally saved diffusers AutoencoderKL, and the bad inputs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import assert_one_line_error, cli_env, kill_after_log_lines, run_cli

from progflow.presets import preset_config, preset_names

# a 4x autoencoder of 1x32x32 synthetic images: latents 4x8x8
AE_TINY = ["--preset", "fmnist-ae", "--set", "data.dataset=synthetic", "--set", "data.n=128", "--set",
           "model.width=8", "--batch-size", "8", "--log-every", "1", "--no-progress"]
LATENT = ["--set", "data.dataset=synthetic", "--set", "data.n=128", "--set", "data.channels=4", "--set",
          "data.image_size=8", "--set", "model.depth=1", "--batch-size", "8", "--log-every", "1", "--sample-every",
          "0", "--no-progress"]
ARGS = {"base": ["--preset", "fmnist-base-xs", "--set", "model.patch=2"],
        "dfm": ["--preset", "fmnist-dfm-xs", "--set", "model.patch=2", "--set", "model.stage_patches=[1,2]"],
        "flowar": ["--preset", "fmnist-flowar-xs", "--set", "model.patch=2", "--set", "method.scales=[1,2,4]"]}


@pytest.fixture(autouse=True)
def _cache(one_thread, tmp_path, monkeypatch):
    monkeypatch.setenv("PROGFLOW_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def tiny_ae(tmp_path_factory):
    ae = tmp_path_factory.mktemp("ae") / "ae"
    run_cli("train-ae", *AE_TINY, "--steps", "6", "--out", ae, check=0)
    return ae


def latent_args(kind: str, ae) -> list:
    return [*ARGS[kind], *LATENT, "--set", f"data.autoencoder={ae}"]


# ---- the network and its objective ---------------------------------------------------------
def test_every_autoencoder_and_latent_preset_has_matching_shapes():
    from progflow.methods import build_method
    from progflow.nn.dit import build_model
    from progflow.rng import BatchRandom

    aes = {n: preset_config(n) for n in preset_names() if preset_config(n).method.name == "autoencoder"}
    assert {"emoji-ae", "emoji-ae-eq", "fmnist-ae"} <= set(aes)
    for name, cfg in aes.items():
        ae = build_model(cfg).eval()
        x = torch.rand(2, *cfg.data.shape) * 2 - 1
        mean, logvar = ae.encode(x)
        side = cfg.data.image_size // 4
        assert mean.shape == logvar.shape == (2, 4, side, side), name
        assert ae.decode(mean).shape == x.shape, name
    latent_side = aes["emoji-ae"].data.image_size // 4
    latent = [n for n in preset_names() if n.startswith("emoji-latent-")]
    assert {f"emoji-latent-{m}-{s}" for m in ("base", "dfm", "flowar") for s in ("xs", "s")} <= set(latent)
    for name in latent:  # each one's network takes the latent: one training loss on a latent batch
        cfg = preset_config(name)
        z = torch.randn(2, *cfg.data.shape)
        loss, _ = build_method(cfg).loss(build_model(cfg), z, torch.tensor([0, 1]), BatchRandom(0, 0, 2, slice(None)))
        assert loss.ndim == 0 and torch.isfinite(loss), name
        assert cfg.data.shape == (4, latent_side, latent_side) and cfg.data.autoencoder == "runs/emoji-ae", name
    assert aes["emoji-ae-eq"].method.equivariance > 0 == aes["emoji-ae"].method.equivariance


def test_objective_terms_and_a_few_steps_of_fitting():
    from progflow.methods import build_method
    from progflow.nn.dit import build_model
    from progflow.rng import BatchRandom

    cfg = preset_config("fmnist-ae").with_overrides({"data.dataset": "synthetic", "model.width": 8,
                                                     "method.equivariance": 0.5})
    torch.manual_seed(0)
    ae, method = build_model(cfg), build_method(cfg)
    x = torch.nn.functional.interpolate(torch.rand(8, 1, 4, 4) * 2 - 1, size=32, mode="bilinear")  # smooth images
    rng = lambda k: BatchRandom(0, k, 8, slice(None))  # noqa: E731
    loss, stats = method.loss(ae, x, torch.zeros(8, dtype=torch.long), rng(0))
    assert set(stats) == {"rec", "kl", "equivariance"}
    total = stats["rec"] + cfg.method.kl_weight * stats["kl"] + 0.5 * stats["equivariance"]
    assert torch.allclose(loss, total)
    # the KL term of a posterior equal to the prior is zero, and positive otherwise
    with torch.no_grad():
        head = ae.encoder[-1]
        head.weight.zero_(), head.bias.zero_()
    assert float(method.loss(ae, x, torch.zeros(8, dtype=torch.long), rng(0))[1]["kl"]) == 0.0
    torch.manual_seed(0)
    ae = build_model(cfg)
    opt = torch.optim.Adam(ae.parameters(), lr=3e-3)
    first = None
    for k in range(60):
        loss, stats = method.loss(ae, x, torch.zeros(8, dtype=torch.long), rng(k))
        first = first if first is not None else float(stats["rec"])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(stats["rec"]) < 0.6 * first and float(stats["kl"]) > 0


# ---- the latent cache --------------------------------------------------------------------------
def test_latent_cache_is_rebuilt_when_the_weights_or_the_data_change(tiny_ae, tmp_path):
    from progflow.data import load_dataset
    from progflow.latent import encoded_latents, load_codec

    codec = load_codec(str(tiny_ae))
    assert codec.latent_shape == (4, 8, 8) and codec.image_shape == (1, 32, 32)
    data = load_dataset("synthetic", n=64, seed=0)
    z, cached = encoded_latents(codec, data, "train")
    assert not cached and z.shape == (64, 4, 8, 8)
    z2, cached = encoded_latents(codec, data, "train")
    assert cached and torch.equal(z, z2)
    assert torch.allclose(z, codec.encode(data.images.float() / 127.5 - 1), atol=1e-5)
    other = load_dataset("synthetic", n=64, seed=1)  # other images, same count
    _, cached = encoded_latents(codec, other, "train")
    assert not cached
    _, cached = encoded_latents(codec, data, "test")  # another split is another entry
    assert not cached
    # a cache file whose recorded key is another one is never trusted
    files = sorted((tmp_path / "cache" / "latents").glob("*.safetensors"))
    assert len(files) == 3
    from safetensors.torch import save_file

    for f in files:
        save_file({"latents": torch.zeros(64, 4, 8, 8)}, str(f), metadata={"key": "forged"})
    z3, cached = encoded_latents(codec, data, "train")
    assert not cached and torch.equal(z3, z)
    # new weights (the autoencoder trained on): a new hash, so the cache is rebuilt
    ae2 = tmp_path / "ae2"
    import shutil

    shutil.copytree(tiny_ae, ae2)
    run_cli("train-ae", *AE_TINY, "--steps", "8", "--out", ae2, "--resume", check=0)
    codec2 = load_codec(str(ae2))
    assert codec2.weights_hash != codec.weights_hash
    z4, cached = encoded_latents(codec2, data, "train")
    assert not cached and not torch.allclose(z4, z)
    # a run trained with other autoencoder weights is refused, for its data and for decoding
    from progflow.errors import ConfigError
    from progflow.latent import load_run_data, to_pixels

    cfg = preset_config("fmnist-base-xs").with_overrides({
        "data.dataset": "synthetic", "data.n": 64, "data.channels": 4, "data.image_size": 8, "model.patch": 2,
        "data.autoencoder": str(ae2), "data.latent_scale": 1.0, "data.latent_hash": codec.weights_hash})
    with pytest.raises(ConfigError, match="other weights"):
        load_run_data(cfg, "test")
    with pytest.raises(ConfigError, match="other weights"):
        to_pixels(cfg.data, torch.zeros(1, 4, 8, 8))
    ok = cfg.with_overrides({"data.latent_hash": codec2.weights_hash})
    assert load_run_data(ok, "test")[0].images.shape[1:] == (4, 8, 8)


# ---- latent runs end to end ----------------------------------------------------------------------
STEPS = ["--steps", "12", "--ckpt-every", "4", "--keep-last", "2"]


def final_weights(run, step):
    from safetensors.torch import load_file

    return load_file(str(run / "ckpt" / f"step_{step:08d}" / "model.safetensors"))


@pytest.mark.parametrize("kind", ["base", "dfm"])
def test_tiny_latent_run_trains_resumes_samples_and_scores(kind, tiny_ae, tmp_path, quick_classifier_cache):
    env = cli_env(PROGFLOW_CACHE=str(quick_classifier_cache))
    args = latent_args(kind, tiny_ae)
    ref = tmp_path / "ref"
    run_cli("train", *args, *STEPS, "--out", ref, env=env, check=0)
    saved = json.loads((ref / "config.json").read_text())["data"]
    assert saved["latent_scale"] > 0 and len(saved["latent_hash"]) == 64

    run = tmp_path / "run"  # killed after a checkpoint, resumed: identical to the uninterrupted run
    kill_after_log_lines(["train", *args, *STEPS], run, env=env)
    assert not (run / "ckpt" / "step_00000012").exists(), "the run finished before it was killed"
    run_cli("train", *args, *STEPS, "--out", run, "--resume", env=env, check=0)
    a, b = final_weights(run, 12), final_weights(ref, 12)
    assert all(torch.equal(a[k], b[k]) for k in a)

    out = tmp_path / "s.npz"
    run_cli("sample", run, "--n", "20", "--nfe", "4", "--out", out, "--no-progress", env=env, check=0)
    with np.load(out) as f:
        assert f["images"].shape == (20, 32, 32, 1)  # decoded to the autoencoder's pixels
    scores = json.loads(run_cli("eval", out, env=env, check=0).stdout)
    assert scores["n"] == 20 and scores["fd"] > 0
    # an edit runs through the autoencoder both ways: pixels in, pixels out
    images = np.load(out)["images"][:4]
    np.savez(tmp_path / "in.npz", images=images, labels=np.arange(4))
    summary = json.loads(run_cli("edit", run, "--images", tmp_path / "in.npz", "--nfe", "4", "--out",
                                 tmp_path / "e.npz", env=env, check=0).stdout)
    assert summary["n"] == 4 and np.load(tmp_path / "e.npz")["images"].shape == (4, 32, 32, 1)
    if kind == "dfm":  # stage diagnostics split the latent pyramid; their views decode to images
        from progflow.diagnose import _test_subset
        from progflow.latent import to_pixels
        from progflow.methods import build_method
        from progflow.sampling import load_run

        cfg, model, _ = load_run(run)
        z, y = _test_subset(cfg, 4, None)
        assert z.is_floating_point() and z.shape == (4, 4, 8, 8)
        views = build_method(cfg).stage_diagnostics(model, z, y, generator=torch.Generator().manual_seed(0))
        for name, v in views.items():
            assert v.shape == z.shape and to_pixels(cfg.data, v).shape == (4, 1, 32, 32), name


def test_a_tiny_latent_flowar_run_samples_decoded_images(tiny_ae, tmp_path):
    run = tmp_path / "run"  # FlowAR's scales split the 4x4 token map of the 8x8 latent
    run_cli("train", *latent_args("flowar", tiny_ae), "--steps", "2", "--out", run, check=0)
    assert json.loads((run / "config.json").read_text())["data"]["latent_scale"] > 0
    out = tmp_path / "s.npz"
    run_cli("sample", run, "--n", "4", "--nfe", "6", "--out", out, "--no-progress", check=0)
    with np.load(out) as f:
        assert f["images"].shape == (4, 32, 32, 1)  # decoded to the autoencoder's pixels


def test_eval_ae_reports_psnr_and_the_equivariance_check(tiny_ae, tmp_path):
    out = tmp_path / "e.json"
    r = json.loads(run_cli("eval-ae", tiny_ae, "--n", "16", "--out", out, "--no-progress", check=0).stdout)
    assert r["latent_shape"] == [4, 8, 8] and np.isfinite(r["psnr"]) and np.isfinite(r["psnr_half"])
    assert r["fd_reconstructions"] is None  # synthetic data: no scoring classifier
    assert json.loads(out.read_text()) == r and out.with_suffix(".png").exists()
    # by default 1,000 images, or the whole test split when it is smaller (here 128)
    r = json.loads(run_cli("eval-ae", tiny_ae, "--out", tmp_path / "d.json", "--no-progress", check=0).stdout)
    assert r["n"] == 128
    assert_one_line_error(run_cli("eval-ae", tiny_ae, "--n", "129", "--out", tmp_path / "x.json"),
                          "--n 129 exceeds the 128 test images")
    assert not (tmp_path / "x.json").exists()


# ---- a diffusers AutoencoderKL saved locally ------------------------------------------------------
def test_a_locally_saved_diffusers_autoencoder_serves_a_latent_run(tmp_path):
    diffusers = pytest.importorskip("diffusers")
    torch.manual_seed(0)
    vae = diffusers.AutoencoderKL(in_channels=1, out_channels=1, down_block_types=("DownEncoderBlock2D",) * 3,
                                  up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(8, 8, 8),
                                  layers_per_block=1, latent_channels=4, norm_num_groups=4, sample_size=32)
    folder = tmp_path / "vae"
    vae.save_pretrained(folder, safe_serialization=True)
    from progflow.latent import load_codec

    codec = load_codec(f"diffusers:{folder}")
    assert codec.latent_shape == (4, 8, 8) and codec.image_shape == (1, 32, 32)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    assert torch.allclose(codec.encode(x), vae.encode(x).latent_dist.mean, atol=1e-5)
    run = tmp_path / "run"
    run_cli("train", *latent_args("base", f"diffusers:{folder}"), "--steps", "2", "--out", run, check=0)
    run_cli("sample", run, "--n", "10", "--nfe", "2", "--no-progress", check=0)
    assert np.load(run / "samples.npz")["images"].shape == (10, 32, 32, 1)
    # a diffusers folder that is not an AutoencoderKL, and one with pickled weights only
    meta = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**meta, "_class_name": "UNet2DModel"}))
    p = run_cli("train", *latent_args("base", f"diffusers:{folder}"), "--steps", "2", "--out", tmp_path / "r2")
    assert_one_line_error(p, "holds a UNet2DModel, not an AutoencoderKL")
    assert not (tmp_path / "r2").exists()


# ---- bad input ------------------------------------------------------------------------------------
def test_latent_bad_inputs_are_one_line_errors(tiny_ae, tmp_path):
    out = tmp_path / "r"
    p = run_cli("train", *latent_args("base", tiny_ae), "--set", "data.image_size=16", "--set", "model.patch=2",
                "--steps", "2", "--out", out)  # the latent is 4x8x8
    assert_one_line_error(p, "makes latents of 4x8x8", "data.image_size=8")
    p = run_cli("train", *latent_args("base", tmp_path / "none"), "--steps", "2", "--out", out)
    assert_one_line_error(p, "does not exist")
    p = run_cli("train", *latent_args("dfm", tiny_ae), "--set", "model.stage_patches=[2,2]", "--steps", "2",
                "--out", out)  # the decomposition's coarse 4x4 stage does not fit patch 2 on the 4x4 grid
    assert p.returncode == 2 and "Traceback" not in p.stderr
    dit = tmp_path / "dit"
    run_cli("train", *latent_args("base", tiny_ae), "--steps", "2", "--out", dit, check=0)
    p = run_cli("train", *latent_args("base", dit), "--steps", "2", "--out", out)
    assert_one_line_error(p, "not an autoencoder")
    assert not out.exists()
    assert_one_line_error(run_cli("train-ae", "--preset", "fmnist-base-xs", "--out", out), "train-ae trains autoencoders")
    assert_one_line_error(run_cli("sample", tiny_ae, "--n", "2"), "does not sample")
    assert_one_line_error(run_cli("eval-ae", dit, "--n", "4"), "not an autoencoder")
    assert not out.exists()

