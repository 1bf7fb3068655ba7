"""L1 distance between generated and ground-truth frames, a self-reenactment metric of LivePortrait (Table 2).

Mean absolute difference over all pixels and channels of [0, 1] RGB frames at the evaluation resolution (256²),
averaged over frames (equal-size frames: the same as the mean over all pixels). Reference: ``numpy.mean(abs(a-b))``.
"""

from __future__ import annotations

import torch

from lp_train.metrics.base import FrameMetric, check_images


class L1(FrameMetric):
    """Mean absolute error (↓) of [0, 1] images."""

    name = "l1"
    higher_is_better = False

    def score(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_images(preds, target, self.name)
        return (preds.double() - target.double()).abs().flatten(1).mean(1)

    def info(self) -> dict:
        return {
            "implementation": "lp_train.metrics.l1 (mean |pred - target| over pixels and channels, [0, 1] scale)",
            "weights": None,
            "calibrated": True,
            "settings": {"range": "[0, 1]", "reduction": "mean over frames"},
        }
