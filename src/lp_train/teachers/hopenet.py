"""Hopenet head-pose network (Ruiz et al., "Fine-Grained Head Pose Estimation Without Keypoints", CVPR-W 2018):
a ResNet-50 trunk with three 66-bin classifiers (yaw, pitch, roll; 3° bins, degrees = 3·E[bin] − 99).

Used only as the optional pose *teacher* of stage 1's head-pose loss L_H (LivePortrait Sec. 3.1 / face vid2vid
Sec. 3.3 use a pretrained pose estimator). Attribute names equal the released Hopenet state dicts
(``conv1``, ``bn1``, ``layer1..4``, ``fc_yaw``, ``fc_pitch``, ``fc_roll``, ``fc_finetune``), so e.g.
``hopenet_robust_alpha1.pkl`` (re-saved as a plain state dict) loads strictly through ``lp_train.weights``.
Input: RGB face crops, ImageNet-normalised, 224².
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Hopenet(nn.Module):
    """ResNet trunk + yaw/pitch/roll bin heads.

    Args:
        layers: blocks per ResNet stage (Hopenet: ResNet-50 = (3, 4, 6, 3)).
        bottleneck: Bottleneck blocks (ResNet-50) or BasicBlocks (small test variants).
        num_bins: bins per angle (66).
    """

    def __init__(self, layers: tuple[int, ...] = (3, 4, 6, 3), bottleneck: bool = True, num_bins: int = 66):
        super().__init__()
        block = Bottleneck if bottleneck else BasicBlock
        trunk = ResNet(block, list(layers))
        for name in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4", "avgpool"):
            setattr(self, name, getattr(trunk, name))
        width = 512 * block.expansion
        self.num_bins = num_bins
        self.fc_yaw = nn.Linear(width, num_bins)
        self.fc_pitch = nn.Linear(width, num_bins)
        self.fc_roll = nn.Linear(width, num_bins)
        self.fc_finetune = nn.Linear(width + 3, 3)  # present in the released files; unused at inference
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """``image`` (B, 3, H, W) RGB in [0, 1] -> dict of (B, num_bins) logits ``yaw``, ``pitch``, ``roll``."""
        x = (image - self.mean) / self.std
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = torch.flatten(self.avgpool(x), 1)
        return {"yaw": self.fc_yaw(x), "pitch": self.fc_pitch(x), "roll": self.fc_roll(x)}

    def degrees(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3) Hopenet angles (yaw, pitch, roll) in Hopenet's own convention, degrees."""
        out = self.forward(image)
        idx = torch.arange(self.num_bins, dtype=image.dtype, device=image.device)
        return torch.stack([(out[k].softmax(1) * idx).sum(1) * 3 - 99 for k in ("yaw", "pitch", "roll")], dim=1)
