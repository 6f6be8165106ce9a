"""The command line as a user runs it: help, bad input (one line, exit 2), sampling output."""

import gzip
import json
import shutil
import struct

import numpy as np
import pytest
from PIL import Image

from conftest import TINY, assert_one_line_error, cli_env, run_cli


def test_help_explains_each_command():
    p = run_cli("--help", check=0)
    for cmd in ("train", "sample", "eval", "build-classifier", "info", "bench", "demo"):
        assert cmd in p.stdout
    p = run_cli("train", "--help", check=0)
    for flag in ("--preset", "--resume", "--steps", "--batch-size", "--set", "--data-dir", "--bf16"):
        assert flag in p.stdout


@pytest.mark.parametrize("args,needles", [
    (["--steps", "-5"], ["steps must be positive"]),
    (["--set", "model.patch=5"], ["not divisible by model.patch"]),
    (["--preset", "fmnist-dfm-xs", "--set", "method.stage_probs=[0.5,0.6]"], ["sum to 1"]),
    (["--set", "method.stages=2"], ["unknown config field", "method.stages"]),  # a DFM field on plain flow
    (["--set", "method.name=nosuch"], ["method.name must be one of", "dfm", "flow"]),
    (["--set", "model.arch=nosuch"], ["model.arch must be one of", "dit"]),
    (["--set", "model.nonsense=1"], ["unknown config field", "model.nonsense"]),
    (["--set", "method.cfg_interval=[0.9,0.1]"], ["cfg_interval"]),
])
def test_invalid_config_values(tmp_path, args, needles):
    p = run_cli("train", *TINY, *args, "--out", tmp_path / "r")
    assert_one_line_error(p, *needles)
    assert not (tmp_path / "r").exists()  # rejected before anything was written


def test_unknown_preset(tmp_path):
    assert_one_line_error(run_cli("train", "--preset", "nope", "--out", tmp_path / "r"), "unknown preset", "nope")


def test_missing_dataset_names_the_folder(tmp_path):
    env = cli_env(PROGFLOW_DATA=str(tmp_path / "nowhere"))
    p = run_cli("train", "--preset", "fmnist-base-xs", "--steps", "1", "--out", tmp_path / "r", env=env)
    assert_one_line_error(p, "Fashion-MNIST not found", "nowhere", "dataset-fashion-mnist")


def test_corrupt_idx_names_the_file(tmp_path):
    from progflow.data import DEFAULT_DATA_DIR

    d = tmp_path / "fm"
    shutil.copytree(DEFAULT_DATA_DIR, d)
    (d / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(struct.pack(">I", 2051) + b"\x00" * 10))
    p = run_cli("train", "--preset", "fmnist-base-xs", "--steps", "1", "--data-dir", d, "--out", tmp_path / "r")
    assert_one_line_error(p, "train-images-idx3-ubyte.gz")


def test_unreadable_image_in_folder_dataset(tmp_path):
    root = tmp_path / "imgs"
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")
    (root / "b" / "broken.png").write_bytes(b"not a png at all")
    p = run_cli("train", *TINY, "--set", "data.dataset=folder", "--data-dir", root, "--set", "data.num_classes=2",
                "--set", "data.channels=3", "--out", tmp_path / "r")
    assert_one_line_error(p, "broken.png")


def test_train_sample_writes_balanced_cropped_npz_and_grid(tmp_path):
    run = tmp_path / "run"
    run_cli("train", *TINY, "--steps", "3", "--out", run, check=0)
    out = tmp_path / "s.npz"
    p = run_cli("sample", run, "--n", "20", "--nfe", "3", "--cfg", "2.0", "--seed", "1", "--out", out,
                "--batch-size", "8", "--no-progress", check=0)
    summary = json.loads(p.stdout)
    assert summary["nfe"] == 3 and summary["n"] == 20
    with np.load(out, allow_pickle=False) as z:
        images, labels = z["images"], z["labels"]
    assert images.dtype == np.uint8 and images.shape == (20, 32, 32, 1)  # synthetic: no crop
    assert np.bincount(labels, minlength=10).tolist() == [2] * 10
    assert out.with_suffix(".png").exists()
    # same seed, same samples; the batch size does not matter for the labels
    out2 = tmp_path / "s2.npz"
    run_cli("sample", run, "--n", "20", "--nfe", "3", "--cfg", "2.0", "--seed", "1", "--out", out2,
            "--batch-size", "8", "--no-progress", check=0)
    with np.load(out2) as z:
        assert np.array_equal(z["images"], images)
    assert_one_line_error(run_cli("sample", run, "--n", "0"), "--n must be positive")


def test_dfm_sampling_writes_preview_strips(tmp_path):
    run = tmp_path / "dfm"
    run_cli("train", *TINY[:2], "--preset", "fmnist-dfm-xs", *TINY[2:], "--steps", "2", "--out", run, check=0)
    out = tmp_path / "d.npz"
    p = run_cli("sample", run, "--n", "3", "--nfe", "4", "--out", out, "--previews", "--no-progress", check=0)
    summary = json.loads(p.stdout)
    assert summary["nfe"] == 4
    strips = sorted((tmp_path / "d_previews").glob("*.png"))
    assert len(strips) == 3
    w, h = Image.open(strips[0]).size
    assert w > 2 * h  # coarse-to-fine partial results side by side, then the final sample


def test_video_run_writes_npz_and_gif(tmp_path):
    run = tmp_path / "vid"
    run_cli("train", "--preset", "mfmnist-base-xs", "--set", "data.n=16", "--set", "model.depth=1", "--steps", "2",
            "--batch-size", "4", "--sample-every", "0", "--no-progress", "--out", run, check=0)
    out = tmp_path / "v.npz"
    run_cli("sample", run, "--n", "2", "--nfe", "2", "--out", out, "--no-progress", check=0)
    with np.load(out) as z:
        assert z["images"].shape == (2, 8, 32, 32, 1) and z["images"].dtype == np.uint8
    gif = Image.open(out.with_suffix(".gif"))
    assert gif.n_frames == 8
