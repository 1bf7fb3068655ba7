"""Motion extractor M (paper Sec. 3.1, Eq. 1-2): ConvNeXt V2 backbone with heads for canonical keypoints x_c,
head pose (66 bins each for pitch / yaw / roll), translation t, expression deformation δ and scale s.

The backbone is written here (not timm's) so that its parameter names match the released
``motion_extractor.pth`` exactly (keys ``detector.downsample_layers.*``, ``detector.stages.*``, ``detector.fc_*``).
"""

from __future__ import annotations

import torch
from torch import nn

from lp_train.models.blocks import GRN, LayerNorm2d, assert_shape


class ConvNeXtV2Block(nn.Module):
    """ConvNeXt V2 block: depthwise 7x7 -> LayerNorm -> MLP (4x) with GRN, residual (no layer scale)."""

    def __init__(self, dim: int, drop_path: float = 0.0):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)  # (B, H, W, C)
        y = self.pwconv2(self.grn(self.act(self.pwconv1(self.norm(y))))).permute(0, 3, 1, 2)  # (B, C, H, W)
        if self.training and self.drop_path > 0:
            keep = 1.0 - self.drop_path
            y = y * x.new_empty(x.shape[0], 1, 1, 1).bernoulli_(keep) / keep
        return x + y


class ConvNeXtV2(nn.Module):
    """ConvNeXt V2 with LivePortrait's seven linear heads.

    Args:
        in_chans: input channels.
        depths: blocks per stage (tiny: 3, 3, 9, 3).
        dims: channels per stage (tiny: 96, 192, 384, 768).
        num_kp: number of implicit keypoints K.
        num_bins: head-pose bins per angle.
        drop_path_rate: stochastic depth rate (0 in the released model).
    """

    def __init__(
        self,
        in_chans: int = 3,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        num_kp: int = 21,
        num_bins: int = 66,
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.in_chans = in_chans
        self.num_kp = num_kp
        stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], kernel_size=4, stride=4), LayerNorm2d(dims[0]))
        self.downsample_layers = nn.ModuleList([stem])
        for i in range(len(dims) - 1):
            self.downsample_layers.append(
                nn.Sequential(LayerNorm2d(dims[i]), nn.Conv2d(dims[i], dims[i + 1], kernel_size=2, stride=2))
            )
        # Python floats: made on the CPU, so that building under a meta (or CUDA) default device works
        rates = torch.linspace(0, drop_path_rate, sum(depths), device="cpu").tolist()
        self.stages = nn.ModuleList()
        cur = 0
        for i, depth in enumerate(depths):
            self.stages.append(nn.Sequential(*[ConvNeXtV2Block(dims[i], rates[cur + j]) for j in range(depth)]))
            cur += depth
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        c = dims[-1]
        self.fc_kp = nn.Linear(c, 3 * num_kp)
        self.fc_scale = nn.Linear(c, 1)
        self.fc_pitch = nn.Linear(c, num_bins)
        self.fc_yaw = nn.Linear(c, num_bins)
        self.fc_roll = nn.Linear(c, num_bins)
        self.fc_t = nn.Linear(c, 3)
        self.fc_exp = nn.Linear(c, 3 * num_kp)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for down, stage in zip(self.downsample_layers, self.stages, strict=True):
            x = stage(down(x))
        return self.norm(x.mean(dim=(-2, -1)))  # global average pool -> (B, C)

    def forward_head(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "kp": self.fc_kp(x),  # (B, 3K) canonical keypoints x_c
            "pitch": self.fc_pitch(x),  # (B, 66) bin logits
            "yaw": self.fc_yaw(x),
            "roll": self.fc_roll(x),
            "t": self.fc_t(x),  # (B, 3)
            "exp": self.fc_exp(x),  # (B, 3K) expression deformation δ
            "scale": self.fc_scale(x),  # (B, 1)
        }

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        assert_shape(x, (None, self.in_chans, None, None), "MotionExtractor input")
        return self.forward_head(self.forward_features(x))


class MotionExtractor(nn.Module):
    """M: wraps the backbone as ``self.detector`` (the official key prefix). Returns raw head outputs.

    Args:
        num_kp: number of implicit keypoints K (official 21).
        num_bins: head-pose bins (official 66).
        depths: ConvNeXt V2 stage depths.
        dims: ConvNeXt V2 stage widths.
        drop_path_rate: stochastic depth rate.
    """

    def __init__(
        self,
        num_kp: int = 21,
        num_bins: int = 66,
        depths: tuple[int, ...] = (3, 3, 9, 3),
        dims: tuple[int, ...] = (96, 192, 384, 768),
        drop_path_rate: float = 0.0,
    ):
        super().__init__()
        self.num_kp = num_kp
        self.detector = ConvNeXtV2(3, tuple(depths), tuple(dims), num_kp, num_bins, drop_path_rate)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.detector(x)
