"""Keypoint prior L_L and deformation prior L_Δ (LivePortrait Sec. 3.1, taken from face vid2vid Sec. 3.3).

- L_L = Σ_{i≠j} max(0, D_t − ‖x_i − x_j‖²) + |mean_k z_k − z_t|: keypoints are kept at least √D_t apart and
  their mean depth near z_t (face vid2vid: D_t = 0.1, z_t = 0.33). The pair sum runs over ordered pairs
  (each unordered pair counted twice), per sample, then averaged over the batch — as the face vid2vid
  re-implementations do.
- L_Δ = mean |δ|: the expression deformations stay small (face vid2vid's ``‖δ_d‖₁``, averaged over elements).
"""

from __future__ import annotations

import torch
from torch import nn


class KeypointPriorLoss(nn.Module):
    """L_L on keypoints (B, K, 3).

    Args:
        distance_threshold: D_t, the minimum squared distance between two keypoints.
        depth_target: z_t, the target mean depth.
    """

    def __init__(self, distance_threshold: float = 0.1, depth_target: float = 0.33):
        super().__init__()
        self.distance_threshold = distance_threshold
        self.depth_target = depth_target

    def forward(self, kp: torch.Tensor) -> torch.Tensor:
        if kp.ndim != 3 or kp.shape[-1] != 3:
            raise ValueError(f"keypoints must be (B, K, 3), got {tuple(kp.shape)}")
        k = kp.shape[1]
        d2 = (kp[:, :, None, :] - kp[:, None, :, :]).pow(2).sum(-1)  # (B, K, K) squared distances
        # a product with the off-diagonal mask, not a boolean index: indexing calls nonzero(), a host sync on a GPU
        off_diag = 1.0 - torch.eye(k, dtype=d2.dtype, device=kp.device)
        spread = ((self.distance_threshold - d2).clamp(min=0) * off_diag).sum((1, 2))  # (B,)
        depth = (kp[:, :, 2].mean(1) - self.depth_target).abs()  # (B,)
        return (spread + depth).mean()


class DeformationPriorLoss(nn.Module):
    """L_Δ = mean |δ| over any number of (B, K, 3) expression deformations."""

    def forward(self, *deltas: torch.Tensor) -> torch.Tensor:
        if not deltas:
            raise ValueError("DeformationPriorLoss needs at least one δ tensor")
        return torch.stack([d.abs().mean() for d in deltas]).mean()
