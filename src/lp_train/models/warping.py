"""Warping module W (paper Sec. 3.1, Eq. 3 context): warp the source feature volume f_s from x_s to x_d with the
dense motion field, fold depth into channels and project to the 2D feature map the SPADE decoder G consumes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lp_train.models.blocks import SameBlock2d, assert_shape
from lp_train.models.dense_motion import DenseMotionNetwork


class WarpingNetwork(nn.Module):
    """W: (f_s (B, C, D, H, W), x_s (B, K, 3), x_d (B, K, 3)) -> dict(out (B, 256, H, W), deformation, occlusion_map).

    Args:
        num_kp: number of implicit keypoints K.
        block_expansion: base width; the output has block_expansion * 2**num_down_blocks channels.
        max_features: channels of the folded volume (C * D).
        num_down_blocks: as in F (sets the output width).
        reshape_channel: channels C of f_s.
        reshape_depth: depth D of f_s.
        estimate_occlusion_map: predict and apply the occlusion map.
        dm_block_expansion: dense-motion hourglass base width.
        dm_max_features: dense-motion hourglass max width.
        dm_num_blocks: dense-motion hourglass levels.
        dm_compress: dense-motion compressed channels.
        dm_mask_kernel_size: dense-motion mask conv kernel (official 7; the 7³ conv is most of W's cost at small
            widths).
        dm_occlusion_kernel_size: dense-motion occlusion conv kernel (official 7).
    """

    def __init__(
        self,
        num_kp: int = 21,
        block_expansion: int = 64,
        max_features: int = 512,
        num_down_blocks: int = 2,
        reshape_channel: int = 32,
        reshape_depth: int = 16,
        estimate_occlusion_map: bool = True,
        dm_block_expansion: int = 32,
        dm_max_features: int = 1024,
        dm_num_blocks: int = 5,
        dm_compress: int = 4,
        dm_mask_kernel_size: int = 7,
        dm_occlusion_kernel_size: int = 7,
    ):
        super().__init__()
        self.num_kp = num_kp
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.dense_motion_network = DenseMotionNetwork(
            num_kp=num_kp,
            feature_channel=reshape_channel,
            reshape_depth=reshape_depth,
            compress=dm_compress,
            block_expansion=dm_block_expansion,
            max_features=dm_max_features,
            num_blocks=dm_num_blocks,
            estimate_occlusion_map=estimate_occlusion_map,
            mask_kernel_size=dm_mask_kernel_size,
            occlusion_kernel_size=dm_occlusion_kernel_size,
        )
        out_ch = block_expansion * (2**num_down_blocks)
        self.out_channels = out_ch
        self.third = SameBlock2d(max_features, out_ch, lrelu=True)
        self.fourth = nn.Conv2d(out_ch, out_ch, kernel_size=1)

    def forward(
        self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor
    ) -> dict[str, torch.Tensor | None]:
        assert_shape(feature_3d, (None, self.reshape_channel, self.reshape_depth, None, None), "W feature_3d")
        b = feature_3d.shape[0]
        assert_shape(kp_source, (b, self.num_kp, 3), "W kp_source")
        assert_shape(kp_driving, (b, self.num_kp, 3), "W kp_driving")
        dense = self.dense_motion_network(feature_3d, kp_driving=kp_driving, kp_source=kp_source)
        deformation = dense["deformation"]  # (B, D, H, W, 3)
        out = F.grid_sample(feature_3d, deformation, align_corners=False)  # (B, C, D, H, W)
        _, c, d, h, w = out.shape
        out = self.fourth(self.third(out.view(b, c * d, h, w)))  # (B, 256, H, W)
        occlusion = dense.get("occlusion_map")
        if occlusion is not None:
            out = out * occlusion
        return {"out": out, "deformation": deformation, "occlusion_map": occlusion, "mask": dense["mask"]}
