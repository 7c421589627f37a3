"""vos: weakly-supervised video object segmentation (HODOR with differentiable soft-masked attention)."""

__version__ = "0.1.0"
