"""Face-identity loss (LivePortrait Sec. 3.1: "face-id loss"): the cosine distance between ArcFace embeddings of
the generated face and the ground-truth face, ``mean(1 − cos(e(ŷ_face), e(y_face)))``, target embedding without
gradient.

Faces are the loader's face boxes cropped (square, ``lp_train.losses.regions``) and resampled to the network's
input (112²). ArcFace is normally fed 5-point-aligned crops; the LivePortrait crop is already roll-normalised and
centred, so the box crop is a close, differentiable stand-in. Weights: ``weights.face_id`` through the registry
(an insightface ``arcface_torch`` iresnet state dict), ``random`` for tests.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lp_train.losses.regions import crop_boxes
from lp_train.teachers.arcface import IRESNET_LAYERS, IResNet
from lp_train.weights import load_into


def cosine_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """mean over the batch of 1 − cos(a_i, b_i) for (B, D) embeddings."""
    if a.shape != b.shape or a.ndim != 2:
        raise ValueError(f"embeddings must both be (B, D): {tuple(a.shape)} vs {tuple(b.shape)}")
    return (1 - F.cosine_similarity(a, b, dim=1, eps=1e-8)).mean()


class FaceIdentityLoss(nn.Module):
    """Cosine distance of face embeddings of prediction and target face crops.

    Args:
        embedder: a frozen face-recognition network mapping (B, 3, S, S) in [0, 1] to (B, D) (``arcface``).
        input_size: crop side fed to ``embedder``.
    """

    def __init__(self, embedder: nn.Module, input_size: int = 112):
        super().__init__()
        self.embedder = embedder.requires_grad_(False).eval()
        self.input_size = input_size

    def train(self, mode: bool = True) -> FaceIdentityLoss:
        return super().train(False)  # frozen BatchNorm statistics

    def forward(self, pred: torch.Tensor, target: torch.Tensor, face_boxes: torch.Tensor) -> torch.Tensor:
        """Mean cosine distance of the face embeddings.

        Args:
            pred: (B, 3, H, W) generated image in [0, 1].
            target: (B, 3, H, W) ground truth.
            face_boxes: (B, 4) normalised face boxes of the target.
        """
        e_pred = self.embedder(crop_boxes(pred, face_boxes, self.input_size))
        with torch.no_grad():
            e_target = self.embedder(crop_boxes(target, face_boxes, self.input_size))
        return cosine_distance(e_pred.float(), e_target.float())


def arcface(
    weights: str,
    arch: str = "r100",
    widths: Sequence[int] = (64, 128, 256, 512),
    num_features: int = 512,
    input_size: int = 112,
) -> IResNet:
    """Build the ArcFace IResNet and fill it from ``weights.face_id`` (a local file, or ``random``; logged).

    Args:
        weights: ``weights.face_id``.
        arch: ``r18`` / ``r34`` / ``r50`` / ``r100`` (must match the file).
        widths: stage widths (released models: 64, 128, 256, 512).
        num_features: embedding size.
        input_size: crop side.
    """
    if arch not in IRESNET_LAYERS:
        raise ValueError(f"unknown ArcFace arch {arch!r}; choose one of {sorted(IRESNET_LAYERS)}")
    net = IResNet(IRESNET_LAYERS[arch], widths=widths, num_features=num_features, input_size=input_size)
    net.weights_info = load_into(net, "face_id", weights)
    return net
