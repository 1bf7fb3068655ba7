"""Equivariance loss L_E (LivePortrait Sec. 3.1 / face vid2vid Sec. 3.3 / FOMM Sec. 3.3).

A random smooth warp T (affine + thin-plate spline, FOMM's ``Transform``) is applied to the driving frame:
``d'(p) = d(T(p))``. A keypoint detector that is equivariant to T finds, in d', a point p' with ``T(p') = p`` for
every keypoint p of d. The loss is ``mean |x_d[:, :, :2] - T(x_d'[:, :, :2])|`` over batch, keypoints and (x, y).

Coordinates are the normalised [-1, 1] image grid of the implicit keypoints (x right, y down; -1 and +1 at the
first and last pixel centres, ``align_corners=True``), so the same grid is used to resample the frame.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def coordinate_grid_2d(h: int, w: int, ref: torch.Tensor) -> torch.Tensor:
    """(H, W, 2) grid of (x, y) in [-1, 1] (pixel centres at the ends, as ``align_corners=True``)."""
    kw = {"dtype": ref.dtype, "device": ref.device}
    x = torch.linspace(-1.0, 1.0, w, **kw)
    y = torch.linspace(-1.0, 1.0, h, **kw)
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy], dim=-1)


class RandomTPS:
    """A batch of random warps T: affine θ = I + N(0, σ_affine) plus a TPS over a ``points``² control grid with
    N(0, σ_tps) weights (FOMM ``Transform``; defaults from FOMM's vox config).

    Args:
        batch_size: number of independent warps.
        sigma_affine: std of the affine perturbation.
        sigma_tps: std of the TPS control weights (0 disables TPS).
        points_tps: TPS control grid side (0 disables TPS).
        device: where the parameters live.
        dtype: their dtype.
        generator: optional ``torch.Generator`` (else the global RNG, restored on resume).
    """

    def __init__(
        self,
        batch_size: int,
        sigma_affine: float = 0.05,
        sigma_tps: float = 0.005,
        points_tps: int = 5,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ):
        kw = {"device": device, "dtype": dtype}
        noise = torch.randn(batch_size, 2, 3, generator=generator, **kw) * sigma_affine
        self.theta = noise + torch.eye(2, 3, **kw)  # (B, 2, 3)
        self.tps = sigma_tps > 0 and points_tps > 0
        self.batch_size = batch_size
        if self.tps:
            ctrl = coordinate_grid_2d(points_tps, points_tps, self.theta)
            self.control_points = ctrl.reshape(-1, 2)  # (P, 2)
            self.control_params = torch.randn(batch_size, 1, points_tps**2, generator=generator, **kw) * sigma_tps

    @classmethod
    def from_params(cls, theta: torch.Tensor, control_points=None, control_params=None) -> RandomTPS:
        """A fixed warp (tests, hand-made cases): affine ``theta`` (B, 2, 3), optional TPS points/weights."""
        t = cls.__new__(cls)
        t.theta, t.batch_size = theta, theta.shape[0]
        t.tps = control_points is not None
        t.control_points, t.control_params = control_points, control_params
        return t

    def warp_coordinates(self, coords: torch.Tensor) -> torch.Tensor:
        """T(p) for points ``coords`` (B, N, 2) in the warped frame -> (B, N, 2) positions in the original frame."""
        if coords.ndim != 3 or coords.shape[0] != self.batch_size or coords.shape[-1] != 2:
            raise ValueError(f"coords must be ({self.batch_size}, N, 2), got {tuple(coords.shape)}")
        theta = self.theta.to(coords.dtype)
        out = coords @ theta[:, :, :2].transpose(1, 2) + theta[:, None, :, 2]  # (B, N, 2)
        if self.tps:
            ctrl = self.control_points.to(coords.dtype)
            dist = (coords[:, :, None, :] - ctrl[None, None]).abs().sum(-1)  # (B, N, P) L1 distances as in FOMM
            basis = dist**2 * torch.log(dist + 1e-6)
            out = out + (basis * self.control_params.to(coords.dtype)).sum(-1, keepdim=True)
        return out

    def transform_frame(self, frame: torch.Tensor) -> torch.Tensor:
        """d'(p) = d(T(p)): resample ``frame`` (B, C, H, W) (reflection padding)."""
        b, _, h, w = frame.shape
        grid = coordinate_grid_2d(h, w, frame).reshape(1, h * w, 2).expand(b, -1, -1)
        grid = self.warp_coordinates(grid).reshape(b, h, w, 2)
        return F.grid_sample(frame, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


class EquivarianceLoss(nn.Module):
    """L_E = mean |x[:, :, :2] - T(x'[:, :, :2])| for keypoints x of a frame and x' of its warp by T."""

    def forward(self, kp: torch.Tensor, kp_warped: torch.Tensor, transform: RandomTPS) -> torch.Tensor:
        """L_E for one batch.

        Args:
            kp: (B, K, 3) keypoints of the frame (only x, y are used).
            kp_warped: (B, K, 3) keypoints of ``transform.transform_frame(frame)``.
            transform: the warp T.
        """
        if kp.shape != kp_warped.shape or kp.ndim != 3:
            raise ValueError(f"keypoints must both be (B, K, 3): {tuple(kp.shape)} vs {tuple(kp_warped.shape)}")
        return (kp[..., :2] - transform.warp_coordinates(kp_warped[..., :2])).abs().mean()
