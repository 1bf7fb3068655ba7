"""The one place third-party pretrained networks get their weights: a registry of local files configured in Hydra.

lp-train never downloads weights (clusters and CI are often offline). Each pretrained network used by a loss or a
metric names a registry entry; the config (``conf/weights/*.yaml``, key ``weights.<name>``) gives either a local
file path or the explicit word ``random``. A missing file raises ``MissingWeightsError`` naming the config key,
the expected file and how to obtain it. ``random`` is logged loudly and marks dependent metrics "uncalibrated".
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

log = logging.getLogger(__name__)

RANDOM = "random"


@dataclass(frozen=True)
class WeightSpec:
    """What a registry entry expects: the usual file name and where a user obtains it."""

    filename: str
    obtain: str


REGISTRY: dict[str, WeightSpec] = {
    "vgg19": WeightSpec(
        "vgg19-dcbb9e9d.pth",
        "torchvision's VGG19_Weights.IMAGENET1K_V1 file; on a machine with internet: "
        "python -c \"import torchvision; torchvision.models.vgg19(weights='IMAGENET1K_V1')\" then copy it from "
        "~/.cache/torch/hub/checkpoints/",
    ),
    "alexnet": WeightSpec(
        "alexnet-owt-7be5be79.pth",
        "torchvision's AlexNet_Weights.IMAGENET1K_V1 file (the LPIPS 'alex' backbone); obtain it like vgg19",
    ),
    "vgg16": WeightSpec(
        "vgg16-397923af.pth",
        "torchvision's VGG16_Weights.IMAGENET1K_V1 file (the LPIPS 'vgg' backbone); obtain it like vgg19",
    ),
    "inception_fid": WeightSpec(
        "pt_inception-2015-12-05-6726825d.pth",
        "pytorch-fid's FID Inception weights (release asset of the mseitzer/pytorch-fid repository)",
    ),
    "face_id": WeightSpec(
        "arcface_r100.pth",
        "an ArcFace (insightface iresnet100) state dict converted to PyTorch; see docs in conf/weights/default.yaml",
    ),
    "landmark": WeightSpec(
        "landmark_regressor.pt",
        "lp-train's own distilled landmark/ratio regressor (trained from mediapipe's face mesh by the stage-2 "
        "landmark step), or any differentiable landmark network you have",
    ),
    "pose_teacher": WeightSpec(
        "hopenet_robust_alpha1.pth",
        "a head-pose network (e.g. Hopenet / 6DRepNet) state dict; without it stage 1 uses the loader's "
        "landmark-based pose pseudo labels",
    ),
}


class MissingWeightsError(FileNotFoundError):
    """A configured weights file is absent."""


@dataclass(frozen=True)
class WeightsInfo:
    """Where a network's weights came from; ``calibrated`` is False for ``random``."""

    name: str
    source: str
    calibrated: bool


def resolve(name: str, spec: str | os.PathLike | None) -> Path | None:
    """Return the configured file for ``weights.<name>``, or None for ``random``; raise if the file is missing."""
    if name not in REGISTRY:
        raise KeyError(f"unknown weights entry {name!r}; known: {sorted(REGISTRY)}")
    if spec is None or str(spec) == "":
        raise MissingWeightsError(
            f"weights.{name} is not set: give a local file ({REGISTRY[name].filename}; obtain it from "
            f"{REGISTRY[name].obtain}) or the explicit value 'random' (tests only; metrics become uncalibrated)"
        )
    if str(spec) == RANDOM:
        return None
    path = Path(os.path.expanduser(str(spec)))
    if not path.is_file():
        raise MissingWeightsError(
            f"weights.{name} = {path} does not exist. Expected the file {REGISTRY[name].filename}: obtain it from "
            f"{REGISTRY[name].obtain}, then set weights.{name}=/path/to/{REGISTRY[name].filename} "
            f"(or weights.{name}=random for an uncalibrated test run)."
        )
    return path


def load_state(name: str, spec: str | os.PathLike | None) -> tuple[Mapping[str, torch.Tensor] | None, WeightsInfo]:
    """The state dict for ``weights.<name>`` (``weights_only`` load), or None for ``random`` — logged loudly."""
    path = resolve(name, spec)
    if path is None:
        log.warning("weights.%s = random: %s uses RANDOM weights; its outputs are uncalibrated", name, name)
        return None, WeightsInfo(name, RANDOM, calibrated=False)
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, Mapping) and "state_dict" in sd and isinstance(sd["state_dict"], Mapping):
        sd = sd["state_dict"]
    log.info("weights.%s loaded from %s", name, path)
    return sd, WeightsInfo(name, str(path), calibrated=True)


def load_into(module: nn.Module, name: str, spec: str | os.PathLike | None, strict: bool = True) -> WeightsInfo:
    """Load ``weights.<name>`` into ``module`` (kept as initialised for ``random``)."""
    sd, info = load_state(name, spec)
    if sd is not None:
        result = module.load_state_dict(sd, strict=strict)
        if not strict and (result.missing_keys or result.unexpected_keys):
            log.info("weights.%s: missing %s, unexpected %s", name, result.missing_keys[:5], result.unexpected_keys[:5])
    return info
