"""Appearance feature extractor F (paper Sec. 3.1, Fig. 2): source image -> 3D appearance feature volume f_s."""

from __future__ import annotations

import torch
from torch import nn

from lp_train.models.blocks import DownBlock2d, ResBlock3d, SameBlock2d, assert_shape


class AppearanceFeatureExtractor(nn.Module):
    """F: (B, 3, H, W) image in [0, 1] -> (B, C, D, H/4, W/4) feature volume (official: 32x16x64x64 at 256²).

    Args:
        image_channel: input image channels.
        block_expansion: width of the first 2D conv.
        num_down_blocks: number of 2x downsampling blocks.
        max_features: channels before the reshape to 3D (= reshape_channel * reshape_depth).
        reshape_channel: channels C of the feature volume.
        reshape_depth: depth D of the feature volume.
        num_resblocks: pre-activation 3D residual blocks after the reshape.
    """

    def __init__(
        self,
        image_channel: int = 3,
        block_expansion: int = 64,
        num_down_blocks: int = 2,
        max_features: int = 512,
        reshape_channel: int = 32,
        reshape_depth: int = 16,
        num_resblocks: int = 6,
    ):
        super().__init__()
        if reshape_channel * reshape_depth != max_features:
            raise ValueError(
                f"reshape_channel*reshape_depth must equal max_features, got {reshape_channel}*{reshape_depth}"
                f" != {max_features}"
            )
        self.image_channel = image_channel
        self.reshape_channel = reshape_channel
        self.reshape_depth = reshape_depth
        self.first = SameBlock2d(image_channel, block_expansion)
        blocks, out_features = [], block_expansion
        for i in range(num_down_blocks):
            cin = min(max_features, block_expansion * (2**i))
            out_features = min(max_features, block_expansion * (2 ** (i + 1)))
            blocks.append(DownBlock2d(cin, out_features))
        self.down_blocks = nn.ModuleList(blocks)
        self.second = nn.Conv2d(out_features, max_features, kernel_size=1)
        self.resblocks_3d = nn.Sequential()
        for i in range(num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(reshape_channel))

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        assert_shape(source_image, (None, self.image_channel, None, None), "AppearanceFeatureExtractor input")
        if not source_image.is_floating_point():
            raise TypeError(f"AppearanceFeatureExtractor expects a float image in [0,1], got {source_image.dtype}")
        out = self.first(source_image)  # (B, 64, H, W)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)  # (B, 512, H/4, W/4)
        b, _, h, w = out.shape
        f_s = out.view(b, self.reshape_channel, self.reshape_depth, h, w)  # (B, C, D, H/4, W/4)
        return self.resblocks_3d(f_s)
