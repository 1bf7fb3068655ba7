"""Head-pose loss L_H (LivePortrait Sec. 3.1; face vid2vid Sec. 3.3: the estimated pose is supervised by a
pretrained pose estimator).

M predicts pitch, yaw and roll as 66-bin logits (``lp_train.keypoints``: degrees = 3·E[bin] − 97.5). The loss is

    L_H = l1_weight · mean |θ_pred − θ_target| (radians, over pitch, yaw, roll)
        + ce_weight · mean CE(bins, bin(θ_target))                (Hopenet-style bin classification)

Where the target θ comes from (documented choice, see ``conf/loss/stage1.yaml``):

- a **pose teacher** network when ``weights.pose_teacher`` is set (a Hopenet state dict, or ``random`` in tests):
  ``PoseTeacher`` runs it on the face crop and maps its angles to LivePortrait's convention;
- otherwise the loader's **landmark pseudo labels** ``source_pose`` / ``driving_pose`` (B, 3) = (pitch, yaw,
  roll) in degrees, fitted from the 478 mediapipe landmarks (``lp_train.face.landmarks.head_pose_from_landmarks``).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lp_train.keypoints import MotionInfo, degrees_to_bin
from lp_train.losses.regions import crop_boxes
from lp_train.teachers.hopenet import Hopenet
from lp_train.weights import load_into

log = logging.getLogger(__name__)


class HeadPoseLoss(nn.Module):
    """L_H between M's pose bins and target angles.

    Args:
        l1_weight: weight of the L1 term on the expected angles (radians).
        ce_weight: weight of the cross-entropy term on the target bins.
    """

    def __init__(self, l1_weight: float = 1.0, ce_weight: float = 0.0):
        super().__init__()
        self.l1_weight = l1_weight
        self.ce_weight = ce_weight

    def forward(self, motion: MotionInfo, target: torch.Tensor) -> torch.Tensor:
        """L_H for one frame.

        Args:
            motion: M's output for a batch (uses ``pitch/yaw/roll`` and their logits).
            target: (B, 3) target (pitch, yaw, roll) in degrees.
        """
        pred = torch.stack([motion.pitch, motion.yaw, motion.roll], dim=1)  # (B, 3) degrees
        if target.shape != pred.shape:
            raise ValueError(f"pose target must be {tuple(pred.shape)} (pitch, yaw, roll), got {tuple(target.shape)}")
        target = target.to(pred.dtype).detach()
        loss = self.l1_weight * (pred - target).abs().mean() * (math.pi / 180.0)
        if self.ce_weight:
            logits = (motion.pitch_logits, motion.yaw_logits, motion.roll_logits)
            ce = torch.stack([F.cross_entropy(lg, degrees_to_bin(target[:, i])) for i, lg in enumerate(logits)])
            loss = loss + self.ce_weight * ce.mean()
        return loss


class PoseTeacher(nn.Module):
    """A frozen Hopenet on the face crop -> (B, 3) (pitch, yaw, roll) in LivePortrait's convention, degrees.

    Args:
        weights: ``weights.pose_teacher`` (a local Hopenet state-dict file, or ``random`` for tests).
        layers: Hopenet trunk stages ((3, 4, 6, 3) = the released ResNet-50; smaller only with ``random``).
        bottleneck: Bottleneck blocks (True for the released network).
        input_size: side of the face crop fed to the network (Hopenet: 224).
        signs: multipliers mapping Hopenet's (pitch, yaw, roll) to ours; check them against the landmark labels
            (``lp_train.face.landmarks.head_pose_from_landmarks``) on a few frames when plugging in a new teacher.
    """

    def __init__(
        self,
        weights: str,
        layers: Sequence[int] = (3, 4, 6, 3),
        bottleneck: bool = True,
        input_size: int = 224,
        signs: Sequence[float] = (1.0, 1.0, 1.0),
    ):
        super().__init__()
        self.net = Hopenet(tuple(layers), bottleneck=bottleneck)
        self.info = load_into(self.net, "pose_teacher", weights)
        self.net.requires_grad_(False).eval()
        self.input_size = input_size
        self.register_buffer("signs", torch.tensor(list(signs), dtype=torch.float32), persistent=False)

    def train(self, mode: bool = True) -> PoseTeacher:
        super().train(mode)
        self.net.eval()  # frozen BatchNorm statistics
        return self

    @torch.no_grad()
    def forward(self, images: torch.Tensor, face_boxes: torch.Tensor) -> torch.Tensor:
        """``images`` (B, 3, H, W) in [0, 1], ``face_boxes`` (B, 4) normalised -> (B, 3) degrees."""
        crops = crop_boxes(images.float(), face_boxes.float(), self.input_size)
        yaw_pitch_roll = self.net.degrees(crops)
        return yaw_pitch_roll[:, [1, 0, 2]] * self.signs


def build_pose_teacher(
    weights: str | None,
    layers: Sequence[int] = (3, 4, 6, 3),
    bottleneck: bool = True,
    input_size: int = 224,
    signs: Sequence[float] = (1.0, 1.0, 1.0),
) -> PoseTeacher | None:
    """``PoseTeacher`` when ``weights.pose_teacher`` is set (a file or ``random``), else None (landmark labels)."""
    if weights is None or str(weights) == "":
        log.info("weights.pose_teacher is not set: L_H uses the loader's landmark pose labels")
        return None
    return PoseTeacher(weights, layers=layers, bottleneck=bottleneck, input_size=input_size, signs=signs)
