"""The LivePortrait generator as one module (paper Fig. 2): F, M, W, G and the stage-2 heads S / R.

Sub-module names equal the official checkpoint file stems (``appearance_feature_extractor``, ``motion_extractor``,
``warping_module``, ``spade_generator``, ``stitching_retargeting_module``) so the adapter in
``lp_train.checkpoint`` is a prefix map, not a rename table.
"""

from __future__ import annotations

import torch
from torch import nn

from lp_train.keypoints import MotionInfo, keypoints_from_motion, parse_motion
from lp_train.models.appearance_encoder import AppearanceFeatureExtractor
from lp_train.models.blocks import assert_shape
from lp_train.models.motion_extractor import MotionExtractor
from lp_train.models.spade_generator import SPADEDecoder
from lp_train.models.stitching import StitchingRetargeting
from lp_train.models.warping import WarpingNetwork


class LivePortrait(nn.Module):
    """Container for the networks, built by Hydra from the sub-network configs (dependency injection).

    Args:
        appearance_feature_extractor: F.
        motion_extractor: M.
        warping_module: W.
        spade_generator: G.
        stitching_retargeting_module: S, R_lip, R_eyes (optional; stage 2).
        input_size: side of the square network input (official 256; the output is 2x larger).
    """

    def __init__(
        self,
        appearance_feature_extractor: AppearanceFeatureExtractor,
        motion_extractor: MotionExtractor,
        warping_module: WarpingNetwork,
        spade_generator: SPADEDecoder,
        stitching_retargeting_module: StitchingRetargeting | None = None,
        input_size: int = 256,
    ):
        super().__init__()
        self.input_size = input_size
        self.appearance_feature_extractor = appearance_feature_extractor
        self.motion_extractor = motion_extractor
        self.warping_module = warping_module
        self.spade_generator = spade_generator
        self.stitching_retargeting_module = stitching_retargeting_module

    @property
    def num_kp(self) -> int:
        return self.motion_extractor.num_kp

    def check_image(self, image: torch.Tensor, name: str = "image") -> None:
        """Raise a clear error unless ``image`` is a float (B, 3, input_size, input_size) tensor."""
        assert_shape(image, (None, 3, self.input_size, self.input_size), name)
        if not image.is_floating_point():
            raise TypeError(f"{name}: expected a float tensor in [0, 1], got {image.dtype}")

    def extract_feature(self, image: torch.Tensor) -> torch.Tensor:
        """f_s = F(s): (B, 3, H, W) -> (B, C, D, H/4, W/4)."""
        self.check_image(image, "source")
        return self.appearance_feature_extractor(image)

    def motion(self, image: torch.Tensor) -> MotionInfo:
        """M(image) parsed into keypoints, pose in degrees, translation, expression and scale."""
        self.check_image(image)
        return parse_motion(self.motion_extractor(image))

    def warp_decode(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> dict[str, torch.Tensor]:
        """G(W(f_s; x_s, x_d)) -> dict(image (B, 3, 4H', 4W'), warped, deformation, occlusion_map)."""
        w = self.warping_module(f_s, kp_source=x_s, kp_driving=x_d)
        return {
            "image": self.spade_generator(w["out"]),
            "warped": w["out"],
            "deformation": w["deformation"],
            "occlusion_map": w["occlusion_map"],
        }

    def forward(self, source: torch.Tensor, driving: torch.Tensor) -> dict:
        """Stage-1 reconstruction: drive ``source`` with ``driving`` (both (B, 3, H, W) in [0, 1]).

        x_s and x_d both use the source's canonical keypoints (paper Eq. 2). Returns the prediction and every
        intermediate the losses need.
        """
        self.check_image(source, "source")
        self.check_image(driving, "driving")
        if driving.shape[0] != source.shape[0]:
            raise ValueError(f"source and driving batch sizes differ: {source.shape[0]} vs {driving.shape[0]}")
        f_s = self.extract_feature(source)
        src, drv = self.motion(torch.cat([source, driving])).split(source.shape[0])
        x_s = keypoints_from_motion(src)
        x_d = keypoints_from_motion(drv, kp_c=src.kp)
        out = self.warp_decode(f_s, x_s, x_d)
        out.update(f_s=f_s, src=src, drv=drv, x_s=x_s, x_d=x_d)
        return out
