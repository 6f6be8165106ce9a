"""Pluggable feature extractors for the scoring metrics.

A feature extractor maps uint8 images ``(N, H, W, C)`` (channels last, as stored in
sample ``.npz`` files) to float64 features ``(N, D)``, and optionally to class logits
``(N, K)``. Anything with this shape of interface works (structural typing)::

    class FeatureExtractor(Protocol):
        name: str                                            # shown in reports, cache key
        def features(self, images_u8) -> np.ndarray: ...     # (N,H,W,C) u8 -> (N,D) float64
        def logits(self, images_u8) -> np.ndarray | None: ... # (N,K) float64, or None

Specs accepted by :func:`get_extractor`:

* ``"fmnist-classifier"`` (default): the small Fashion-MNIST CNN of
  :mod:`progflow.eval.classifier`, loaded from the cache (trained on first use).
* ``"emoji-classifier"``: the packaged emoji CNN of :mod:`progflow.eval.emoji`.
* ``"classifier:PATH"``: that CNN (or the emoji one, by the arch its file records) loaded from a specific ``.safetensors`` file.
* ``"python:package.module:factory"``: imports ``package.module`` and calls
  ``factory()`` (no arguments), which must return an object following the protocol.
  This is how a locally available network (e.g. Inception-v3 or DINOv2 weights you
  have on disk) plugs in without progflow depending on it. Example ``myfeats.py``::

      class Dino:
          name = "dinov2-vits14"
          def __init__(self): self.net = load_my_local_weights("/data/dinov2.safetensors")
          def features(self, images_u8): ...   # resize/normalise, return (N, 384) float64
          def logits(self, images_u8): return None

      def make(): return Dino()

  then ``--features python:myfeats:make``. The ``name`` must change whenever the
  weights change: reference statistics are cached under it.

An extractor may also define ``features_and_logits(images_u8) -> (feats, logits|None)``
to compute both in one pass; :func:`progflow.eval.evaluate_arrays` uses it if present.
"""

from __future__ import annotations

import hashlib
import importlib
import pathlib
from typing import Protocol, runtime_checkable

import numpy as np
import torch

from ..errors import ProgflowError
from .classifier import FmnistCNN, get_fmnist_classifier, load_classifier

__all__ = ["FeatureExtractor", "ClassifierFeatures", "get_extractor", "check_images_u8", "DEFAULT_SPEC"]

DEFAULT_SPEC = "fmnist-classifier"
EMOJI_SPEC = "emoji-classifier"


def default_spec(dataset: str = "fashion-mnist") -> str:
    """The feature extractor a dataset is scored with by default."""
    return EMOJI_SPEC if dataset == "emoji" else DEFAULT_SPEC


@runtime_checkable
class FeatureExtractor(Protocol):
    """Maps uint8 ``(N, H, W, C)`` images to float64 features ``(N, D)`` (and logits)."""

    name: str

    def features(self, images_u8: np.ndarray) -> np.ndarray: ...

    def logits(self, images_u8: np.ndarray) -> np.ndarray | None: ...


def check_images_u8(images_u8: np.ndarray, where: str = "images") -> np.ndarray:
    """Validate a uint8 ``(N, H, W, C)`` array; raise ProgflowError naming ``where``."""
    arr = np.asarray(images_u8)
    if arr.dtype != np.uint8:
        raise ProgflowError(f"{where}: images must be uint8, got {arr.dtype}")
    if arr.ndim != 4:
        raise ProgflowError(f"{where}: images must be (N, H, W, C), got shape {arr.shape}")
    return arr


def _weights_digest(model: FmnistCNN) -> str:
    """Short sha256 over the model's tensors, to tie cached statistics to exact weights."""
    h = hashlib.sha256()
    for key, val in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(val.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:10]


class ClassifierFeatures:
    """Features (128-d penultimate layer, pre-ReLU) and logits of a :class:`FmnistCNN`.

    Accepts uint8 ``(N, H, W, 1)`` with ``H, W >= 28``: 28x28 is used as is, larger
    frames (e.g. 32x32 zero-padded Fashion-MNIST) are centre-cropped to 28x28.
    Runs in batches of ``batch_size`` under ``torch.no_grad``. ``name`` is
    ``"fmnist-classifier-<arch>-fc128-<digest of weights>"``.
    """

    def __init__(self, model: FmnistCNN, *, batch_size: int = 500, name: str | None = None) -> None:
        self.model = model.eval()
        self.batch_size = int(batch_size)
        self.name = name or (
            f"{model.tag}-classifier-{model.meta.get('arch', 'cnn')}-fc128-{_weights_digest(model)}"
        )

    @torch.no_grad()
    def features_and_logits(self, images_u8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``(N, H, W, 1)`` -> (features ``(N, 128)``, logits ``(N, K)``), float64."""
        arr = check_images_u8(images_u8)
        if arr.shape[-1] != self.model.input_channels:
            raise ProgflowError(f"{self.name} needs images with C={self.model.input_channels}, got C={arr.shape[-1]}")
        dev = next(self.model.parameters()).device
        feats, logits = [], []
        for i in range(0, arr.shape[0], self.batch_size):
            x = torch.from_numpy(np.ascontiguousarray(arr[i : i + self.batch_size])).permute(0, 3, 1, 2)
            f, lg = self.model.features_and_logits(self.model.prepare(x).to(dev))
            feats.append(f.cpu().double().numpy())
            logits.append(lg.cpu().double().numpy())
        if not feats:
            k = self.model.num_classes
            return np.zeros((0, FmnistCNN.feature_dim)), np.zeros((0, k))
        return np.concatenate(feats), np.concatenate(logits)

    def features(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, 1)`` -> float64 ``(N, 128)``."""
        return self.features_and_logits(images_u8)[0]

    def logits(self, images_u8: np.ndarray) -> np.ndarray:
        """uint8 ``(N, H, W, 1)`` -> float64 ``(N, K)``."""
        return self.features_and_logits(images_u8)[1]


def _from_python(spec: str) -> FeatureExtractor:
    target = spec[len("python:") :]
    mod_name, sep, attr = target.rpartition(":")
    if not sep or not mod_name or not attr:
        raise ProgflowError(f"feature spec must be python:package.module:factory, got {spec!r}")
    try:
        module = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ProgflowError(f"cannot import feature module {mod_name!r} ({exc})") from None
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise ProgflowError(f"{mod_name!r} has no callable {attr!r} (feature spec {spec!r})")
    ext = factory()
    if not (isinstance(getattr(ext, "name", None), str) and callable(getattr(ext, "features", None))):
        raise ProgflowError(f"{spec!r} did not return a FeatureExtractor (needs .name and .features)")
    if not callable(getattr(ext, "logits", None)):
        raise ProgflowError(f"{spec!r} did not return a FeatureExtractor (needs .logits, may return None)")
    return ext


def get_extractor(spec: str = DEFAULT_SPEC, *, data_dir=None, seed: int = 0) -> FeatureExtractor:
    """Build the feature extractor named by ``spec`` (see the module docstring).

    ``"fmnist-classifier"`` loads (or trains and caches, using ``data_dir``) the
    classifier for ``seed``; ``"classifier:PATH"`` loads a given weight file;
    ``"python:package.module:factory"`` calls a user factory. Anything else raises
    ProgflowError.
    """
    spec = (spec or DEFAULT_SPEC).strip()
    if spec == DEFAULT_SPEC:
        return ClassifierFeatures(get_fmnist_classifier(data_dir, seed=seed))
    if spec == EMOJI_SPEC:
        from .emoji import get_emoji_classifier

        return ClassifierFeatures(get_emoji_classifier(seed))
    if spec.startswith("classifier:"):
        return ClassifierFeatures(load_classifier(pathlib.Path(spec[len("classifier:") :]).expanduser()))
    if spec.startswith("python:"):
        return _from_python(spec)
    raise ProgflowError(
        f"unknown feature extractor {spec!r}; use 'fmnist-classifier', 'emoji-classifier', 'classifier:PATH' "
        "or 'python:package.module:factory'"
    )
