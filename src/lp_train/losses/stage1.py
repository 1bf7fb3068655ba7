"""The stage-1 objective as one object (``conf/loss/stage1*.yaml`` builds it): every generator term, its weight,
the discriminators' losses and the image regions they judge. ``Stage1Module`` owns the networks and the optimisation
phases and asks this object for losses; nothing else computes a stage-1 loss.

Generator terms (logged as ``train/g/<term>``)::

    perceptual_{full,face,lips}   cascaded multi-scale VGG19 perceptual loss     (paper Sec. 3.1 "cascaded loss terms")
    gan_{global,face,lip}         adversarial loss of each discriminator             (hinge by default)
    fm_{global,face,lip}          discriminator feature matching
    equivariance                  L_E on the driving frame under a random TPS warp
    keypoint_prior                L_L on x_s and x_d
    head_pose                     L_H (pose teacher if configured, else landmark pseudo labels)
    deformation                   L_Δ on δ_s and δ_d
    identity                      ArcFace cosine distance on the face crop
    guide                         L_guide Wing loss, 10 landmarks vs 10 keypoints of x_s and x_d (Sec. 3.2)
    l1                            pixel L1 (not in the paper; 0 in the paper config, used by the CPU configs)

Discriminator terms: ``d_{global,face,lip}``. A weight of 0 switches a term off: it is not computed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from lp_train.keypoints import keypoints_from_motion
from lp_train.losses.equivariance import EquivarianceLoss, RandomTPS
from lp_train.losses.gan import discriminator_loss, feature_matching_loss, generator_loss, mean_logit
from lp_train.losses.guide import LandmarkGuideLoss
from lp_train.losses.head_pose import HeadPoseLoss, PoseTeacher
from lp_train.losses.identity import FaceIdentityLoss
from lp_train.losses.perceptual import CascadedPerceptualLoss
from lp_train.losses.pixel import pixel_l1
from lp_train.losses.priors import DeformationPriorLoss, KeypointPriorLoss
from lp_train.losses.regions import region_crop

DISCRIMINATOR_REGION = {"global": None, "face": "face", "lip": "lips"}  # discriminator -> region it judges
# frozen third-party networks inside the loss: rebuilt from weights.* at start-up, never written into checkpoints
FROZEN_CHILDREN = ("perceptual", "identity", "pose_teacher")


def generator_terms(discriminators: Mapping[str, Any]) -> tuple[str, ...]:
    """Names of every generator loss term for a set of discriminators."""
    gan = tuple(f"{k}_{d}" for d in discriminators for k in ("gan", "fm"))
    return (
        "perceptual_full", "perceptual_face", "perceptual_lips", *gan, "equivariance", "keypoint_prior",
        "head_pose", "deformation", "identity", "guide", "l1",
    )  # fmt: skip


class Stage1Loss(nn.Module):
    """Stage-1 losses and their weights.

    Args:
        weights: weight per generator term (``generator_terms``) and per discriminator (``d_<name>``); a term left
            out weighs 0. A nonzero weight of a term the run cannot have (e.g. ``gan_face`` without a face
            discriminator) is an error, raised by ``bind``.
        perceptual: cascaded VGG19 perceptual loss.
        identity: ArcFace identity loss (None: the term must weigh 0).
        head_pose: L_H.
        pose_teacher: pose teacher (None: the loader's landmark pseudo labels ``*_pose``).
        equivariance: L_E.
        keypoint_prior: L_L.
        deformation: L_Δ.
        guide: L_guide.
        gan_loss: ``hinge`` / ``lsgan`` / ``nonsaturating``.
        crop_sizes: region crop sides of the cascaded and region-GAN losses, e.g. ``{"face": 256, "lips": 128}``.
        equivariance_warp: ``RandomTPS`` options of L_E (sigma_affine, sigma_tps, points_tps).
    """

    def __init__(
        self,
        weights: Mapping[str, float],
        perceptual: CascadedPerceptualLoss,
        identity: FaceIdentityLoss | None,
        head_pose: HeadPoseLoss,
        pose_teacher: PoseTeacher | None,
        equivariance: EquivarianceLoss,
        keypoint_prior: KeypointPriorLoss,
        deformation: DeformationPriorLoss,
        guide: LandmarkGuideLoss,
        gan_loss: str,
        crop_sizes: Mapping[str, int],
        equivariance_warp: Mapping[str, float],
    ):
        super().__init__()
        self.given_weights = {k: float(v) for k, v in weights.items()}
        self.weights: dict[str, float] = {}  # every term of this run, set by ``bind``
        self.perceptual, self.identity, self.head_pose, self.pose_teacher = (
            perceptual,
            identity,
            head_pose,
            pose_teacher,
        )
        self.equivariance, self.keypoint_prior, self.deformation, self.guide = (
            equivariance, keypoint_prior, deformation, guide,
        )  # fmt: skip
        self.gan_loss = gan_loss
        self.crop_sizes = dict(crop_sizes)
        self.equivariance_warp = dict(equivariance_warp)

    def bind(self, discriminators: Mapping[str, Any]) -> dict[str, float]:
        """Check the weights against the run's discriminators and fill in the zeros: -> ``self.weights``."""
        unknown_d = set(discriminators) - set(DISCRIMINATOR_REGION)
        if unknown_d:
            raise ValueError(
                f"unknown discriminators {sorted(unknown_d)}; expected keys of {list(DISCRIMINATOR_REGION)}"
            )
        known = set(generator_terms(discriminators)) | {f"d_{d}" for d in discriminators}
        unknown = sorted(k for k, v in self.given_weights.items() if k not in known and v != 0.0)
        if unknown:
            raise ValueError(f"unknown loss weights {unknown}; known terms: {sorted(known)}")
        self.weights = {k: self.given_weights.get(k, 0.0) for k in sorted(known)}
        if self.weights["identity"] and self.identity is None:
            raise ValueError("loss weight 'identity' > 0 but no identity loss (ArcFace) is configured")
        return self.weights

    def uncalibrated(self) -> list[str]:
        """Names of the third-party networks running on RANDOM weights (their terms are uncalibrated)."""
        infos = (
            getattr(self.perceptual.perceptual.features, "info", None),
            getattr(getattr(self.identity, "embedder", None), "weights_info", None),
            getattr(self.pose_teacher, "info", None),
        )
        return [info.name for info in infos if info is not None and not info.calibrated]

    def total(self, terms: Mapping[str, torch.Tensor], prefix: str = "") -> torch.Tensor:
        """Weighted sum of ``terms`` (keys without ``prefix``; the discriminators' under ``d_``)."""
        return sum(self.weights[prefix + k] * v for k, v in terms.items())

    # ------------------------------------------------------------------------------------------------ terms
    def gan_inputs(self, name: str, pred: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor):
        """What discriminator ``name`` sees: the whole images, or their face / lip crops."""
        region = DISCRIMINATOR_REGION[name]
        if region is None:
            return pred, target
        size = self.crop_sizes[region]
        return region_crop(pred, boxes, region, size), region_crop(target, boxes, region, size)

    def pose_targets(self, batch: Mapping[str, torch.Tensor], side: str) -> torch.Tensor:
        if self.pose_teacher is not None:
            return self.pose_teacher(batch[f"{side}_hr"], batch[f"{side}_boxes"][:, 0])
        return batch[f"{side}_pose"]

    def generator_losses(
        self, model: nn.Module, batch: Mapping[str, torch.Tensor], out: dict, discriminators: Mapping[str, nn.Module]
    ) -> dict[str, torch.Tensor]:
        """Every generator term with a nonzero weight. ``model`` re-runs M for L_E; ``discriminators``: those whose
        GAN terms are on at this step (empty before the GAN phase starts)."""
        w = self.weights
        pred, target, boxes = out["image"], batch["driving_hr"], batch["driving_boxes"]
        terms: dict[str, torch.Tensor] = {}
        if any(w[f"perceptual_{r}"] for r in ("full", "face", "lips")):
            terms.update({f"perceptual_{k}": v for k, v in self.perceptual(pred, target, boxes).items()})
        for name, disc in discriminators.items():
            fake_in, real_in = self.gan_inputs(name, pred, target, boxes)
            fake_out = disc(fake_in)
            terms[f"gan_{name}"] = generator_loss(fake_out, self.gan_loss)
            if w[f"fm_{name}"]:
                with torch.no_grad():
                    real_out = disc(real_in)
                terms[f"fm_{name}"] = feature_matching_loss(real_out, fake_out)
        x_s, x_d = out["x_s"], out["x_d"]
        if w["equivariance"]:
            warp = RandomTPS(pred.shape[0], device=pred.device, **self.equivariance_warp)
            kp_warped = keypoints_from_motion(model.motion(warp.transform_frame(batch["driving"])))
            terms["equivariance"] = self.equivariance(keypoints_from_motion(out["drv"]), kp_warped, warp)
        if w["keypoint_prior"]:
            terms["keypoint_prior"] = (self.keypoint_prior(x_s) + self.keypoint_prior(x_d)) / 2
        if w["head_pose"]:
            src_t, drv_t = self.pose_targets(batch, "source"), self.pose_targets(batch, "driving")
            terms["head_pose"] = (self.head_pose(out["src"], src_t) + self.head_pose(out["drv"], drv_t)) / 2
        if w["deformation"]:
            terms["deformation"] = self.deformation(out["src"].exp, out["drv"].exp)
        if w["identity"]:
            terms["identity"] = self.identity(pred, target, boxes[:, 0])
        if w["l1"]:
            terms["l1"] = pixel_l1(pred, target)
        if w["guide"]:
            terms["guide"] = (
                self.guide(x_s, batch["source_landmarks"]) + self.guide(x_d, batch["driving_landmarks"])
            ) / 2
        return terms

    def discriminator_losses(
        self, discriminators: Mapping[str, nn.Module], pred: torch.Tensor, target: torch.Tensor, boxes: torch.Tensor
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """-> (loss per discriminator, mean real/fake logits for the logs); ``pred`` should be detached."""
        terms, scores = {}, {}
        for name, disc in discriminators.items():
            fake_in, real_in = self.gan_inputs(name, pred, target, boxes)
            real_out, fake_out = disc(real_in), disc(fake_in)
            terms[name] = discriminator_loss(real_out, fake_out, self.gan_loss)
            scores[f"real_{name}"] = mean_logit(real_out)
            scores[f"fake_{name}"] = mean_logit(fake_out)
        return terms, scores
