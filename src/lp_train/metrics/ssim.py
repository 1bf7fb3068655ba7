"""SSIM (Wang et al. 2004), the self-reenactment structure metric of LivePortrait (Sec. 4.2, Table 2).

Pinned to the standard Gaussian-window SSIM, computed per channel and averaged: 11x11 window, σ = 1.5, K1 = 0.01,
K2 = 0.03, population (not sample) covariances, data range 1. Matches ``skimage.metrics.structural_similarity(
target, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``
(skimage's own default is a uniform 7x7 window — a common source of irreproducible numbers). As skimage does, the
SSIM map is averaged over the "valid" region only (5 pixels cropped at each border), so the padding mode is
irrelevant and we filter without padding (separable Gaussian; moments filtered in float32, formula in float64).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lp_train.metrics.base import FrameMetric, check_images


def gaussian_kernel1d(sigma: float = 1.5, truncate: float = 3.5, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """scipy.ndimage's Gaussian: radius int(truncate·σ + 0.5) (5 for σ = 1.5, i.e. 11 taps), normalised."""
    radius = int(truncate * sigma + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=dtype)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def ssim_per_image(
    preds: torch.Tensor, target: torch.Tensor, data_range: float = 1.0, sigma: float = 1.5
) -> torch.Tensor:
    """(B,) mean SSIM of (B, C, H, W) images (per-channel SSIM maps on the valid region, averaged).

    The five local moments are filtered together in float32 (one grouped separable convolution); the SSIM formula
    is evaluated in float64. Against skimage's float64 result the error is < 1e-6 on [0, 1] images.
    """
    b, c, h, w = preds.shape
    k = gaussian_kernel1d(sigma, dtype=torch.float32).to(preds.device)
    n = k.numel()
    if min(h, w) < n:
        raise ValueError(f"ssim: images must be at least {n} px per side, got {h}x{w}")
    x = preds.float().reshape(b * c, 1, h, w)
    y = target.float().reshape(b * c, 1, h, w)
    st = torch.cat([x, y, x * x, y * y, x * y], dim=1)  # (B·C, 5, H, W) moments to filter
    st = F.conv2d(st, k.view(1, 1, n, 1).repeat(5, 1, 1, 1), groups=5)  # valid: no padding (skimage crops)
    st = F.conv2d(st, k.view(1, 1, 1, n).repeat(5, 1, 1, 1), groups=5)  # (B·C, 5, H-2r, W-2r)
    mx, my, xx, yy, xy = st.double().unbind(1)
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    vx, vy, cxy = xx - mx * mx, yy - my * my, xy - mx * my
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.reshape(b, c, -1).mean(2).mean(1)


class SSIM(FrameMetric):
    """Mean per-frame SSIM (↑), Gaussian 11x11 window, σ = 1.5, per channel.

    Args:
        data_range: dynamic range of the images (1 for [0, 1] floats).
        sigma: Gaussian window σ (1.5 is the standard; the window is 2·int(3.5σ + 0.5) + 1 taps).
    """

    name = "ssim"
    higher_is_better = True

    def __init__(self, data_range: float = 1.0, sigma: float = 1.5) -> None:
        super().__init__()
        self.data_range = float(data_range)
        self.sigma = float(sigma)

    def score(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_images(preds, target, self.name)
        return ssim_per_image(preds, target, self.data_range, self.sigma)

    def info(self) -> dict:
        taps = gaussian_kernel1d(self.sigma).numel()
        return {
            "implementation": "lp_train.metrics.ssim (matches skimage structural_similarity, gaussian_weights=True, "
            "use_sample_covariance=False)",
            "weights": None,
            "calibrated": True,
            "settings": {
                "window": f"gaussian {taps}x{taps}",
                "sigma": self.sigma,
                "k1": 0.01,
                "k2": 0.03,
                "data_range": self.data_range,
                "per_channel": True,
                "border": "valid region (skimage crop)",
            },
        }
