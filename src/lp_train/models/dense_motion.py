"""Dense motion network inside W (paper Sec. 3.1; face vid2vid Sec. 3.2): from K implicit keypoints of source and
driving, predict a 3D flow field (softmax-weighted mix of K+1 sparse motions) and a 2D occlusion map.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lp_train.models.blocks import Hourglass, kp2gaussian, make_coordinate_grid


class DenseMotionNetwork(nn.Module):
    """Dense motion: compressed f_s warped by K+1 zero-order sparse motions + Gaussian heatmap differences -> hourglass.

    Args:
        num_kp: number of implicit keypoints K.
        feature_channel: channels C of the appearance volume f_s.
        reshape_depth: depth D of the volume (occlusion conv sees C_out * D channels).
        compress: channels of the compressed volume fed to the hourglass.
        block_expansion: hourglass base width.
        max_features: hourglass max width.
        num_blocks: hourglass levels.
        estimate_occlusion_map: predict the occlusion map.
        kp_variance: variance of the keypoint Gaussians (normalised coordinates).
        mask_kernel_size: kernel of the 3D conv predicting the K+1 motion masks (official 7).
        occlusion_kernel_size: kernel of the 2D occlusion conv (official 7).
    """

    def __init__(
        self,
        num_kp: int = 21,
        feature_channel: int = 32,
        reshape_depth: int = 16,
        compress: int = 4,
        block_expansion: int = 32,
        max_features: int = 1024,
        num_blocks: int = 5,
        estimate_occlusion_map: bool = True,
        kp_variance: float = 0.01,
        mask_kernel_size: int = 7,
        occlusion_kernel_size: int = 7,
    ):
        super().__init__()
        self.num_kp = num_kp
        self.kp_variance = kp_variance
        self.hourglass = Hourglass(block_expansion, (num_kp + 1) * (compress + 1), num_blocks, max_features)
        self.mask = nn.Conv3d(
            self.hourglass.out_filters, num_kp + 1, kernel_size=mask_kernel_size, padding=mask_kernel_size // 2
        )
        self.compress = nn.Conv3d(feature_channel, compress, kernel_size=1)
        self.norm = nn.BatchNorm3d(compress, affine=True)
        self.occlusion = (
            nn.Conv2d(
                self.hourglass.out_filters * reshape_depth,
                1,
                kernel_size=occlusion_kernel_size,
                padding=occlusion_kernel_size // 2,
            )
            if estimate_occlusion_map
            else None
        )

    def sparse_motions(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        """Identity grid + one zero-order flow per keypoint: (B, K+1, D, H, W, 3) sampling positions in the source."""
        b, _, d, h, w = feature.shape
        grid = make_coordinate_grid((d, h, w), kp_source).view(1, 1, d, h, w, 3)
        kp_flow = grid - kp_driving.view(b, self.num_kp, 1, 1, 1, 3) + kp_source.view(b, self.num_kp, 1, 1, 1, 3)
        return torch.cat([grid.expand(b, 1, d, h, w, 3), kp_flow], dim=1)

    def deformed_features(self, feature: torch.Tensor, motions: torch.Tensor) -> torch.Tensor:
        """Warp the compressed volume by each sparse motion: (B, K+1, c, D, H, W)."""
        b, c, d, h, w = feature.shape
        k1 = self.num_kp + 1
        rep = feature.unsqueeze(1).expand(b, k1, c, d, h, w).reshape(b * k1, c, d, h, w)
        out = F.grid_sample(rep, motions.reshape(b * k1, d, h, w, 3), align_corners=False)
        return out.view(b, k1, c, d, h, w)

    def heatmaps(
        self, spatial: tuple[int, int, int], kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> torch.Tensor:
        """Gaussian(driving) - Gaussian(source), with a zero background channel: (B, K+1, 1, D, H, W)."""
        heat = kp2gaussian(kp_driving, spatial, self.kp_variance) - kp2gaussian(kp_source, spatial, self.kp_variance)
        zeros = heat.new_zeros(heat.shape[0], 1, *spatial)
        return torch.cat([zeros, heat], dim=1).unsqueeze(2)

    def forward(
        self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        b, _, d, h, w = feature.shape
        feature = F.relu(self.norm(self.compress(feature)))  # (B, compress, D, H, W)
        motions = self.sparse_motions(feature, kp_driving, kp_source)  # (B, K+1, D, H, W, 3)
        deformed = self.deformed_features(feature, motions)  # (B, K+1, compress, D, H, W)
        heat = self.heatmaps((d, h, w), kp_driving, kp_source)  # (B, K+1, 1, D, H, W)
        inp = torch.cat([heat, deformed], dim=2).view(b, -1, d, h, w)  # (B, (K+1)(compress+1), D, H, W)
        prediction = self.hourglass(inp)  # (B, out_filters, D, H, W)
        mask = F.softmax(self.mask(prediction), dim=1)  # (B, K+1, D, H, W)
        deformation = (motions.permute(0, 1, 5, 2, 3, 4) * mask.unsqueeze(2)).sum(dim=1)  # (B, 3, D, H, W)
        out = {"mask": mask, "deformation": deformation.permute(0, 2, 3, 4, 1)}  # deformation (B, D, H, W, 3)
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))  # (B, 1, H, W)
        return out
