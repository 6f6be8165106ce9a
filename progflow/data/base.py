"""The in-memory dataset container and pixel-range helpers.

Conventions
-----------
* Stored pixels are ``uint8`` in ``[0, 255]``.
* Images are ``(N, C, H, W)``; videos are ``(N, C, T, H, W)`` (channels first, then time).
* The model works in float32 ``[-1, 1]``: ``x = u8 / 127.5 - 1`` (:func:`to_model_range`);
  :func:`to_uint8` is its inverse (clamp, then round to nearest).
* ``crop`` is the ``(h, w)`` of the real content centred in the frame, e.g. ``(28, 28)``
  for Fashion-MNIST zero-padded to 32x32; metrics crop it back with :func:`center_crop`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

__all__ = ["ImageData", "to_model_range", "to_uint8", "center_crop"]


@dataclass
class ImageData:
    """A labelled image or video dataset held in memory at training size.

    Attributes:
        images: ``uint8`` tensor, ``(N, C, H, W)`` for images or ``(N, C, T, H, W)`` for video.
        labels: ``int64`` tensor ``(N,)`` with values in ``[0, num_classes)``.
        num_classes: number of classes.
        crop: ``(h, w)`` of the original content centred in the frame, or ``None`` for the
            whole frame.
        class_names: ``num_classes`` human-readable names.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int
    crop: tuple[int, int] | None = None
    class_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8:
            raise ValueError(f"ImageData.images must be uint8, got {self.images.dtype}")
        if self.images.dim() not in (4, 5):
            raise ValueError(
                f"ImageData.images must be (N,C,H,W) or (N,C,T,H,W), got shape {tuple(self.images.shape)}"
            )
        if self.labels.dim() != 1 or self.labels.shape[0] != self.images.shape[0]:
            raise ValueError(
                f"ImageData.labels must be ({self.images.shape[0]},), got {tuple(self.labels.shape)}"
            )
        self.labels = self.labels.to(torch.int64)
        if self.crop is not None:
            self.crop = (int(self.crop[0]), int(self.crop[1]))
        if not self.class_names:
            self.class_names = [str(i) for i in range(self.num_classes)]

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def is_video(self) -> bool:
        """True for ``(N, C, T, H, W)`` video data."""
        return self.images.dim() == 5

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    @property
    def image_size(self) -> int:
        """Spatial size (height) of the frames."""
        return int(self.images.shape[-2])


def to_model_range(u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float32 ``[-1, 1]`` via ``x / 127.5 - 1``; any shape. Float
    input (a latent run's latents, :mod:`progflow.latent`) is already in model space and
    passes through as float32."""
    if u8.is_floating_point():
        return u8.to(torch.float32)
    return u8.to(torch.float32) / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float ``[-1, 1]`` -> uint8 ``[0, 255]``: clamp to range, then round to nearest."""
    y = (x.detach().to(torch.float32).clamp(-1.0, 1.0) + 1.0) * 127.5
    return y.round().clamp(0, 255).to(torch.uint8)


def center_crop(x: torch.Tensor, crop: tuple[int, int] | None) -> torch.Tensor:
    """Crop the last two (spatial) axes of ``x`` to ``crop=(h, w)``, centred.

    Works for any leading axes (``(H, W)``, ``(N, C, H, W)``, ``(N, C, T, H, W)``...).
    ``crop=None`` returns ``x`` unchanged. When ``H - h`` is odd the extra row goes to
    the bottom (top offset ``(H - h) // 2``), matching how data are padded.
    """
    if crop is None:
        return x
    h, w = int(crop[0]), int(crop[1])
    H, W = x.shape[-2], x.shape[-1]
    if not (0 < h <= H and 0 < w <= W):
        raise ValueError(f"crop {crop} does not fit in a {H}x{W} frame")
    top = (H - h) // 2
    left = (W - w) // 2
    return x[..., top : top + h, left : left + w]
