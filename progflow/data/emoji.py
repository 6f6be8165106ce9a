"""64x64 colour emoji from the npm packages ``emoji-datasource-twitter`` and
``emoji-datasource-google`` (version 16.0.0), labelled by category.

Fetching (:func:`fetch_emoji`, ``progflow fetch-data emoji``, ``make data-emoji``): ``npm pack``
downloads both packages into a temporary folder beside the data folder; ``emoji.json``, the
licences and ``img/<set>/64/*.png`` are extracted, every PNG listed in ``emoji.json`` is
checked to be there, and only then is :data:`MARKER` written and the folder renamed into
place. A folder without the marker is an interrupted download: the loader refuses it and
the next fetch replaces it. Layout of the data folder::

    emoji.json                        the package's list (identical in both packages)
    img/twitter/64/<image>.png        Twemoji, CC-BY 4.0
    img/google/64/<image>.png         Noto Emoji, Apache 2.0
    LICENSE-<package>                 the packages' MIT licences
    progflow-emoji.json               the marker, written last

The dataset (:func:`load_emoji`):

* one image per emoji and art set: skin-tone variants (``skin_variations``) are left out.
  They are recolourings of the same drawing; with them "People & Body" would be 60% of
  the images and a classifier would learn skin tones instead of categories;
* label = ``category``; a category with fewer than :data:`MIN_CATEGORY` images is dropped
  ("Component": the 5 skin-tone and hair swatches, 10 images). 9 categories remain, the
  largest ("People & Body", 772 images) 4.5 times the smallest ("Activities", 170); the
  imbalance is kept (see docs/datasets.md for how scores treat it);
* alpha composited on white (transparent pixels carry arbitrary RGB), uint8
  ``(N, 3, 64, 64)``, no crop;
* split by emoji, not by image: both drawings of an emoji land in the same split, so the
  test set never holds the other artist's drawing of a training emoji. Within each
  category the emoji in ``sort_order`` go to test when their rank is ``4 (mod 5)``
  (every fifth, 20%), the rest to train: deterministic and the same on every machine.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile
from collections import Counter

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import DataError
from .base import ImageData

__all__ = ["EMOJI_SETS", "EMOJI_VERSION", "MARKER", "MIN_CATEGORY", "default_emoji_dir", "emoji_entries",
           "fetch_emoji", "load_emoji"]

EMOJI_VERSION = "16.0.0"
EMOJI_SETS = ("twitter", "google")
IMAGE_SIZE = 64
MIN_CATEGORY = 100
TEST_EVERY = 5  # every fifth emoji of a category is a test emoji
MARKER = "progflow-emoji.json"
_MODES = ("RGBA", "RGB", "P", "LA", "L")  # PNG modes that composite to RGB; anything else is refused


def default_emoji_dir() -> pathlib.Path:
    """``$PROGFLOW_CACHE/data/emoji-16.0.0`` (cache default ``~/.cache/progflow``)."""
    env = os.environ.get("PROGFLOW_CACHE")
    cache = pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "progflow"
    return cache / "data" / f"emoji-{EMOJI_VERSION}"


def _root(data_dir) -> pathlib.Path:
    return pathlib.Path(data_dir).expanduser() if data_dir not in (None, "") else default_emoji_dir()


# ---- fetching --------------------------------------------------------------------------------
def fetch_emoji(data_dir=None, *, npm: str = "npm", progress=print) -> pathlib.Path:
    """Download both packages with ``npm pack`` into ``data_dir`` (default
    :func:`default_emoji_dir`) unless a complete copy is there; returns the folder.

    DataError: npm missing or failing, a package without the expected files, or
    ``data_dir`` a file / a foreign non-empty folder (never deleted)."""
    root = _root(data_dir)
    if (root / MARKER).is_file():
        progress(f"emoji {EMOJI_VERSION}: {root} (complete)")
        return root
    if root.exists() and not root.is_dir():
        raise DataError(f"emoji data folder {root} is a file, not a folder")
    from ..checks import check_out_dir

    check_out_dir(root.parent, "--data-dir's parent")  # the download lands beside it, then is renamed
    if root.is_dir() and any(root.iterdir()) and not (root / "emoji.json").exists():
        raise DataError(f"emoji data folder {root} holds other files and no emoji download; choose another --data-dir")
    if shutil.which(npm) is None:
        raise DataError(f"npm is not installed: the emoji dataset is fetched with `npm pack` "
                        f"(apt-get install npm), or put a complete copy in {root}")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        packages = [f"emoji-datasource-{s}@{EMOJI_VERSION}" for s in EMOJI_SETS]
        progress(f"emoji {EMOJI_VERSION}: npm pack {' '.join(packages)} (about 140 MB) into {tmp}")
        p = subprocess.run([npm, "pack", *packages, "--silent"], cwd=tmp, capture_output=True, text=True)
        if p.returncode:
            last = (p.stderr.strip().splitlines() or ["no message"])[-1]
            raise DataError(f"npm pack {' '.join(packages)} failed (exit {p.returncode}): {last}")
        for s in EMOJI_SETS:
            _extract(tmp / f"emoji-datasource-{s}-{EMOJI_VERSION}.tgz", tmp, s)
        counts = _check_complete(tmp)
        (tmp / MARKER).write_text(json.dumps({"version": EMOJI_VERSION, "sets": list(EMOJI_SETS),
                                              "images": counts}, indent=2) + "\n")
        if root.exists():  # an interrupted earlier download: replaced whole
            shutil.rmtree(root)
        os.replace(tmp, root)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    progress(f"emoji {EMOJI_VERSION}: {root} ({sum(counts.values())} PNGs)")
    return root


def _extract(tgz: pathlib.Path, dest: pathlib.Path, art: str) -> None:
    """emoji.json, the licence and ``img/<art>/64/*.png`` of one package tarball; deletes it."""
    prefix = f"package/img/{art}/{IMAGE_SIZE}/"
    try:
        with tarfile.open(tgz, "r:gz") as tar:
            for m in tar.getmembers():
                if m.isfile() and m.name.startswith(prefix) and m.name.endswith(".png"):
                    out = dest / m.name[len("package/"):]
                elif m.name in ("package/emoji.json", "package/LICENSE"):
                    out = dest / ("emoji.json" if m.name.endswith(".json") else f"LICENSE-emoji-datasource-{art}")
                else:
                    continue
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(tar.extractfile(m).read())
    except (tarfile.TarError, OSError, EOFError) as e:
        raise DataError(f"cannot unpack {tgz}: {e}") from None
    tgz.unlink()


def _check_complete(root: pathlib.Path) -> dict[str, int]:
    """Every image ``emoji.json`` lists (variants included) is there; counts per set."""
    entries = emoji_entries(root)
    counts = {}
    for art in EMOJI_SETS:
        listed = [v["image"] for e in entries for v in (e, *(e.get("skin_variations") or {}).values())
                  if v.get(f"has_img_{art}")]
        missing = [f for f in listed if not (root / "img" / art / str(IMAGE_SIZE) / f).is_file()]
        if missing:
            raise DataError(f"the {art} package lacks {len(missing)} images emoji.json lists, e.g. "
                            f"{root / 'img' / art / str(IMAGE_SIZE) / missing[0]}")
        counts[art] = len(listed)
    return counts


# ---- loading ---------------------------------------------------------------------------------
def emoji_entries(root) -> list[dict]:
    """The parsed ``emoji.json`` of a data folder (DataError naming it when unreadable)."""
    path = pathlib.Path(root) / "emoji.json"
    try:
        entries = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(f"{path} is missing; fetch the emoji dataset with `make data-emoji`") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path} is not a readable emoji list ({str(e).splitlines()[0]})") from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("category"), str)
                                                and isinstance(e.get("image"), str) for e in entries):
        raise DataError(f"{path} is not an emoji list (a JSON list of entries with 'image' and 'category')")
    return entries


def _read_png(path: pathlib.Path) -> np.ndarray:
    """A 64x64 PNG alpha-composited on white: uint8 ``(3, 64, 64)``."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.size != (IMAGE_SIZE, IMAGE_SIZE):
                raise DataError(f"emoji image {path} is {im.size[0]}x{im.size[1]}, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
            if im.mode not in _MODES:
                raise DataError(f"emoji image {path} has mode {im.mode}, expected one of {', '.join(_MODES)}")
            rgba = np.asarray(im.convert("RGBA"), dtype=np.float32)
    except FileNotFoundError:
        raise DataError(f"emoji image {path} is missing (emoji.json lists it); fetch again with `make data-emoji`") \
            from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read emoji image {path}: {e}") from None
    alpha = rgba[..., 3:] / 255.0
    rgb = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    return np.rint(rgb).astype(np.uint8).transpose(2, 0, 1)


def emoji_split(entries: list[dict]) -> tuple[list[str], dict[str, list[dict]]]:
    """Kept categories (sorted) and the entries of each split, by the rules of the module doc."""
    sizes = Counter()
    for e in entries:
        sizes[e["category"]] += sum(bool(e.get(f"has_img_{art}")) for art in EMOJI_SETS)
    categories = sorted(c for c, n in sizes.items() if n >= MIN_CATEGORY)
    split = {"train": [], "test": []}
    for c in categories:
        members = sorted((e for e in entries if e["category"] == c), key=lambda e: (e.get("sort_order", 0), e["image"]))
        for rank, e in enumerate(members):
            split["test" if rank % TEST_EVERY == TEST_EVERY - 1 else "train"].append(e)
    return categories, split


def load_emoji(data_dir=None, split: str = "train") -> ImageData:
    """The ``split`` of the emoji dataset in ``data_dir`` (default :func:`default_emoji_dir`):
    uint8 ``(N, 3, 64, 64)`` on white, labels the index of the category in the sorted kept
    categories. Twitter images first, then Google, each in ``emoji.json`` order.

    DataError naming the folder or file: no download, an interrupted one (no marker), a
    listed image missing, of the wrong size or mode, or unreadable."""
    if split not in ("train", "test"):
        raise DataError(f"unknown emoji split {split!r} (expected 'train' or 'test')")
    root = _root(data_dir)
    if not root.is_dir():
        raise DataError(f"emoji data not found in {root}; fetch it once with `make data-emoji` "
                        f"(or `progflow fetch-data emoji --data-dir {root}`)")
    if not (root / MARKER).is_file():
        raise DataError(f"{root} holds an incomplete emoji download (no {MARKER}); fetch it again with "
                        "`make data-emoji`")
    categories, members = emoji_split(emoji_entries(root))
    if not categories:
        raise DataError(f"{root / 'emoji.json'} has no category with at least {MIN_CATEGORY} images")
    index = {c: i for i, c in enumerate(categories)}
    files, labels = [], []
    for art in EMOJI_SETS:
        folder = root / "img" / art / str(IMAGE_SIZE)
        if not folder.is_dir() and any(e.get(f"has_img_{art}") for e in members[split]):
            raise DataError(f"{root / 'emoji.json'} lists {art} images but {folder} does not exist; fetch again "
                            "with `make data-emoji`")
        for e in members[split]:
            if e.get(f"has_img_{art}"):
                files.append(root / "img" / art / str(IMAGE_SIZE) / e["image"])
                labels.append(index[e["category"]])
    images = np.stack([_read_png(f) for f in files]) if files else np.zeros((0, 3, IMAGE_SIZE, IMAGE_SIZE), np.uint8)
    return ImageData(images=torch.from_numpy(images), labels=torch.tensor(labels, dtype=torch.int64),
                     num_classes=len(categories), crop=None, class_names=categories)
