"""SPADE decoder G (paper Sec. 3.1, "Upgraded network architecture"): warped 2D features -> 512² image via
spectral-normalised SPADE residual blocks and a PixelShuffle(2) output layer (256² features grid -> 512² image).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lp_train.models.blocks import SPADEResnetBlock, assert_shape


class SPADEDecoder(nn.Module):
    """G: (B, C_in, H, W) -> (B, 3, 4H*upscale, 4W*upscale) in [0, 1] (official: 256x64x64 -> 3x512x512).

    Args:
        upscale: 2 adds the conv->PixelShuffle(2) output (256 -> 512); 1 gives a plain conv to 3 channels.
        max_features: caps the input width (as in F/W).
        block_expansion: base width; input width is min(max_features, block_expansion * 2**num_down_blocks).
        out_channels: width of the last SPADE block.
        num_down_blocks: number of downsamplings in F (sets the input width).
        num_middle_blocks: SPADE blocks at the input resolution (official 6).
        spade_hidden: width of every SPADE's shared conv (official 128; most of G's cost at small widths).
    """

    def __init__(
        self,
        upscale: int = 2,
        max_features: int = 512,
        block_expansion: int = 64,
        out_channels: int = 64,
        num_down_blocks: int = 2,
        num_middle_blocks: int = 6,
        spade_hidden: int = 128,
    ):
        super().__init__()
        cin = min(max_features, block_expansion * (2**num_down_blocks))
        self.in_channels = cin
        self.upscale = upscale
        self.fc = nn.Conv2d(cin, 2 * cin, kernel_size=3, padding=1)
        for i in range(num_middle_blocks):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * cin, 2 * cin, cin, spade_hidden))
        self.num_middle_blocks = num_middle_blocks
        self.up_0 = SPADEResnetBlock(2 * cin, cin, cin, spade_hidden)
        self.up_1 = SPADEResnetBlock(cin, out_channels, cin, spade_hidden)
        self.up = nn.Upsample(scale_factor=2)
        if upscale is None or upscale <= 1:
            self.conv_img = nn.Conv2d(out_channels, 3, kernel_size=3, padding=1)
        else:
            self.conv_img = nn.Sequential(
                nn.Conv2d(out_channels, 3 * upscale * upscale, kernel_size=3, padding=1), nn.PixelShuffle(upscale)
            )

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        assert_shape(feature, (None, self.in_channels, None, None), "SPADEDecoder input")
        seg = feature
        x = self.fc(feature)  # (B, 2C, H, W)
        for i in range(self.num_middle_blocks):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(self.up(x), seg)  # (B, C, 2H, 2W)
        x = self.up_1(self.up(x), seg)  # (B, out_channels, 4H, 4W)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))  # (B, 3, 4H*up, 4W*up)
