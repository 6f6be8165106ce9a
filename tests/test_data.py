"""Tests for progflow.data: loaders, corrupt inputs, toy datasets, video, I/O."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct

import numpy as np
import pytest
import torch
from PIL import Image

from progflow.data import (DATASET_KINDS, DEFAULT_DATA_DIR, FMNIST_CLASSES, ImageData, center_crop,
                           find_data_dir, load_dataset, load_fashion_mnist, load_image_folder,
                           make_moving_fmnist, make_synthetic, output_crop, read_idx, save_grid_png,
                           save_video, to_model_range, to_uint8)
from progflow.data.fmnist import FMNIST_FILES
from progflow.data.video import bouncing_paths, item_size_for
from progflow.errors import DataError

FMNIST_DIR = pathlib.Path(DEFAULT_DATA_DIR)
HAVE_FMNIST = all((FMNIST_DIR / f).is_file() for pair in FMNIST_FILES.values() for f in pair)
needs_fmnist = pytest.mark.skipif(not HAVE_FMNIST, reason="Fashion-MNIST not installed")


def idx_bytes(arr: np.ndarray, dtype_code: int = 0x08) -> bytes:
    header = bytes([0, 0, dtype_code, arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def write_fake_fmnist(d: pathlib.Path, n_train: int = 6, n_test: int = 4, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        imgs = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labs = (np.arange(n) % 10).astype(np.uint8)
        img_f, lab_f = FMNIST_FILES[split]
        (d / img_f).write_bytes(gzip.compress(idx_bytes(imgs)))
        (d / lab_f).write_bytes(gzip.compress(idx_bytes(labs)))
        data[split] = (imgs, labs)
    return data


@pytest.fixture(scope="module")
def fmnist_test() -> ImageData:
    return load_fashion_mnist(split="test")


# ----------------------------------------------------------------------------- base


def test_model_range_round_trip_exact():
    u8 = torch.arange(256, dtype=torch.uint8).reshape(1, 1, 16, 16)
    x = to_model_range(u8)
    assert x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.equal(to_uint8(x), u8)
    # clamping and rounding
    assert to_uint8(torch.tensor([-3.0, 5.0, 0.0])).tolist() == [0, 255, 128]
    assert to_uint8(to_model_range(torch.tensor([100])) + 0.4 / 127.5).item() == 100


def test_center_crop_any_leading_axes():
    x = torch.arange(2 * 3 * 4 * 8 * 8).reshape(2, 3, 4, 8, 8)
    c = center_crop(x, (4, 6))
    assert c.shape == (2, 3, 4, 4, 6)
    assert torch.equal(c, x[..., 2:6, 1:7])
    assert center_crop(x, None) is x
    with pytest.raises(ValueError):
        center_crop(x, (9, 2))


def test_imagedata_basics():
    d = ImageData(torch.zeros(3, 1, 4, 4, dtype=torch.uint8), torch.tensor([0, 1, 0]), 2, None, [])
    assert len(d) == 3 and not d.is_video and d.class_names == ["0", "1"]
    v = ImageData(torch.zeros(2, 1, 3, 4, 4, dtype=torch.uint8), torch.tensor([0, 1]), 2, None, ["a", "b"])
    assert v.is_video
    with pytest.raises(ValueError):
        ImageData(torch.zeros(3, 1, 4, 4), torch.tensor([0, 1, 0]), 2, None, [])


# ----------------------------------------------------------------------------- fmnist


@needs_fmnist
def test_real_fmnist_train_shapes():
    d = load_fashion_mnist(split="train")
    assert d.images.shape == (60000, 1, 32, 32) and d.images.dtype == torch.uint8
    assert d.labels.shape == (60000,) and d.labels.dtype == torch.int64
    assert torch.equal(torch.bincount(d.labels), torch.full((10,), 6000))
    assert d.crop == (28, 28) and d.num_classes == 10 and d.class_names == FMNIST_CLASSES


@needs_fmnist
def test_real_fmnist_padding_and_content(fmnist_test):
    d = fmnist_test
    assert d.images.shape == (10000, 1, 32, 32)
    assert 0 <= d.labels.min() and d.labels.max() == 9
    raw = read_idx(FMNIST_DIR / "t10k-images-idx3-ubyte.gz")
    raw_labels = read_idx(FMNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert raw.shape == (10000, 28, 28)
    assert torch.equal(center_crop(d.images, d.crop)[:, 0], torch.from_numpy(raw))
    assert torch.equal(d.labels, torch.from_numpy(raw_labels.astype(np.int64)))
    border = d.images.clone()
    border[..., 2:30, 2:30] = 0
    assert border.sum() == 0
    assert d.images[..., 2:30, 2:30].float().mean() > 30  # content really is there


def test_find_data_dir_precedence(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    write_fake_fmnist(a)
    write_fake_fmnist(b)
    monkeypatch.setenv("PROGFLOW_DATA", str(b))
    assert find_data_dir(a) == a
    assert find_data_dir() == b
    monkeypatch.delenv("PROGFLOW_DATA")
    if HAVE_FMNIST:
        assert find_data_dir() == pathlib.Path(DEFAULT_DATA_DIR)
    else:
        with pytest.raises(DataError, match=DEFAULT_DATA_DIR):
            find_data_dir()
    # explicit arg that is missing must not fall back to env/default
    monkeypatch.setenv("PROGFLOW_DATA", str(b))
    with pytest.raises(DataError):
        find_data_dir(tmp_path / "nowhere")


def test_find_data_dir_error_message(tmp_path, monkeypatch):
    d = tmp_path / "partial"
    write_fake_fmnist(d)
    (d / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as e:
        find_data_dir(d)
    msg = str(e.value)
    assert "\n" not in msg
    assert f"Fashion-MNIST not found in {d}" in msg
    assert "missing t10k-labels-idx1-ubyte.gz" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "PROGFLOW_DATA" in msg
    monkeypatch.setenv("PROGFLOW_DATA", str(tmp_path / "empty"))
    with pytest.raises(DataError, match="missing train-images-idx3-ubyte.gz"):
        find_data_dir()


def test_load_fake_fmnist_sizes(tmp_path):
    data = write_fake_fmnist(tmp_path, n_train=5, n_test=3)
    d = load_fashion_mnist(tmp_path, split="test", image_size=32)
    assert d.images.shape == (3, 1, 32, 32) and d.labels.tolist() == [0, 1, 2]
    assert torch.equal(d.images[:, 0, 2:30, 2:30], torch.from_numpy(data["test"][0]))
    odd = load_fashion_mnist(tmp_path, split="train", image_size=29)  # odd padding
    assert torch.equal(center_crop(odd.images, (28, 28))[:, 0], torch.from_numpy(data["train"][0]))
    with pytest.raises(DataError):
        load_fashion_mnist(tmp_path, image_size=16)


def test_read_idx_plain_and_gzip(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "plain.idx").write_bytes(idx_bytes(arr))
    (tmp_path / "z.idx.gz").write_bytes(gzip.compress(idx_bytes(arr)))
    assert np.array_equal(read_idx(tmp_path / "plain.idx"), arr)
    assert np.array_equal(read_idx(tmp_path / "z.idx.gz"), arr)


@pytest.mark.parametrize(
    "case",
    ["bad_magic", "bad_dtype", "truncated", "extra", "not_gzip", "bad_gzip", "empty", "missing"],
)
def test_read_idx_corrupt(tmp_path, case):
    arr = np.zeros((4, 28, 28), dtype=np.uint8)
    good = idx_bytes(arr)
    p = tmp_path / f"{case}-images-idx3-ubyte.gz"
    content = {
        "bad_magic": gzip.compress(b"\x12\x34" + good[2:]),
        "bad_dtype": gzip.compress(idx_bytes(arr, dtype_code=0x0D)),
        "truncated": gzip.compress(good[:-10]),
        "extra": gzip.compress(good + b"\x00\x01"),
        "not_gzip": b"PK\x03\x04 this is a zip, not an IDX file at all",
        "bad_gzip": gzip.compress(good)[:40],
        "empty": b"",
        "missing": None,
    }[case]
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(DataError) as e:
        read_idx(p)
    assert p.name in str(e.value) and "\n" not in str(e.value)


def test_fmnist_count_mismatch(tmp_path):
    write_fake_fmnist(tmp_path, n_train=5)
    labels = np.zeros(4, dtype=np.uint8)
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz"):
        load_fashion_mnist(tmp_path, split="train")
    # wrong image count in header vs data (header says 7, data holds 5) -> truncated
    imgs = np.zeros((5, 28, 28), dtype=np.uint8)
    bad = bytes([0, 0, 8, 3]) + struct.pack(">3I", 7, 28, 28) + imgs.tobytes()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(bad))
    with pytest.raises(DataError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist(tmp_path, split="train")


# ----------------------------------------------------------------------------- folder


def _write_folder(root: pathlib.Path) -> dict:
    rng = np.random.default_rng(0)
    expected = {}
    for cls, n in (("zebra", 2), ("apple", 3)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            arr = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            Image.fromarray(arr, "RGB").save(root / cls / f"{i}.png")
            expected[(cls, i)] = arr
    (root / "apple" / "notes.txt").write_text("not an image")
    return expected


def test_image_folder_round_trip(tmp_path):
    expected = _write_folder(tmp_path)
    d = load_image_folder(tmp_path, image_size=8, channels=3)
    assert d.class_names == ["apple", "zebra"] and d.num_classes == 2 and d.crop is None
    assert d.images.shape == (5, 3, 8, 8) and d.images.dtype == torch.uint8
    assert d.labels.tolist() == [0, 0, 0, 1, 1]
    assert np.array_equal(d.images[0].permute(1, 2, 0).numpy(), expected[("apple", 0)])
    assert np.array_equal(d.images[4].permute(1, 2, 0).numpy(), expected[("zebra", 1)])
    g = load_image_folder(tmp_path, image_size=4, channels=1)
    assert g.images.shape == (5, 1, 4, 4)


def test_image_folder_resize_shorter_side_then_crop(tmp_path):
    (tmp_path / "c").mkdir()
    arr = np.zeros((10, 30, 3), dtype=np.uint8)
    arr[:, 10:20] = 255  # white middle third, black sides
    Image.fromarray(arr).save(tmp_path / "c" / "wide.jpg", quality=95)
    d = load_image_folder(tmp_path, image_size=5, channels=1)
    assert d.images.shape == (1, 1, 5, 5)
    assert d.images.float().mean() > 200  # only the white centre survives the crop


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope", 8)
    with pytest.raises(DataError, match="no class"):
        load_image_folder(tmp_path, 8)
    (tmp_path / "cls").mkdir()
    (tmp_path / "cls" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="no images"):
        load_image_folder(tmp_path, 8)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "cls" / "ok.png")
    bad = tmp_path / "cls" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n garbage garbage")
    with pytest.raises(DataError) as e:
        load_image_folder(tmp_path, 8)
    assert "broken.png" in str(e.value) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_determinism_and_shapes():
    a = make_synthetic(64, image_size=16, channels=3, seed=3)
    b = make_synthetic(64, image_size=16, channels=3, seed=3)
    c = make_synthetic(64, image_size=16, channels=3, seed=4)
    assert a.images.shape == (64, 3, 16, 16) and a.images.dtype == torch.uint8
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert a.labels.tolist() == [i % 10 for i in range(64)]
    assert a.crop is None and a.num_classes == 10


def test_synthetic_classes_separable():
    d = make_synthetic(1000, image_size=32, channels=1, seed=0)
    x = d.images.float().flatten(1)
    means = torch.stack([x[d.labels == c].mean(0) for c in range(10)])
    # nearest-class-mean classifier on fresh samples is almost perfect
    t = make_synthetic(500, image_size=32, channels=1, seed=1)
    xt = t.images.float().flatten(1)
    pred = torch.cdist(xt, means).argmin(1)
    assert (pred == t.labels).float().mean() > 0.95
    dists = torch.cdist(means, means) + torch.eye(10) * 1e9
    assert dists.min() > 300  # every pair of class means differs clearly


# ----------------------------------------------------------------------------- video


def _square_source(n: int = 4) -> ImageData:
    """Uniform 28x28 items (item i has value 60 + 40 i, label i) padded to 32x32."""
    imgs = torch.zeros(n, 1, 32, 32, dtype=torch.uint8)
    for i in range(n):
        imgs[i, :, 2:30, 2:30] = 60 + 40 * i
    return ImageData(imgs, torch.arange(n), n, (28, 28), [])


def _centroids(v: torch.Tensor) -> torch.Tensor:
    """(N, 1, T, H, W) -> (N, T, 2) centre (y, x) of the lit pixels."""
    w = (v[:, 0] > 0).float()
    r = torch.arange(v.shape[-1]).float()
    tot = w.sum((-1, -2))
    return torch.stack([(w.sum(-1) * r).sum(-1) / tot, (w.sum(-2) * r).sum(-1) / tot], -1)


def test_moving_shapes_and_determinism():
    src = _square_source()
    a, b, c = (make_moving_fmnist(src, 20, frames=6, size=32, seed=s) for s in (5, 5, 6))
    assert a.images.shape == (20, 1, 6, 32, 32) and a.images.dtype == torch.uint8
    assert a.is_video and a.crop is None and a.labels.dtype == torch.int64
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert make_moving_fmnist(src, 3, frames=2, size=64).images.shape == (3, 1, 2, 64, 64)


def test_moving_items_inside_and_moving():
    d = make_moving_fmnist(_square_source(), 50, frames=8, size=32, max_items=1, seed=0)
    # one 16x16 item per frame, never clipped by the frame edge
    assert torch.all((d.images > 0).sum(dim=(1, 3, 4)) == 16 * 16)
    steps = _centroids(d.images).diff(dim=1)
    assert steps.abs().sum() > 100  # items actually move
    # label = class of the (only) item, whose value identifies it
    assert torch.equal(d.images.amax(dim=(1, 2, 3, 4)).long(), 60 + 40 * d.labels)


def test_moving_bounces():
    d = make_moving_fmnist(_square_source(1), 10, frames=40, size=32, max_items=1, seed=1)
    steps = torch.sign(_centroids(d.images).diff(dim=1))  # (N, T-1, 2)
    flips = torch.zeros(10, 2, dtype=torch.int64)
    for i in range(10):
        for ax in range(2):
            s = steps[i, :, ax][steps[i, :, ax] != 0]  # direction of each visible step
            flips[i, ax] = (s[1:] != s[:-1]).sum()
    assert (flips.sum(1) > 0).all()  # 40 frames are long enough for every item to bounce
    assert (flips.sum(0) > 0).all()  # bounces happen off both pairs of edges
    p = bouncing_paths(np.random.default_rng(0), 100, 2, 60, 32, 16)
    assert p.min() >= 0 and p.max() <= 16 and np.abs(np.diff(p, axis=2)).max() <= 3.2 + 1e-9
    assert item_size_for(32) == 16 and item_size_for(64) == 28


def test_moving_validation():
    src = _square_source(3)
    d = make_moving_fmnist(src, 30, frames=2, size=32, max_items=3, seed=0)
    assert set(d.labels.tolist()) <= {0, 1, 2} and d.num_classes == 3
    for kw in ({"frames": 1}, {"size": 8}, {"size": 4096}, {"max_items": 0}):
        with pytest.raises((ValueError, DataError)):
            make_moving_fmnist(src, 2, **kw)


@needs_fmnist
def test_moving_from_real_fmnist(fmnist_test):
    d = make_moving_fmnist(fmnist_test, 16, frames=4, size=64, seed=0)
    assert d.images.shape == (16, 1, 4, 64, 64)
    assert d.images.float().mean() > 5 and d.num_classes == 10


# ----------------------------------------------------------------------------- io


@pytest.mark.parametrize("layout", ["nchw", "nhwc"])
def test_save_grid_png_size(tmp_path, layout):
    imgs = torch.randint(0, 256, (7, 3, 10, 12), dtype=torch.uint8)
    arr = imgs if layout == "nchw" else imgs.permute(0, 2, 3, 1).numpy()
    p = tmp_path / "sub" / "grid.png"
    save_grid_png(arr, p, nrow=3)
    with Image.open(p) as im:
        assert im.format == "PNG" and im.mode == "RGB"
        assert im.size == (3 * 12 + 4 * 2, 3 * 10 + 4 * 2)  # (W, H): 3 cols, 3 rows
        g = np.asarray(im)
    assert np.array_equal(g[2:12, 2:14], imgs[0].permute(1, 2, 0).numpy())
    assert np.array_equal(g[14:24, 16:28], imgs[4].permute(1, 2, 0).numpy())
    assert [f for f in os.listdir(p.parent) if f != "grid.png"] == []  # no temp leftovers


def test_save_grid_png_gray_default_nrow(tmp_path):
    imgs = torch.randint(0, 256, (5, 1, 8, 8), dtype=torch.uint8)
    save_grid_png(imgs, tmp_path / "g.png")
    with Image.open(tmp_path / "g.png") as im:
        assert im.mode == "L" and im.size == (3 * 8 + 4 * 2, 2 * 8 + 3 * 2)


def test_save_video_gif(tmp_path):
    v = torch.zeros(4, 1, 5, 8, 8, dtype=torch.uint8)
    for t in range(5):
        v[:, :, t, t, :] = 255
    p = tmp_path / "v.gif"
    save_video(v, p)
    with Image.open(p) as im:
        assert im.format == "GIF" and im.n_frames == 5
        assert im.size == (2 * 8 + 3 * 2, 2 * 8 + 3 * 2)
        im.seek(3)
        f = np.asarray(im.convert("L"))
    assert f[2 + 3, 2:10].min() == 255 and f[2 + 4, 2:10].max() == 0


# ----------------------------------------------------------------------------- loading


def test_load_dataset_dispatch(tmp_path):
    assert DATASET_KINDS == ("fashion-mnist", "folder", "synthetic", "moving-fmnist", "emoji")
    s = load_dataset("synthetic", n=40, image_size=16, channels=3)
    assert s.images.shape == (40, 3, 16, 16)
    assert torch.equal(s.images, make_synthetic(40, 16, 3, seed=0).images)
    st = load_dataset("synthetic", split="test", n=40, image_size=16, channels=3)
    assert torch.equal(st.images, make_synthetic(40, 16, 3, seed=1).images)
    assert len(load_dataset("synthetic", image_size=8)) == 2048
    _write_folder(tmp_path / "imgs")
    f = load_dataset("folder", data_dir=tmp_path / "imgs", image_size=8, channels=3)
    assert f.images.shape == (5, 3, 8, 8)
    data = write_fake_fmnist(tmp_path / "fm", n_train=5, n_test=3)
    fm = load_dataset("fashion-mnist", split="test", data_dir=tmp_path / "fm")
    assert fm.images.shape == (3, 1, 32, 32) and fm.crop == (28, 28)
    assert torch.equal(fm.images[:, 0, 2:30, 2:30], torch.from_numpy(data["test"][0]))
    mv = load_dataset("moving-fmnist", split="test", data_dir=tmp_path / "fm", n=6, frames=3)
    assert mv.images.shape == (6, 1, 3, 32, 32) and mv.is_video
    mv_train = load_dataset("moving-fmnist", data_dir=tmp_path / "fm", n=6, frames=3)
    assert not torch.equal(mv.images, mv_train.images)
    # sampling knows each kind's crop without loading it; it must agree with the loaders
    for kind, loaded in (("synthetic", s), ("folder", f), ("fashion-mnist", fm), ("moving-fmnist", mv)):
        assert output_crop(kind) == loaded.crop, kind


def test_load_dataset_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset kind"):
        load_dataset("cifar-11")
    with pytest.raises(DataError, match="data_dir"):
        load_dataset("folder")
    with pytest.raises(DataError, match="split"):
        load_dataset("synthetic", split="valid")
    with pytest.raises(DataError, match="not found"):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    with pytest.raises(DataError, match="image_size"):
        load_dataset("synthetic", image_size=4)
    write_fake_fmnist(tmp_path / "fm")
    with pytest.raises(DataError, match="frames"):
        load_dataset("moving-fmnist", data_dir=tmp_path / "fm", frames=1, n=2)
    with pytest.raises(DataError, match="channels"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "fm", channels=3)
