"""Multi-scale patch discriminators for the cascaded GAN loss (paper Sec. 3.1: global, face and lip discriminators;
face vid2vid / FOMM multi-scale design). Spectral norm on every conv; each scale returns its intermediate features
so the generator can use a feature-matching loss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import spectral_norm


class PatchDiscriminator(nn.Module):
    """One scale: stride-2 4x4 convs (spectral norm, LeakyReLU 0.2) then a 1-channel patch map.

    Args:
        in_channels: image channels.
        block_expansion: width of the first conv.
        num_blocks: number of downsampling convs.
        max_features: width cap.
    """

    def __init__(self, in_channels: int = 3, block_expansion: int = 64, num_blocks: int = 4, max_features: int = 512):
        super().__init__()
        blocks, cin = [], in_channels
        for i in range(num_blocks):
            cout = min(max_features, block_expansion * (2**i))
            stride = 2 if i < num_blocks - 1 else 1
            blocks.append(
                nn.Sequential(
                    spectral_norm(nn.Conv2d(cin, cout, kernel_size=4, stride=stride, padding=1)), nn.LeakyReLU(0.2)
                )
            )
            cin = cout
        self.blocks = nn.ModuleList(blocks)
        self.conv = spectral_norm(nn.Conv2d(cin, 1, kernel_size=4, padding=1))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        feats = []
        for block in self.blocks:
            x = block(x)
            feats.append(x)
        return self.conv(x), feats


class MultiScaleDiscriminator(nn.Module):
    """Patch discriminators on an image pyramid (scale 1, 1/2, ...). Returns [(logits, feats)] per scale.

    Args:
        in_channels: image channels.
        scales: number of pyramid levels.
        block_expansion: width of each scale's first conv.
        num_blocks: convs per scale.
        max_features: width cap.
    """

    def __init__(
        self,
        in_channels: int = 3,
        scales: int = 2,
        block_expansion: int = 64,
        num_blocks: int = 4,
        max_features: int = 512,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.discs = nn.ModuleList(
            PatchDiscriminator(in_channels, block_expansion, num_blocks, max_features) for _ in range(scales)
        )

    def forward(self, x: torch.Tensor) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"discriminator expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        outs = []
        for i, disc in enumerate(self.discs):
            xi = x if i == 0 else F.avg_pool2d(x, kernel_size=2**i)
            outs.append(disc(xi))
        return outs
