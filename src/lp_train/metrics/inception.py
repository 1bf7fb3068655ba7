"""The FID feature extractor: pytorch-fid's InceptionV3 with the TF-ported FID weights, loaded from a local file.

FID (Heusel et al. 2017) is only comparable across papers when computed with the same network: the TensorFlow
Inception graph of 2015-12-05 ported to PyTorch by pytorch-fid (``pt_inception-2015-12-05-6726825d.pth``), its
FID-specific blocks (``FIDInceptionA/C/E_1/E_2``), bilinear resize to 299² and [0, 1] -> [-1, 1] scaling, pool3
(2048-d) features. We use pytorch-fid's own ``InceptionV3`` class; only the weight source changes: pytorch-fid's
``fid_inception_v3()`` downloads the weights, so while constructing we substitute a builder that is line-for-line
``fid_inception_v3()`` but loads the registry file ``weights.inception_fid`` (strictly) — or keeps torchvision's
initialisation for ``random`` — a fixed seeded He initialisation (uncalibrated, tests only).
"""

from __future__ import annotations

import os
from unittest import mock

import torch
from torch import nn

from lp_train import weights as W

RANDOM_SEED = 0  # ``random`` weights are a fixed network, so cached reference statistics stay valid


def _fid_inception_v3(state_dict) -> nn.Module:
    """pytorch_fid.inception.fid_inception_v3 with a given state dict instead of a download (None: random)."""
    from pytorch_fid import inception as pfi

    net = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
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
        from pytorch_fid import inception as pfi

        if dims not in pfi.InceptionV3.BLOCK_INDEX_BY_DIM:
            raise ValueError(f"FID dims must be one of {sorted(pfi.InceptionV3.BLOCK_INDEX_BY_DIM)}, got {dims}")
        state, self.weights_info = W.load_state("inception_fid", weights)
        with mock.patch.object(pfi, "fid_inception_v3", lambda: _fid_inception_v3(state)):
            self.net = pfi.InceptionV3(
                [pfi.InceptionV3.BLOCK_INDEX_BY_DIM[dims]],
                resize_input=True,
                normalize_input=True,
                use_fid_inception=True,
            )
        self.net.eval().requires_grad_(False)
        self.dims = dims

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FIDInception: expected (B, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
        dev = next(self.net.parameters()).device
        feat = self.net(images.to(dev).float())[0]  # (B, dims, h, w); pool3 is 1x1
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
