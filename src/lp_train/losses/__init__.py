"""Stage-1 loss terms of LivePortrait (paper Sec. 3.1-3.2), each a small pure function or nn.Module returning a
scalar (or a dict of named scalars for the cascaded terms), and ``Stage1Loss``, the objective that combines them with
their weights. No loss owns a trained network or sees the trainer (frozen feature extractors are injected)."""

from lp_train.losses.equivariance import EquivarianceLoss, RandomTPS
from lp_train.losses.gan import discriminator_loss, feature_matching_loss, generator_loss
from lp_train.losses.guide import LandmarkGuideLoss, wing
from lp_train.losses.head_pose import HeadPoseLoss, PoseTeacher
from lp_train.losses.identity import FaceIdentityLoss, arcface, cosine_distance
from lp_train.losses.perceptual import CascadedPerceptualLoss, MultiScalePerceptualLoss, VGG19Features
from lp_train.losses.pixel import pixel_l1
from lp_train.losses.priors import DeformationPriorLoss, KeypointPriorLoss
from lp_train.losses.regions import crop_boxes, region_crop
from lp_train.losses.stage1 import DISCRIMINATOR_REGION, Stage1Loss, generator_terms

__all__ = [
    "DISCRIMINATOR_REGION",
    "CascadedPerceptualLoss",
    "DeformationPriorLoss",
    "EquivarianceLoss",
    "FaceIdentityLoss",
    "HeadPoseLoss",
    "KeypointPriorLoss",
    "LandmarkGuideLoss",
    "MultiScalePerceptualLoss",
    "PoseTeacher",
    "RandomTPS",
    "Stage1Loss",
    "VGG19Features",
    "arcface",
    "cosine_distance",
    "crop_boxes",
    "discriminator_loss",
    "feature_matching_loss",
    "generator_loss",
    "generator_terms",
    "pixel_l1",
    "region_crop",
    "wing",
]
