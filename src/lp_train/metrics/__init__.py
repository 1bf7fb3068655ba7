"""Evaluation metrics of LivePortrait (Guo et al. 2024, Sec. 4.2, Tables 2-3), one file per metric.

torchmetrics-style (``update`` / ``compute``, states summed across DDP ranks); each metric's ``info()`` records the
implementation, weights and settings that produced it. ``METRICS`` maps the reported name to its class.

| name            | file           | reference it matches                                                      |
|-----------------|----------------|---------------------------------------------------------------------------|
| psnr ↑          | psnr.py        | skimage.metrics.peak_signal_noise_ratio (data_range=1), per frame          |
| ssim ↑          | ssim.py        | skimage structural_similarity, Gaussian 11x11 σ=1.5, per channel           |
| l1 ↓            | l1.py          | mean |a - b| on [0, 1]                                                    |
| lpips ↓         | lpips.py       | the lpips package (v0.1, alex)                                             |
| fid ↓           | fid.py         | pytorch-fid InceptionV3 + calculate_frechet_distance                       |
| aed_expression ↓| aed.py         | LivePortrait's AED (expression L1), default estimator face_params.py       |
| apd_pose ↓      | apd.py         | LivePortrait's APD (head-pose L1)                                          |
| mae_gaze ↓      | mae.py         | mean angular error of eyeball direction (degrees)                         |
| csim ↑          | csim.py        | cosine similarity of identity embeddings (identity.py: dlib / ArcFace)     |
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> defining module; imported on first use (PEP 562), so ``import lp_train.metrics.ssim`` stays light
_EXPORTS = {
    "PSNR": "psnr", "SSIM": "ssim", "L1": "l1", "LPIPS": "lpips", "FID": "fid", "ExpressionDistance": "aed",
    "PoseDistance": "apd", "GazeAngularError": "mae", "CSIM": "csim", "FrameMetric": "base", "append_result": "base",
}  # fmt: skip
_ORDER = ("PSNR", "SSIM", "L1", "LPIPS", "FID", "ExpressionDistance", "PoseDistance", "GazeAngularError", "CSIM")

__all__ = [*_EXPORTS, "METRICS"]


def __getattr__(name: str) -> Any:
    if name == "METRICS":  # reported name -> class, in the paper's column order
        metrics = {cls.name: cls for cls in (__getattr__(n) for n in _ORDER)}
        globals()["METRICS"] = metrics
        return metrics
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f"lp_train.metrics.{_EXPORTS[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'lp_train.metrics' has no attribute {name!r}")
