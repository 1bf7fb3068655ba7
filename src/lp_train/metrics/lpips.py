"""LPIPS (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a Perceptual Metric"), the
perceptual self-reenactment metric of LivePortrait (Sec. 4.2, Table 2).

Computed by the reference implementation itself, the ``lpips`` package (v0.1 linear layers shipped in its wheel),
on inputs scaled from [0, 1] to [-1, 1]; backbone ``alex`` by default (the LPIPS authors' recommendation for a
forward metric), ``vgg`` selectable. The package would download the torchvision backbone, so we construct it with
``pnet_rand=True`` and load torchvision's ImageNet weights (``alexnet-owt-7be5be79.pth`` / ``vgg16-397923af.pth``)
from the local-weights registry (``weights.alexnet`` / ``weights.vgg16``). With ``random`` the metric is
uncalibrated (tests only).
"""

from __future__ import annotations

import inspect
import os
import warnings
from importlib import metadata
from pathlib import Path

import torch
import torchvision
from torch import nn

from lp_train import weights as W
from lp_train.metrics.base import FrameMetric, check_images, weights_record

# LPIPS net name -> (weights registry entry, torchvision constructor)
BACKBONES = {"alex": ("alexnet", torchvision.models.alexnet), "vgg": ("vgg16", torchvision.models.vgg16)}


def build_lpips(
    net: str = "alex", backbone_weights: str | os.PathLike | None = None
) -> tuple[nn.Module, W.WeightsInfo]:
    """The ``lpips.LPIPS`` network with its wheel's linear layers and a registry-loaded torchvision backbone.

    Args:
        net: ``alex`` or ``vgg``.
        backbone_weights: ``weights.alexnet`` / ``weights.vgg16`` value: a local torchvision state dict or ``random``.
    """
    import lpips

    if net not in BACKBONES:
        raise ValueError(f"lpips: net must be one of {sorted(BACKBONES)}, got {net!r}")
    entry, ctor = BACKBONES[net]
    with warnings.catch_warnings():  # lpips calls torchvision with the deprecated `pretrained=` argument
        warnings.simplefilter("ignore", UserWarning)
        model = lpips.LPIPS(net=net, pnet_rand=True, verbose=False, eval_mode=True)  # linear layers: from the wheel
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # ``random`` = one fixed backbone, so uncalibrated runs are at least repeatable
        tv = ctor(weights=None)
    info = W.load_into(tv, entry, backbone_weights)
    for slice_ in (getattr(model.net, f"slice{i}") for i in range(1, model.net.N_slices + 1)):
        for idx, layer in slice_.named_children():  # lpips names each layer by its index in tv.features
            layer.load_state_dict(tv.features[int(idx)].state_dict())
    model.requires_grad_(False)
    return model.eval(), info


class LPIPS(FrameMetric):
    """Mean per-frame LPIPS distance (↓) of [0, 1] images.

    Args:
        net: backbone, ``alex`` (default) or ``vgg``.
        weights: local torchvision backbone file for ``net`` (registry ``weights.alexnet`` / ``weights.vgg16``) or
            ``random`` (uncalibrated).
    """

    name = "lpips"
    higher_is_better = False

    def __init__(self, net: str = "alex", weights: str | os.PathLike | None = None) -> None:
        super().__init__()
        self.net_name = net
        self.model, self.weights_info = build_lpips(net, weights)

    @torch.no_grad()
    def score(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        check_images(preds, target, self.name)
        dev = next(self.model.parameters()).device
        d = self.model(preds.to(dev).float() * 2 - 1, target.to(dev).float() * 2 - 1)  # lpips wants [-1, 1]
        return d.reshape(-1).double()

    def info(self) -> dict:
        import lpips

        lin = Path(inspect.getfile(lpips.LPIPS)).parent / "weights" / "v0.1" / f"{self.net_name}.pth"
        rec = weights_record(self.weights_info)
        return {
            "implementation": f"lpips {metadata.version('lpips')} LPIPS(net={self.net_name!r}, version=0.1)",
            "weights": f"{rec['weights']}; linear layers {lin.name} from the lpips wheel",
            "calibrated": rec["calibrated"],
            "settings": {"net": self.net_name, "input_range": "[-1, 1] (scaled from [0, 1])", "spatial": False},
        }
