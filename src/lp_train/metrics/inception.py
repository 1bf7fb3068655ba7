"""The FID feature extractor: pytorch-fid's FID Inception with the TF-ported FID weights, loaded from a local file.

FID (Heusel et al. 2017) is only comparable across papers when computed with the same network: the TensorFlow
Inception graph of 2015-12-05 ported to PyTorch by pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``), its
FID-specific blocks (``FIDInceptionA/C/E_1/E_2``), bilinear resize to 299² and [0, 1] -> [-1, 1] scaling, pool3
(2048-d) features. pytorch-fid builds that network only with downloaded weights, so ``fid_inception_v3`` is its
``fid_inception_v3()`` with a given state dict (the registry file ``weights.inception_fid``, loaded strictly, or a
fixed seeded He initialisation for ``random``: uncalibrated, tests only), and ``FIDInception`` cuts it into
pytorch-fid's ``InceptionV3`` blocks. ``tests/test_metrics_fid.py`` checks the features equal pytorch-fid's own
``InceptionV3`` on the same weights.
"""

from __future__ import annotations

import os

import torch
from pytorch_fid.inception import FIDInceptionA, FIDInceptionC, FIDInceptionE_1, FIDInceptionE_2, InceptionV3
from torch import nn
from torchvision.models import inception_v3

from lp_train import weights as W

RANDOM_SEED = 0  # ``random`` weights are a fixed network, so cached reference statistics stay valid


def fid_inception_v3(state_dict: dict | None) -> nn.Module:
    """pytorch-fid's ``fid_inception_v3()`` with a given state dict instead of a download (None: random)."""
    net = inception_v3(weights=None, aux_logits=False, num_classes=1008, init_weights=False)
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    if state_dict is not None:
        net.load_state_dict(state_dict, strict=True)
    else:  # random (uncalibrated): a fixed He init keeps activations O(1) through 90+ layers
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(RANDOM_SEED)
            for m in net.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return net


class FIDInception(nn.Module):
    """pytorch-fid ``InceptionV3`` features: (B, 3, H, W) in [0, 1] -> (B, dims) float32.

    Args:
        weights: ``weights.inception_fid`` value: a local ``pt_inception-2015-12-05-6726825d.pth`` or ``random``.
        dims: feature layer by width: 2048 (pool3, the standard), 768, 192 or 64.
    """

    def __init__(self, weights: str | os.PathLike | None = None, dims: int = 2048) -> None:
        super().__init__()
        if dims not in InceptionV3.BLOCK_INDEX_BY_DIM:
            raise ValueError(f"FID dims must be one of {sorted(InceptionV3.BLOCK_INDEX_BY_DIM)}, got {dims}")
        state, self.weights_info = W.load_state("inception_fid", weights)
        net = fid_inception_v3(state)
        blocks = [  # pytorch-fid's InceptionV3 blocks: maxpool1, maxpool2, pre-aux, final average pool
            [net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
             net.Mixed_6e],
            [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))],
        ]  # fmt: skip
        last = InceptionV3.BLOCK_INDEX_BY_DIM[dims]
        self.net = nn.Sequential(*(nn.Sequential(*b) for b in blocks[: last + 1]))
        self.net.eval().requires_grad_(False)
        self.dims = dims

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FIDInception: expected (B, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
        dev = next(self.net.parameters()).device
        x = nn.functional.interpolate(images.to(dev).float(), size=(299, 299), mode="bilinear", align_corners=False)
        feat = self.net(2 * x - 1)  # (B, dims, h, w); pool3 is 1x1
        if feat.shape[2:] != (1, 1):  # pytorch-fid's fid_score does the same for the lower blocks
            feat = nn.functional.adaptive_avg_pool2d(feat, (1, 1))
        return feat.flatten(1)

    def info(self) -> dict:
        return {
            "implementation": "pytorch_fid.inception.InceptionV3 (FID Inception, resize 299 bilinear, [-1, 1])",
            "weights": f"{self.weights_info.name}={self.weights_info.source}",
            "calibrated": self.weights_info.calibrated,
            "dims": self.dims,
        }
