"""s4kit: a notebook-first teaching and reproduction kit for semi-supervised semantic segmentation."""
__version__ = "0.1.0"
