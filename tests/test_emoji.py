"""The 64px emoji dataset (progflow.data.emoji), its scoring classifier and the metrics added
with it, on a few emoji built here (never the network): a tiny ``emoji.json`` and RGBA PNGs
whose colour tells their category and whose transparent pixels carry green RGB.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import stat
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from progflow.data import load_dataset
from progflow.data.emoji import MARKER, fetch_emoji, load_emoji
from progflow.errors import CheckpointError, ConfigError, DataError
from progflow.eval import ClassifierFeatures
from progflow.eval.classifier import shipped_classifier_path

# category -> (colour, number of emoji); "Tiny" has 2 x 3 = 6 images < 100 and is dropped
CATEGORIES = {"Animals": ((200, 30, 30), 50), "Food": ((30, 30, 200), 55), "Tiny": ((0, 0, 0), 3)}


def _png(path: Path, colour, mode: str = "RGBA", size: int = 64) -> None:
    """A disc of ``colour`` (opaque), a half-transparent ring, and a transparent background
    whose RGB is green: compositing on white must hide the green."""
    a = np.zeros((size, size, 4), np.uint8)
    a[..., 1] = 255  # green, alpha 0
    yy, xx = np.mgrid[:size, :size]
    r = np.hypot(yy - size / 2, xx - size / 2)
    a[r < size / 4, :3], a[r < size / 4, 3] = colour, 255
    ring = (r >= size / 4) & (r < size / 4 + 3)
    a[ring, :3], a[ring, 3] = colour, 128
    img = Image.fromarray(a, "RGBA")
    path.parent.mkdir(parents=True, exist_ok=True)
    (img if mode == "RGBA" else img.convert(mode)).save(path)


def make_emoji_dir(root: Path, marker: bool = True) -> Path:
    entries, order = [], 0
    for cat, (colour, count) in CATEGORIES.items():
        for i in range(count):
            name = f"{cat.lower()}-{i:03d}.png"
            e = {"image": name, "category": cat, "sort_order": order, "unified": f"{order:04X}",
                 "has_img_twitter": True, "has_img_google": True}
            if i == 0:  # a skin-tone variant: left out by the loader
                e["skin_variations"] = {"1F3FB": {"image": f"v-{name}", "has_img_twitter": True,
                                                  "has_img_google": True}}
                for art in ("twitter", "google"):
                    _png(root / "img" / art / "64" / f"v-{name}", (255, 220, 180))
            entries.append(e)
            order += 1
            for art in ("twitter", "google"):
                _png(root / "img" / art / "64" / name, colour, mode="P" if (art == "google" and i == 1) else "RGBA")
    (root / "emoji.json").write_text(json.dumps(entries[::-1]))  # list order is not the sort order
    if marker:
        (root / MARKER).write_text(json.dumps({"version": "16.0.0"}))
    return root


@pytest.fixture(scope="module")
def emoji_dir(tmp_path_factory):
    return make_emoji_dir(tmp_path_factory.mktemp("emoji"))


# ---- loader -----------------------------------------------------------------------------------
def test_labels_split_and_variants(emoji_dir):
    train, test = load_emoji(emoji_dir, "train"), load_emoji(emoji_dir, "test")
    assert train.class_names == test.class_names == ["Animals", "Food"]  # "Tiny" dropped
    assert train.images.shape[1:] == (3, 64, 64) and train.images.dtype == torch.uint8 and train.crop is None
    # every fifth emoji of a category (by sort_order) is a test emoji; both drawings go with it
    assert len(test) == 2 * (50 // 5 + 55 // 5) and len(train) == 2 * (40 + 44)
    # the label is the category: the disc's colour at the centre
    for data in (train, test):
        centre = data.images[:, :, 32, 32]
        assert torch.equal(centre[data.labels == 0], torch.tensor([200, 30, 30], dtype=torch.uint8).expand(
            int((data.labels == 0).sum()), 3))
        assert (centre[data.labels == 1, 2] == 200).all()
    # deterministic, and the same as through load_dataset
    again = load_dataset("emoji", split="test", data_dir=emoji_dir, image_size=64, channels=3)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    # no skin-tone variant (their skin colour) anywhere
    skin = torch.tensor([255, 220, 180], dtype=torch.uint8)[:, None]
    assert not any(bool((img[:, 32, 32] == skin[:, 0]).all()) for img in torch.cat([train.images, test.images]))


def test_split_is_by_emoji(emoji_dir):
    from progflow.data.emoji import emoji_entries, emoji_split

    _, split = emoji_split(emoji_entries(emoji_dir))
    test_names = {e["image"] for e in split["test"]}
    assert not test_names & {e["image"] for e in split["train"]}
    assert "animals-004.png" in test_names and "animals-009.png" in test_names and "animals-003.png" not in test_names


def test_alpha_is_composited_on_white(emoji_dir):
    img = load_emoji(emoji_dir, "train").images[0].numpy().astype(int)  # (3, 64, 64)
    assert (img[:, 0, 0] == 255).all(), "a transparent pixel with green RGB must come out white"
    ring = img[:, 32, 32 + 17]  # alpha 128 over white: 255 - 128/255 (255 - c)
    expected = [round(c * 128 / 255 + 255 * (1 - 128 / 255)) for c in (200, 30, 30)]
    assert np.abs(ring - expected).max() <= 1


# ---- bad input --------------------------------------------------------------------------------
def _cli(*argv):
    from progflow.cli import main

    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main([str(a) for a in argv])
    _cli.stdout = out.getvalue()
    return code, err.getvalue().strip().splitlines()


def _broken(tmp_path, change) -> Path:
    root = make_emoji_dir(tmp_path / "emoji")
    change(root)
    return root


@pytest.mark.parametrize("name,change,needle", [
    ("wrong-size", lambda r: _png(r / "img/twitter/64/food-003.png", (0, 0, 0), size=32), "food-003.png is 32x32"),
    ("wrong-mode", lambda r: Image.fromarray(np.zeros((64, 64), np.uint16)).save(r / "img/google/64/food-002.png"),
     "food-002.png has mode I"),
    ("missing-image", lambda r: (r / "img/twitter/64/animals-002.png").unlink(), "animals-002.png is missing"),
    ("no-images", lambda r: [p.unlink() for p in (r / "img/google/64").iterdir()] and (r / "img/google/64").rmdir(),
     "img/google/64 does not exist"),
    ("not-a-list", lambda r: (r / "emoji.json").write_text('{"a": 1}'), "emoji.json is not an emoji list"),
    ("corrupt-json", lambda r: (r / "emoji.json").write_text('[{"image"'), "emoji.json is not a readable"),
    ("partial", lambda r: (r / MARKER).unlink(), "incomplete emoji download"),
    ("corrupt-png", lambda r: (r / "img/twitter/64/food-005.png").write_bytes(b"\x89PNG\r\n"), "food-005.png"),
])
def test_bad_data_is_one_clear_error(tmp_path, name, change, needle):
    root = _broken(tmp_path, change)
    with pytest.raises(DataError, match=None) as e:
        load_emoji(root, "train")
    assert needle in str(e.value)
    code, lines = _cli("train", "--preset", "emoji-base-xs", "--data-dir", root, "--steps", "1", "--out",
                       tmp_path / "run", "--no-progress")
    assert code == 2 and len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "run" / "ckpt").exists()


def test_missing_folder_and_wrong_shape(tmp_path):
    with pytest.raises(DataError, match="emoji data not found in .*nowhere.*make data-emoji"):
        load_emoji(tmp_path / "nowhere")
    with pytest.raises(DataError, match="64x64 RGB"):
        load_dataset("emoji", data_dir=tmp_path, image_size=32, channels=3)


# ---- fetching, with a stand-in for npm ------------------------------------------------------------
def _fake_npm(tmp_path, source: Path, fail: bool = False) -> Path:
    """An ``npm`` whose ``pack`` writes the two package tarballs built from ``source``."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    for art in ("twitter", "google"):
        with tarfile.open(tmp_path / f"emoji-datasource-{art}-16.0.0.tgz", "w:gz") as tar:
            tar.add(source / "emoji.json", "package/emoji.json")
            tar.add(source / "img" / art / "64", f"package/img/{art}/64")
    npm = tmp_path / "bin" / "npm"
    npm.parent.mkdir()
    body = "echo 'npm ERR! network ETIMEDOUT' >&2; exit 1" if fail else f"cp {tmp_path}/*.tgz ."
    npm.write_text(f"#!/bin/sh\n{body}\n")
    npm.chmod(npm.stat().st_mode | stat.S_IEXEC)
    return npm


def test_fetch_once_and_a_partial_download_is_not_complete(tmp_path, emoji_dir):
    root = tmp_path / "data" / "emoji"
    with pytest.raises(DataError, match="failed .*ETIMEDOUT"):
        fetch_emoji(root, npm=str(_fake_npm(tmp_path / "bad", emoji_dir, fail=True)), progress=lambda m: None)
    assert not root.exists() and not list(root.parent.iterdir()), "a failed fetch must leave nothing behind"
    root.mkdir()
    (root / "emoji.json").write_text("[]")  # an interrupted copy: no marker
    with pytest.raises(DataError, match="incomplete"):
        load_emoji(root)
    npm = _fake_npm(tmp_path / "good", emoji_dir)
    assert fetch_emoji(root, npm=str(npm), progress=lambda m: None) == root
    assert json.loads((root / MARKER).read_text())["images"] == {"twitter": 111, "google": 111}  # 108 emoji + 3 variants
    assert torch.equal(load_emoji(root, "test").images, load_emoji(emoji_dir, "test").images)
    npm.unlink()  # complete now: a second fetch does not call npm at all
    fetch_emoji(root, npm=str(npm), progress=lambda m: None)


def test_fetch_without_npm_says_so(tmp_path):
    with pytest.raises(DataError, match="npm is not installed"):
        fetch_emoji(tmp_path / "e", npm=str(tmp_path / "no-npm-here"), progress=lambda m: None)


# ---- presets and the patch dimension -------------------------------------------------------------
def test_presets_patch_dimension_and_refusal():
    from progflow.presets import preset_config

    cfg = preset_config("emoji-dfm-xs")
    assert (cfg.data.image_size, cfg.data.channels, cfg.model.patch, cfg.model.stage_patches) == (64, 3, 4, (2, 4))
    code, _ = _cli("info", "emoji-dfm-xs")
    info = json.loads(_cli.stdout)
    assert code == 0 and (info["width"], info["patch_dim"], info["tokens"]) == (64, 48, 256)
    with pytest.raises(ConfigError, match="a token carries 192 numbers .* model.width is 64"):
        cfg.with_overrides({"model.patch": 8, "model.stage_patches": [4, 8]})
    preset_config("emoji-base-s").with_overrides({"model.patch": 8})  # 192 numbers, width 192: accepted
    code, lines = _cli("train", "--preset", "emoji-base-xs", "--set", "model.patch=8", "--out", "/nonexistent/x")
    assert code == 2 and len(lines) == 1 and "192 numbers" in lines[0]


# ---- scoring --------------------------------------------------------------------------------------
def test_emoji_classifier_shapes_and_file_round_trip(tmp_path, emoji_dir):
    from progflow.eval import ClassifierFeatures, load_classifier, save_classifier, train_classifier
    from progflow.eval.emoji import EMOJI_ARCH

    torch.set_num_threads(1)
    data = load_emoji(emoji_dir, "train")
    model = train_classifier(data, seed=0, batch_size=16, max_steps=3, progress=False, arch=EMOJI_ARCH)
    assert sum(p.numel() for p in model.parameters()) * 4 < 1_000_000  # ships in the package
    path = save_classifier(model, tmp_path / "c.safetensors")
    feats = ClassifierFeatures(load_classifier(path))
    images = load_emoji(emoji_dir, "test").images.permute(0, 2, 3, 1).numpy()
    f, logits = feats.features_and_logits(images)
    assert f.shape == (len(images), 128) and logits.shape == (len(images), 2) and np.isfinite(f).all()
    assert feats.name.startswith("emoji-classifier-emoji-cnn-v1-fc128-")


def test_shipped_emoji_classifier_matches_its_hash():
    from progflow.eval.emoji import SHIPPED_EMOJI, get_emoji_classifier

    assert 0 in SHIPPED_EMOJI  # seed 0 ships, like the Fashion-MNIST classifier
    model = get_emoji_classifier(0)
    assert model.num_classes == 9 and float(model.meta["test_accuracy"]) > 0.5
    path = shipped_classifier_path(0, SHIPPED_EMOJI)
    assert path.stat().st_size < 2_000_000 and ClassifierFeatures(model).name.startswith("emoji-classifier-emoji-cnn")


def test_tampered_packaged_emoji_classifier_is_refused(tmp_path, monkeypatch):
    import progflow.eval.emoji as emoji_mod

    data = bytearray(shipped_classifier_path(0, emoji_mod.SHIPPED_EMOJI).read_bytes())
    data[-1] ^= 1
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "bad.safetensors").write_bytes(bytes(data))
    import progflow.eval.classifier as clf_mod

    monkeypatch.setattr(clf_mod, "__file__", str(tmp_path / "classifier.py"))  # the weights folder it looks in
    monkeypatch.setattr(emoji_mod, "SHIPPED_EMOJI", {0: ("bad.safetensors", emoji_mod.SHIPPED_EMOJI[0][1])})
    with pytest.raises(CheckpointError, match="sha256"):
        emoji_mod.get_emoji_classifier(0)


def test_density_coverage_known_values():
    from progflow.eval.metrics import density_coverage

    real = np.array([[0.0], [1.0], [2.0], [3.0]])  # 1-NN radii: 1 each
    # 0.5 lies in the balls of 0 and 1, 10 in none: density (2 + 0) / (1 * 2) = 1, coverage 2 of 4 balls
    assert density_coverage(real, np.array([[0.5], [10.0]]), k=1) == (1.0, 0.5)
    # a collapsed fake set (every point the same) covers one ball's neighbourhood only
    rng = np.random.default_rng(0)
    real = rng.normal(size=(400, 4))
    d, c = density_coverage(real, np.repeat(real[:1], 300, axis=0), k=5)
    assert c < 0.05
    d, c = density_coverage(real, rng.normal(size=(400, 4)), k=5)
    assert 0.7 < d < 1.3 and c > 0.85


def test_class_mix_weights_match_the_samples():
    from progflow.eval.evaluate import class_mix_weights
    from progflow.eval.metrics import feature_stats

    ref_labels = np.array([0, 0, 0, 1])
    assert class_mix_weights(np.array([0, 1]), np.array([1, 0])) is None  # same mix: no weights
    w = class_mix_weights(ref_labels, np.array([0, 1]))
    assert np.allclose(w / w.sum(), [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    feats = np.array([[0.0], [0.0], [0.0], [2.0]])
    assert feature_stats(feats, w)[0][0] == pytest.approx(1.0)  # balanced mean of 0 and 2


def test_quality_benchmark_on_emoji(tmp_path, emoji_dir):
    """`bench quality --dataset emoji`: the emoji arms, scored with the emoji classifier against
    the emoji test split (here the fixture's), into a file and runs folder of their own."""
    from conftest import cli_env, run_cli

    env = cli_env(PROGFLOW_CACHE=str(tmp_path / "cache"))
    run_cli("bench", "quality", "--dataset", "emoji", "--tiny", "--out-dir", tmp_path, "--runs-dir", tmp_path / "runs",
            "--data-dir", emoji_dir, env=env, check=0, timeout=600)
    r = json.loads((tmp_path / "quality_emoji_tiny.json").read_text())
    assert r["settings"]["dataset"] == "emoji" and {x["arm"] for x in r["runs"]} == {"base", "dfm2", "flowar"}
    assert {p.name for p in (tmp_path / "runs" / "bench-quality-emoji-tiny").iterdir()} == {"base-seed0", "dfm2-seed0",
                                                                                           "flowar-seed0"}
    for run in r["runs"]:
        assert run["preset"].startswith("emoji-") and all(math.isfinite(f["fd"]) for f in run["final"])
    assert set(r["step_time"]["ratio_to_base"]) == {"base", "dfm2", "flowar"}
    cached = json.loads((tmp_path / "runs" / "bench-quality-emoji-tiny" / "base-seed0" / "bench_result.json").read_text())
    assert cached["key"]["features"].startswith("emoji-classifier-emoji-cnn-v1")
    # the reference is the fixture's emoji test split, cached under the emoji name
    assert list((tmp_path / "cache").glob("ref-emoji-test-emoji-classifier-*.npz"))


def test_quality_benchmark_latent_arms_on_emoji(tmp_path, emoji_dir):
    """`bench quality --dataset emoji --arms base-latent dfm2-latent-eq`: each autoencoder trains
    once and is scored, the latent arms train at the pixel base's FLOPs (more steps) on its latents."""
    from conftest import cli_env, run_cli

    env = cli_env(PROGFLOW_CACHE=str(tmp_path / "cache"))
    run_cli("bench", "quality", "--dataset", "emoji", "--tiny", "--arms", "base-latent", "dfm2-latent-eq",
            "--out-dir", tmp_path, "--runs-dir", tmp_path / "runs", "--data-dir", emoji_dir, env=env, check=0,
            timeout=600)
    r = json.loads((tmp_path / "quality_emoji_tiny.json").read_text())
    assert set(r["autoencoders"]) == {"emoji-ae", "emoji-ae-eq"}
    assert all(np.isfinite(a["psnr"]) and a["latent_shape"] == [4, 16, 16] for a in r["autoencoders"].values())
    runs = {x["arm"]: x for x in r["runs"]}
    assert set(runs) == {"base-latent", "dfm2-latent-eq"}
    root = tmp_path / "runs" / "bench-quality-emoji-tiny"
    assert runs["base-latent"]["autoencoder"] == str(root / "emoji-ae")
    assert runs["dfm2-latent-eq"]["autoencoder"] == str(root / "emoji-ae-eq")
    assert all(x["train_steps"] > r["settings"]["steps"] for x in runs.values())  # a quarter of the tokens
    assert all(np.isfinite(f["fd"]) for x in runs.values() for f in x["final"])
    # a latent arm's sampling cost is its solve's plus its decoder's, once per image
    from progflow.bench.arms import LATENT_ARMS, _config
    from progflow.bench.quality import _sample_cost

    s = r["settings"]
    for arm, ae in (("base-latent", "emoji-ae"), ("dfm2-latent-eq", "emoji-ae-eq")):
        cost = r["summary"][arm]["sample_cost"]
        solve = _sample_cost(_config(LATENT_ARMS[arm][0], {}, s["seeds"][0], s, True), s)["gflop"]
        assert cost["decode_gflop"] == r["autoencoders"][ae]["decode_gflop"] > 0
        assert cost["gflop"] == pytest.approx(solve + cost["decode_gflop"])
