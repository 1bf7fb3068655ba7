"""ArcFace face-recognition backbone: the improved ResNet ("IResNet") of insightface's ``arcface_torch``
(Deng et al., "ArcFace: Additive Angular Margin Loss for Deep Face Recognition", CVPR 2019; Duta et al.,
"Improved Residual Networks", 2020), written from the architecture description.

Used by stage 1's face-identity loss (cosine distance of embeddings, LivePortrait Sec. 3.1) and by CSIM in
evaluation. Attribute names equal insightface's released ``backbone.pth`` state dicts (``conv1``, ``bn1``,
``prelu``, ``layer1..4`` of ``IBasicBlock`` with ``bn1/conv1/bn2/prelu/conv2/bn3/downsample``, ``bn2``, ``fc``,
``features``), so e.g. the glint360k / ms1mv3 ``r100`` weights load strictly through ``lp_train.weights``
(``weights.face_id``). Input: RGB 112² face crops in [0, 1] (normalised to [-1, 1] inside); output: 512-d
embeddings (not L2-normalised).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

IRESNET_LAYERS = {"r18": (2, 2, 2, 2), "r34": (3, 4, 6, 3), "r50": (3, 4, 14, 3), "r100": (3, 13, 30, 3)}


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """Pre-BN residual block: BN → conv3x3 → BN → PReLU → conv3x3(stride) → BN, plus the (projected) input.

    Args:
        inplanes: input channels.
        planes: output channels.
        stride: stride of the second conv (and of the projection).
    """

    def __init__(self, inplanes: int, planes: int, stride: int = 1):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-5)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-5)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-5)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, kernel_size=1, stride=stride, bias=False), nn.BatchNorm2d(planes, eps=1e-5)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (x if self.downsample is None else self.downsample(x))


class IResNet(nn.Module):
    """ArcFace IResNet: stem conv → 4 stages (stride 2 each) → BN → flatten → FC → BN1d (the embedding).

    Args:
        layers: blocks per stage (``IRESNET_LAYERS["r100"]`` for the released r100).
        widths: channels per stage (64, 128, 256, 512 in every released model; smaller only for random tests).
        num_features: embedding size (512).
        input_size: face crop side (112); the FC sees (input_size / 16)² positions.
        dropout: dropout before the FC (0 at inference).
    """

    def __init__(
        self,
        layers: Sequence[int] = IRESNET_LAYERS["r100"],
        widths: Sequence[int] = (64, 128, 256, 512),
        num_features: int = 512,
        input_size: int = 112,
        dropout: float = 0.0,
    ):
        super().__init__()
        if len(layers) != 4 or len(widths) != 4:
            raise ValueError(f"IResNet needs 4 stages, got layers={list(layers)} widths={list(widths)}")
        if input_size % 16:
            raise ValueError(f"input_size must be a multiple of 16, got {input_size}")
        self.input_size = input_size
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0], eps=1e-5)
        self.prelu = nn.PReLU(widths[0])
        cin = widths[0]
        for i, (n, w) in enumerate(zip(layers, widths, strict=True)):
            blocks = [IBasicBlock(cin, w, stride=2)] + [IBasicBlock(w, w) for _ in range(n - 1)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            cin = w
        self.bn2 = nn.BatchNorm2d(cin, eps=1e-5)
        self.dropout = nn.Dropout(p=dropout)
        self.fc = nn.Linear(cin * (input_size // 16) ** 2, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-5)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``image`` (B, 3, input_size, input_size) RGB in [0, 1] -> (B, num_features) embeddings."""
        if image.ndim != 4 or image.shape[1:] != (3, self.input_size, self.input_size):
            raise ValueError(f"ArcFace expects (B, 3, {self.input_size}, {self.input_size}), got {tuple(image.shape)}")
        x = self.prelu(self.bn1(self.conv1(image * 2 - 1)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))
