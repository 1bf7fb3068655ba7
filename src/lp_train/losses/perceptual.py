"""Cascaded multi-scale perceptual loss (LivePortrait Sec. 3.1 "cascaded loss terms": perceptual loss on the full
image, the face and the lips; the multi-scale VGG19 form is FOMM Sec. 3.3 / face vid2vid Sec. 3.3).

For an image pyramid (``scales``) and VGG19 activations relu1_1 ... relu5_1 (``layers``):

    L_P(x, y) = Σ_scale Σ_layer w_layer · mean |φ_layer(x_scale) − φ_layer(y_scale)|

with the target's features computed without gradient. The cascade applies it to three views: the full image, the
face crop and the lip crop (regions from the loader's boxes, ``lp_train.losses.regions``). VGG19 is torchvision's
architecture (``torchvision.models.vgg.make_layers(cfgs["E"])``, i.e. ``vgg19(weights=None).features`` without the
120M-parameter classifier that a perceptual loss never runs) filled from ``weights.vgg19`` (the torchvision
``vgg19-dcbb9e9d.pth`` file; its ``features.*`` tensors, strictly) by the local-weights registry. ``random`` is
allowed for tests and logged loudly.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs, make_layers

from lp_train.checkpoint import load_strict
from lp_train.losses.regions import region_crop
from lp_train.weights import load_state

# index of each ReLU in torchvision's vgg19().features
VGG19_RELU = {"relu1_1": 1, "relu2_1": 6, "relu3_1": 11, "relu4_1": 20, "relu5_1": 29}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class VGG19Features(nn.Module):
    """Frozen VGG19 returning the activations at ``layers`` for images in [0, 1] (ImageNet normalisation inside).

    Args:
        weights: ``weights.vgg19``: a local torchvision VGG19 file (vgg19-dcbb9e9d.pth) or ``random``.
        layers: ReLU outputs to return (keys of ``VGG19_RELU``); the network is cut after the deepest one.
    """

    def __init__(self, weights: str, layers: Sequence[str] = tuple(VGG19_RELU)):
        super().__init__()
        unknown = set(layers) - set(VGG19_RELU)
        if unknown or not layers:
            raise ValueError(f"unknown VGG19 layers {sorted(unknown)}; choose from {list(VGG19_RELU)}")
        net = nn.Module()
        net.features = make_layers(cfgs["E"], batch_norm=False)  # = torchvision vgg19().features
        for m in net.features.modules():
            if isinstance(m, nn.Conv2d):  # torchvision's VGG init (used as is with `random`)
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
        sd, self.info = load_state("vgg19", weights)
        if sd is not None:
            load_strict(net, {k: v for k, v in sd.items() if k.startswith("features.")}, f"weights.vgg19 ({weights})")
        self.ends = sorted(VGG19_RELU[name] for name in layers)
        self.features = net.features[: self.ends[-1] + 1]
        self.features.requires_grad_(False).eval()
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def train(self, mode: bool = True) -> VGG19Features:
        return super().train(False)  # always frozen

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        out = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.ends:
                out.append(x)
        return out


class MultiScalePerceptualLoss(nn.Module):
    """L_P on one view (see module docstring).

    Args:
        features: a network returning a list of feature maps (``VGG19Features``, or a small fixed network in tests).
        scales: pyramid scales (1 = input size), bilinear antialiased downsampling.
        layer_weights: weight per returned feature map (None = all 1).
    """

    def __init__(
        self,
        features: nn.Module,
        scales: Sequence[float] = (1.0, 0.5, 0.25, 0.125),
        layer_weights: Sequence[float] | None = None,
    ):
        super().__init__()
        self.features = features
        self.scales = list(scales)
        self.layer_weights = None if layer_weights is None else list(layer_weights)

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if pred.shape != target.shape:
            raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
        total = pred.new_zeros(())
        for s in self.scales:
            x, y = pred, target
            if s != 1:  # (in fp32: the antialiased kernel has no bf16/fp16 CPU implementation)
                x = F.interpolate(pred.float(), scale_factor=s, mode="bilinear", align_corners=False, antialias=True)
                y = F.interpolate(target.float(), scale_factor=s, mode="bilinear", align_corners=False, antialias=True)
            fx = self.features(x)
            with torch.no_grad():
                fy = self.features(y.detach())
            weights = self.layer_weights or [1.0] * len(fx)
            if len(weights) != len(fx):
                raise ValueError(f"{len(weights)} layer weights for {len(fx)} feature maps")
            for w, a, b in zip(weights, fx, fy, strict=True):
                total = total + w * (a - b).abs().mean()
        return total


class CascadedPerceptualLoss(nn.Module):
    """L_P on the full image and on region crops: returns ``{"full": ..., "face": ..., "lips": ...}``.

    Args:
        perceptual: the per-view loss (shared VGG for every view).
        crop_sizes: region -> crop side in pixels (e.g. ``{"face": 256, "lips": 128}`` for 512² outputs).
    """

    def __init__(self, perceptual: MultiScalePerceptualLoss, crop_sizes: Mapping[str, int]):
        super().__init__()
        self.perceptual = perceptual
        self.crop_sizes = dict(crop_sizes)

    def forward(self, pred: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor) -> dict[str, torch.Tensor]:
        """L_P of every view.

        Args:
            pred: (B, 3, H, W) generated image in [0, 1].
            target: (B, 3, H, W) ground truth.
            boxes: (B, 3, 4) normalised [face, eyes, lips] boxes of the target.
        """
        out = {"full": self.perceptual(pred, target)}
        for region, size in self.crop_sizes.items():
            out[region] = self.perceptual(
                region_crop(pred, boxes, region, size), region_crop(target, boxes, region, size)
            )
        return out
