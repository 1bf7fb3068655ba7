"""lp-train: training and evaluation pipeline for LivePortrait."""

__version__ = "0.1.0"
