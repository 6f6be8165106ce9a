"""Tests for progflow.eval: metrics, the feature classifier, its file format, scoring.

Never trains the full Fashion-MNIST classifier: a CNN trained for a few dozen steps on a
small subset is enough to tell real images from noise. PROGFLOW_CACHE points at a
temporary directory so the user's cache is never touched.
"""

from __future__ import annotations

import json
import pathlib
import pickle

import numpy as np
import pytest
import torch

from progflow.data import DEFAULT_DATA_DIR, ImageData, load_fashion_mnist
from progflow.data.fmnist import FMNIST_FILES
from progflow.errors import CheckpointError, ProgflowError
from progflow.eval import (ClassifierFeatures, band_scores, class_accuracy, default_classifier_path,
                           evaluate_arrays, evaluate_npz, feature_stats, fmnist_test_images, frechet_distance,
                           get_extractor, get_fmnist_classifier, load_classifier, load_samples,
                           precision_recall, reference_stats, save_classifier, split_bands,
                           train_classifier)
from progflow.eval import evaluate as evaluate_mod
from progflow.eval import metrics as metrics_mod

FMNIST_DIR = pathlib.Path(DEFAULT_DATA_DIR)
HAVE_FMNIST = all((FMNIST_DIR / f).is_file() for pair in FMNIST_FILES.values() for f in pair)
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: with other jobs on the 2 cores, 2 spinning threads are far slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _tmp_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("PROGFLOW_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small_train():
    data = load_fashion_mnist(split="train")
    return ImageData(images=data.images[:3000], labels=data.labels[:3000], num_classes=10, crop=data.crop)


@pytest.fixture(scope="module")
def quick_model(small_train):
    """A classifier trained for 40 steps on 3000 images (a few seconds)."""
    return train_classifier(small_train, seed=0, epochs=5, batch_size=64, max_steps=40, progress=False)


@pytest.fixture(scope="module")
def test_set():
    return fmnist_test_images()


class _Boom:
    """Unpickling this creates ``marker`` -- proof that a loader executed pickle code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ---------------------------------------------------------------- metrics

def test_fd_of_gaussian_with_itself_is_zero():
    x = np.random.default_rng(0).normal(size=(2000, 16)) @ np.random.default_rng(1).normal(size=(16, 16))
    mu, sigma = feature_stats(x)
    assert mu.shape == (16,) and sigma.shape == (16, 16)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    # a shifted copy: FD = |shift|^2 exactly
    mu2, sigma2 = feature_stats(x + 2.0)
    assert frechet_distance(mu, sigma, mu2, sigma2) == pytest.approx(4.0 * 16, rel=1e-6)


def test_fd_matches_closed_form_for_diagonal_and_rotated_gaussians():
    rng = np.random.default_rng(3)
    d = 8
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2)
    assert frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-8)
    # FD is invariant under a common rotation (non-diagonal covariances, same answer)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    got = frechet_distance(q @ mu1, q @ np.diag(s1) @ q.T, q @ mu2, q @ np.diag(s2) @ q.T)
    assert got == pytest.approx(expected, rel=1e-6)


def test_fd_with_singular_covariance_is_finite():
    sig = np.diag([1.0, 0.0, 0.0])
    fd = frechet_distance(np.zeros(3), sig, np.ones(3), sig)
    assert np.isfinite(fd) and fd == pytest.approx(3.0, abs=1e-3)


def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    real = rng.normal(size=(300, 10))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    far = rng.normal(size=(200, 10)) + 100.0
    assert precision_recall(real, far, k=3) == (0.0, 0.0)
    # half the fake points are real points, half are far away: precision exactly 1/2
    mixed = np.concatenate([real[:100], far[:100]])
    p, r = precision_recall(real, mixed, k=3)
    assert p == 0.5 and 0.0 < r < 1.0
    with pytest.raises(ProgflowError):
        precision_recall(real, real[:3], k=3)


def _brute_pr(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        return np.sort(d, axis=1)[:, k]
    dfr = np.linalg.norm(fake[:, None] - real[None], axis=-1)
    p = np.mean((dfr <= radii(real)[None] + 1e-9).any(1))
    r = np.mean((dfr.T <= radii(fake)[None] + 1e-9).any(1))
    return p, r


def test_precision_recall_chunked_matches_brute_force(monkeypatch):
    rng = np.random.default_rng(5)
    real, fake = rng.normal(size=(150, 4)), rng.normal(size=(120, 4)) * 1.5 + 0.5
    expected = _brute_pr(real, fake, 3)
    monkeypatch.setattr(metrics_mod, "_CHUNK_ELEMS", 7 * 150)  # many small chunks
    got = precision_recall(real, fake, k=3)
    assert got == pytest.approx(expected)
    assert 0.0 < got[0] < 1.0 and 0.0 < got[1] < 1.0


def test_class_accuracy():
    logits = np.array([[2.0, 0.1, 0.0], [0.0, 1.0, 0.5], [0.3, 0.2, 0.1], [0.0, 0.0, 9.0]])
    assert class_accuracy(logits, np.array([0, 1, 2, 2])) == 0.75
    assert class_accuracy(logits, np.array([1, 0, 1, 0])) == 0.0
    with pytest.raises(ValueError):
        class_accuracy(logits, np.array([0, 1]))


# ---------------------------------------------------------------- classifier

@needs_fmnist
def test_classifier_training_is_deterministic(small_train):
    def train(seed):
        return train_classifier(small_train, seed=seed, batch_size=16, max_steps=3, progress=False).state_dict()

    a, b, c = train(7), train(7), train(8)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])
    # the same weights whatever the caller's thread count (the sums are ordered by it),
    # and the caller's thread count is left as it was
    torch.set_num_threads(2)
    try:
        d = train(7)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert all(torch.equal(a[key], d[key]) for key in a)


@needs_fmnist
def test_save_load_round_trip_gives_identical_logits(quick_model, test_set, tmp_path):
    path = save_classifier(quick_model, tmp_path / "clf.safetensors", test_accuracy=0.5)
    loaded = load_classifier(path)
    assert loaded.meta["format"] == "progflow-classifier" and loaded.meta["test_accuracy"] == "0.5"
    imgs = test_set[0][:200]
    f1, l1 = ClassifierFeatures(quick_model).features_and_logits(imgs)
    f2, l2 = ClassifierFeatures(loaded).features_and_logits(imgs)
    assert np.array_equal(l1, l2) and np.array_equal(f1, f2)
    assert f1.shape == (200, 128) and l1.shape == (200, 10) and f1.dtype == np.float64
    # 32x32 zero-padded frames are centre-cropped to the same 28x28 content
    padded = np.pad(imgs, ((0, 0), (2, 2), (2, 2), (0, 0)))
    assert np.array_equal(ClassifierFeatures(loaded).logits(padded), l1)
    # the "classifier:PATH" spec loads the same weights
    assert np.array_equal(get_extractor(f"classifier:{path}").logits(imgs), l1)


def test_bad_classifier_files_raise_checkpoint_error(tmp_path):
    model = train_classifier(
        ImageData(images=torch.zeros(8, 1, 28, 28, dtype=torch.uint8), labels=torch.arange(8) % 2, num_classes=2),
        max_steps=1, progress=False)
    good = save_classifier(model, tmp_path / "good.safetensors")
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    marker = tmp_path / "PWNED"
    pickled = tmp_path / "evil.safetensors"
    pickled.write_bytes(pickle.dumps({"state": _Boom(marker)}))
    torch_file = tmp_path / "torchsave.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, torch_file)
    from safetensors.torch import save_file
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    for bad in (truncated, pickled, torch_file, foreign, tmp_path / "missing.safetensors"):
        with pytest.raises(CheckpointError) as info:
            load_classifier(bad)
        msg = str(info.value)
        assert str(bad) in msg and "\n" not in msg
    assert not marker.exists(), "loading a pickle executed its payload"
    assert load_classifier(good).num_classes == 2


@needs_fmnist
def test_get_fmnist_classifier_uses_cache_and_never_retrains(quick_model, monkeypatch):
    # seed 1 has no packaged weights: it is built once and cached
    with pytest.raises(ProgflowError, match="build-classifier"):
        get_fmnist_classifier(seed=1, build_if_missing=False)
    path = save_classifier(quick_model, default_classifier_path(1))
    import progflow.eval.classifier as clf_mod
    monkeypatch.setattr(clf_mod, "train_classifier", lambda *a, **k: pytest.fail("retrained"))
    got = get_fmnist_classifier(seed=1)
    assert path.parent.name == "cache"
    assert all(torch.equal(got.state_dict()[key], v) for key, v in quick_model.state_dict().items())
    ext = get_extractor(seed=1)
    assert isinstance(ext, ClassifierFeatures) and ext.name.startswith("fmnist-classifier")


def test_packaged_classifier_is_the_one_behind_the_readme_scores(monkeypatch, tmp_path):
    import progflow.eval.classifier as clf_mod
    monkeypatch.setattr(clf_mod, "train_classifier", lambda *a, **k: pytest.fail("trained instead of loading"))
    ext = get_extractor()  # seed 0: the packaged weights, no data and no training needed
    # the feature digest that every committed FD was computed with
    results = (pathlib.Path(__file__).parent.parent / "benchmarks" / "results" / "demo_scores.json").read_text()
    assert ext.name == "fmnist-classifier-fmnist-cnn-v1-fc128-e804adaa26" and ext.name in results
    assert clf_mod.shipped_classifier_path(0).stat().st_size < 2_000_000
    # a tampered packaged file is refused, not used
    bad = tmp_path / "weights" / clf_mod.SHIPPED[0][0]
    bad.parent.mkdir()
    data = bytearray(clf_mod.shipped_classifier_path(0).read_bytes())
    data[-1] ^= 1
    bad.write_bytes(bytes(data))
    monkeypatch.setattr(clf_mod, "shipped_classifier_path", lambda seed=0: bad)
    with pytest.raises(CheckpointError, match="sha256"):
        get_extractor()


def test_get_extractor_specs(tmp_path, monkeypatch):
    with pytest.raises(ProgflowError, match="unknown feature extractor"):
        get_extractor("inception-v3")
    with pytest.raises(ProgflowError):
        get_extractor("python:no_such_module_xyz:make")
    (tmp_path / "my_feats.py").write_text(
        "import numpy as np\n"
        "class Mean:\n"
        "    name = 'pixel-moments'\n"
        "    def features(self, x):\n"
        "        x = x.astype(np.float64).reshape(len(x), -1)\n"
        "        return np.stack([x.mean(1), x.std(1), (x > 128).mean(1)], 1)\n"
        "    def logits(self, x):\n"
        "        return None\n"
        "def make():\n    return Mean()\n"
        "def bad():\n    return 3\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    ext = get_extractor("python:my_feats:make")
    assert ext.name == "pixel-moments"
    with pytest.raises(ProgflowError, match="FeatureExtractor"):
        get_extractor("python:my_feats:bad")
    rng = np.random.default_rng(0)
    real = rng.integers(0, 100, size=(200, 8, 8, 1), dtype=np.uint8)
    out = evaluate_arrays(real, np.zeros(200, np.int64), ext, ext.features(real))
    assert out["class_accuracy"] is None and out["fd"] == pytest.approx(0.0, abs=1e-6)
    assert out["features"] == "pixel-moments" and out["precision"] == 1.0


# ---------------------------------------------------------------- samples and scoring

def test_load_samples_errors_name_the_file(tmp_path):
    ok = tmp_path / "ok.npz"
    imgs = np.zeros((5, 28, 28, 1), np.uint8)
    np.savez(ok, images=imgs, labels=np.arange(5))
    got, labels = load_samples(ok)
    assert got.shape == (5, 28, 28, 1) and labels.dtype == np.int64
    assert load_samples(_write(tmp_path / "nolab.npz", images=imgs))[1] is None

    corrupt = tmp_path / "corrupt.npz"
    corrupt.write_bytes(ok.read_bytes()[:100])
    pickled = tmp_path / "pickled.npz"
    marker = tmp_path / "PWNED"
    pickled.write_bytes(pickle.dumps(_Boom(marker)))
    npy = tmp_path / "bare.npy"
    np.save(npy, imgs)
    cases = {
        tmp_path / "missing.npz": "not found",
        corrupt: "not a valid",
        pickled: "not a valid",
        npy: "not an .npz",
        _write(tmp_path / "noimages.npz", pics=imgs): "no 'images'",
        _write(tmp_path / "float.npz", images=imgs.astype(np.float32)): "uint8",
        _write(tmp_path / "ndim.npz", images=imgs[..., 0]): "(N, H, W, C)",
        _write(tmp_path / "labels.npz", images=imgs, labels=np.zeros(3, np.int64)): "labels",
        _write(tmp_path / "objects.npz", images=np.array([None, 1], dtype=object)): "not a valid",
    }
    for path, needle in cases.items():
        with pytest.raises(ProgflowError) as info:
            load_samples(path)
        msg = str(info.value)
        assert str(path) in msg and needle in msg and "\n" not in msg, msg
    assert not marker.exists()


def _write(path, **arrays):
    np.savez(path, **arrays)  # object arrays get pickled inside the npz: must be refused on load
    return path


@needs_fmnist
def test_evaluate_arrays_real_vs_noise(quick_model, test_set):
    images, labels = test_set
    ext = ClassifierFeatures(quick_model)
    ref = ext.features(images[:1000])
    same = evaluate_arrays(images[:1000], labels[:1000], ext, ref)
    held_out = evaluate_arrays(images[1000:1500], labels[1000:1500], ext, ref)
    noise_imgs = np.random.default_rng(0).integers(0, 256, size=(500, 28, 28, 1), dtype=np.uint8)
    noise = evaluate_arrays(noise_imgs, labels[:500], ext, ref)
    assert same["fd"] < 1e-6 and same["precision"] == 1.0 and same["recall"] == 1.0
    assert held_out["fd"] * 20 < noise["fd"]
    # noise features collapse to a tight clump that some real k-NN balls may cover, so
    # noise precision is not reliably ~0 with this weak classifier; recall is
    assert held_out["precision"] > max(0.8, noise["precision"])
    assert held_out["recall"] > 0.8 and noise["recall"] < 0.05
    assert held_out["class_accuracy"] > 0.5 and noise["class_accuracy"] < 0.3
    assert same["n"] == 1000 and same["reference"] == "fashion-mnist test (1000)"
    json.dumps(noise)


@needs_fmnist
def test_evaluate_npz_end_to_end_with_cached_reference(quick_model, test_set, tmp_path, monkeypatch):
    images, labels = test_set
    # a 1500-image "test set" keeps this fast; the caching logic is the same
    monkeypatch.setattr(evaluate_mod, "fmnist_test_images", lambda *a, **k: (images[:1500], labels[:1500]))
    path = tmp_path / "samples.npz"
    np.savez(path, images=images[:300], labels=labels[:300])
    ext = ClassifierFeatures(quick_model)
    out = evaluate_npz(path, extractor=ext)
    assert set(out) >= {"file", "n", "fd", "precision", "recall", "class_accuracy", "features", "reference"}
    assert out["file"] == str(path) and out["n"] == 300 and out["features"] == ext.name
    assert out["reference"] == "fashion-mnist test (1500)"
    assert 0.0 < out["precision"] <= 1.0 and out["class_accuracy"] > 0.5
    json.loads(json.dumps(out))
    cached = list((tmp_path / "cache").glob("ref-fmnist-test-*.npz"))
    assert len(cached) == 1
    # the second run reads the cached reference features instead of recomputing them
    monkeypatch.setattr(evaluate_mod, "fmnist_test_images", lambda *a, **k: pytest.fail("recomputed"))
    assert evaluate_npz(path, extractor=ext) == out
    assert reference_stats(ext).shape == (1500, 128)


@needs_fmnist
def test_band_scores_separate_blur_and_speckle(quick_model, test_set):
    images, _ = test_set
    sample, ref = images[:1000], images[1000:3000]
    coarse, fine = split_bands(sample)
    assert torch.allclose(coarse + fine, torch.from_numpy(sample).permute(0, 3, 1, 2).float(), atol=1e-3)
    ext = ClassifierFeatures(quick_model)
    held_out = band_scores(sample, ext, ref)
    assert abs(held_out["fine_rms_ratio"] - 1) < 0.05 and held_out["n"] == 1000
    # blur: the fine band shrinks
    blurred = coarse.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert band_scores(blurred, ext, ref)["fine_rms_ratio"] < 0.5
    # speckle (independent per-pixel noise): the fine band grows far more than the coarse FD
    noise = np.random.default_rng(0).integers(-60, 61, size=sample.shape)
    speckled = band_scores(np.clip(sample.astype(int) + noise, 0, 255).astype(np.uint8), ext, ref)
    assert speckled["fine_rms_ratio"] > 1.1
    assert held_out["fd_coarse"] < speckled["fd_coarse"] < evaluate_arrays(
        np.clip(sample.astype(int) + noise, 0, 255).astype(np.uint8), None, ext, ext.features(ref))["fd"]
