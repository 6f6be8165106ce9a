"""Datasets for progflow.

All datasets are held in memory as :class:`ImageData`: uint8 images ``(N, C, H, W)``
or videos ``(N, C, T, H, W)`` at training size, int64 labels ``(N,)``. Models see
float32 ``[-1, 1]`` via :func:`to_model_range`; :func:`to_uint8` converts back.
"""

from .base import ImageData, center_crop, to_model_range, to_uint8
from .fmnist import DEFAULT_DATA_DIR, FMNIST_CLASSES, find_data_dir, load_fashion_mnist, read_idx
from .folder import load_image_folder
from .io import save_grid_png, save_video
from .loading import DATASET_KINDS, load_dataset, output_crop
from .synthetic import make_synthetic
from .video import make_moving_fmnist

__all__ = [
    "ImageData",
    "center_crop",
    "to_model_range",
    "to_uint8",
    "DEFAULT_DATA_DIR",
    "FMNIST_CLASSES",
    "find_data_dir",
    "read_idx",
    "load_fashion_mnist",
    "load_image_folder",
    "make_synthetic",
    "make_moving_fmnist",
    "load_dataset",
    "output_crop",
    "DATASET_KINDS",
    "save_grid_png",
    "save_video",
]
