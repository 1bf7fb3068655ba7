"""Landmark-guided loss L_guide (LivePortrait Sec. 3.2, "Landmark-guided implicit keypoints optimization"):
a Wing loss (Feng et al., CVPR 2018) between 10 2D face landmarks (3 per eye, 4 on the mouth; defaults
``lp_train.face.landmarks.GUIDE_LANDMARKS``) and the (x, y) of 10 chosen implicit keypoints of x_s and of x_d.

Wing(d) = w · ln(1 + |d| / ε) if |d| < w, else |d| − C with C = w − w · ln(1 + w / ε), applied to each coordinate.
Differences are measured in pixels of a reference image (``pixel_scale`` pixels per unit of the [-1, 1] keypoint
grid; 128 = a 256² image, the paper's input) so Feng et al.'s w = 10, ε = 2 keep their meaning; the loss is the
mean over batch, landmarks and both coordinates. Landmarks arrive normalised to [0, 1] (x right, y down) and are
mapped to the keypoint grid by x ↦ 2x − 1.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from lp_train.face.landmarks import GUIDE_LANDMARKS

# Implicit keypoints paired, in order, with GUIDE_LANDMARKS = (left eye: upper lid, lower lid, iris; right eye: upper,
# lower, iris; mouth: upper lip, lower lip, left corner, right corner). A convention, not a property of the
# architecture. The official inference code animates the eyes through keypoints 11, 13, 15, 16, 18 and the lips
# through 6, 12, 14, 17, 19, 20 (``animation_region`` in live_portrait_pipeline.py), so we take five eye and four lip
# keypoints from those, plus keypoint 1 for the sixth eye landmark; with this choice fine-tuning from the official
# weights asks the least of the released keypoint layout.
GUIDE_KEYPOINTS = (11, 13, 15, 16, 18, 1, 6, 12, 14, 17)


def wing(d: torch.Tensor, w: float = 10.0, epsilon: float = 2.0) -> torch.Tensor:
    """Element-wise Wing function of a difference ``d`` (same units as ``w`` and ``epsilon``)."""
    a = d.abs()
    c = w - w * math.log(1.0 + w / epsilon)
    return torch.where(a < w, w * torch.log1p(a / epsilon), a - c)


class LandmarkGuideLoss(nn.Module):
    """L_guide for one frame: Wing(x[:, kp_idx, :2] − (2·lmk[:, lmk_idx] − 1)).

    Args:
        keypoint_indices: the implicit keypoints supervised (10 by default).
        landmark_indices: the mediapipe landmarks they follow (same length, same order).
        w: Wing width (pixels).
        epsilon: Wing curvature (pixels).
        pixel_scale: pixels per keypoint-grid unit (half the reference image side).
    """

    def __init__(
        self,
        keypoint_indices: Sequence[int] = GUIDE_KEYPOINTS,
        landmark_indices: Sequence[int] = GUIDE_LANDMARKS,
        w: float = 10.0,
        epsilon: float = 2.0,
        pixel_scale: float = 128.0,
    ):
        super().__init__()
        if len(keypoint_indices) != len(landmark_indices):
            raise ValueError(f"{len(keypoint_indices)} keypoint indices but {len(landmark_indices)} landmark indices")
        if len(set(keypoint_indices)) != len(keypoint_indices):
            raise ValueError(f"keypoint indices must be distinct, got {list(keypoint_indices)}")
        self.keypoint_indices = list(keypoint_indices)
        self.landmark_indices = list(landmark_indices)
        self.w, self.epsilon, self.pixel_scale = w, epsilon, pixel_scale

    def forward(self, kp: torch.Tensor, landmarks: torch.Tensor) -> torch.Tensor:
        """L_guide for one frame.

        Args:
            kp: (B, K, 3) implicit keypoints of a frame.
            landmarks: (B, N, 2) its landmarks, normalised to [0, 1].
        """
        if kp.ndim != 3 or max(self.keypoint_indices) >= kp.shape[1]:
            raise ValueError(f"keypoints {tuple(kp.shape)} lack index {max(self.keypoint_indices)}")
        if landmarks.ndim != 3 or max(self.landmark_indices) >= landmarks.shape[1]:
            raise ValueError(f"landmarks {tuple(landmarks.shape)} lack index {max(self.landmark_indices)}")
        target = landmarks[:, self.landmark_indices].to(kp.dtype) * 2 - 1  # (B, 10, 2) in the keypoint grid
        d = (kp[:, self.keypoint_indices, :2] - target.detach()) * self.pixel_scale
        return wing(d, self.w, self.epsilon).mean()
