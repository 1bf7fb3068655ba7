"""PSNR (peak signal-to-noise ratio), the self-reenactment fidelity metric of LivePortrait (Sec. 4.2, Table 2).

Matches ``skimage.metrics.peak_signal_noise_ratio(target, pred, data_range=1)`` per image: the mean squared error
is taken over all pixels and channels of one frame (float64), PSNR = 10·log10(data_range² / MSE), and the metric is
the mean of the per-frame PSNRs (not the PSNR of the mean MSE). Identical frames give +inf (as skimage); with
``cap_db`` set, per-frame values are clipped to it before averaging (stated in ``info()``).
"""

from __future__ import annotations

import torch

from lp_train.metrics.base import FrameMetric, check_images


def psnr_per_image(preds: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """(B,) PSNR in dB of (B, C, H, W) images, float64; +inf where the images are identical."""
    mse = (preds.double() - target.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range**2 / mse)


class PSNR(FrameMetric):
    """Mean per-frame PSNR (dB, ↑) on [0, 1] images.

    Args:
        data_range: peak value of the images (1 for [0, 1] floats).
        cap_db: clip each frame's PSNR to this many dB before averaging (None: identical frames give +inf).
    """

    name = "psnr"
    higher_is_better = True

    def __init__(self, data_range: float = 1.0, cap_db: float | None = None) -> None:
        super().__init__()
        self.data_range = float(data_range)
        self.cap_db = cap_db

    def score(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_images(preds, target, self.name)
        value = psnr_per_image(preds, target, self.data_range)
        return value.clamp(max=self.cap_db) if self.cap_db is not None else value

    def info(self) -> dict:
        return {
            "implementation": "lp_train.metrics.psnr (matches skimage.metrics.peak_signal_noise_ratio per frame)",
            "weights": None,
            "calibrated": True,
            "settings": {"data_range": self.data_range, "cap_db": self.cap_db, "reduction": "mean of per-frame dB"},
        }
