"""progflow: progressive flow-matching generation of images and video."""

__version__ = "0.1.0"
