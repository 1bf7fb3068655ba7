"""LivePortrait's inference sequence, written once (paper Sec. 3, Fig. 2; the official ``live_portrait_wrapper``):
motion -> relative motion -> eye / lip retargeting -> stitching -> warp + decode.

- ``load_liveportrait``: build nothing, load anything: our model file, a Lightning ``.ckpt`` or the official folder,
  with or without the stage-2 heads (``lp_train.checkpoint.load_model_weights``).
- ``Driver``: one source's appearance and motion, then driving keypoints for any batch of driving motions and the
  generated images. lp-animate (batch 1, per frame), lp-eval (batches of driving frames) and the demo use it.
- ``stitch`` / ``retarget_delta``: the two head applications, shared with stage-2 training (differentiable).

All images are (B, 3, S, S) float in [0, 1] at the model's input size; keypoints (B, K, 3).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from lp_train.checkpoint import load_model_weights
from lp_train.keypoints import (
    MotionInfo,
    apply_stitching,
    keypoints_from_motion,
    relative_motion,
    retarget_input,
    stitching_input,
)
from lp_train.models.liveportrait import LivePortrait


def load_liveportrait(
    model: LivePortrait, path: str | os.PathLike, prefix: str | None = None, heads: bool | None = None
) -> LivePortrait:
    """Strictly load ``path`` into ``model`` and return it in eval mode without gradients. Without stage-2 heads in
    the file (and ``heads`` not True) the model's ``stitching_retargeting_module`` is dropped, so nothing random is
    left in it. ``heads``: see ``load_model_weights`` (True requires them)."""
    if not load_model_weights(model, path, prefix, heads=heads) or heads is False:
        model.stitching_retargeting_module = None
    return model.eval().requires_grad_(False)


def stitch(net: nn.Module, x_s: torch.Tensor, x_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Stitching S: (x_d with S's Δ applied, Δ (B, 3K + 2))."""
    delta = net(stitching_input(x_s, x_d))
    return apply_stitching(x_d, delta), delta


def retarget_delta(net: nn.Module, x_s: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
    """Eye or lip retargeting R: the keypoint offset (B, K, 3) for condition ``ratios`` (source ratios + target)."""
    return net(retarget_input(x_s, ratios)).view_as(x_s)


def repeat_motion(info: MotionInfo, n: int) -> MotionInfo:
    """A batch-1 motion expanded to batch ``n`` (views, no copies)."""
    return MotionInfo(**{k: v.expand(n, *v.shape[1:]) for k, v in vars(info).items()})


@dataclass
class Source:
    """What the sequence needs of one source image: f_s = F(s), its motion M(s) and keypoints x_s."""

    feature: torch.Tensor  # (1, C, D, H, W)
    motion: MotionInfo
    keypoints: torch.Tensor  # (1, K, 3)


class Driver:
    """The inference sequence on one LivePortrait.

    Args:
        model: LivePortrait (eval mode, on its device); ``stitching_retargeting_module`` None for a stage-1 model.
        stitching: apply S to every driving keypoint set (needs the stage-2 heads).
        relative: motion relative to the first driving frame (the official default), else the driving frame's
            absolute pose and expression on the source's canonical keypoints.
    """

    def __init__(self, model: LivePortrait, stitching: bool = True, relative: bool = True) -> None:
        if stitching and model.stitching_retargeting_module is None:
            raise ValueError("stitching needs a checkpoint with the stage-2 heads; set stitching=false")
        self.model, self.stitching, self.relative = model, stitching, relative
        self.heads = model.stitching_retargeting_module
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def source(self, image: torch.Tensor) -> Source:
        """F and M on a (1, 3, S, S) source."""
        image = image.to(self.device)
        info = self.model.motion(image)
        return Source(self.model.extract_feature(image), info, keypoints_from_motion(info))

    @torch.no_grad()
    def motion(self, images: torch.Tensor) -> MotionInfo:
        """M on (B, 3, S, S) driving images."""
        return self.model.motion(images.to(self.device))

    @torch.no_grad()
    def keypoints(
        self,
        src: Source,
        drv: MotionInfo,
        drv0: MotionInfo | None,
        eye: torch.Tensor | None = None,
        lip: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Driving keypoints (B, K, 3) for the source: relative motion (against the first driving frame ``drv0``,
        batch 1; absolute when ``drv0`` is None or ``relative`` is off), + R_eyes / R_lip offsets for the
        conditions ``eye`` / ``lip`` ((1, 3) / (1, 2): source ratios then the target ratio), then stitching."""
        b = drv.kp.shape[0]
        src_b, x_s = repeat_motion(src.motion, b), src.keypoints.expand(b, -1, -1)
        if self.relative and drv0 is not None:
            x_d = relative_motion(src_b, drv, repeat_motion(drv0, b))
        else:
            x_d = keypoints_from_motion(drv, kp_c=src_b.kp)
        for name, cond in (("eye", eye), ("lip", lip)):
            if cond is not None:
                if self.heads is None:
                    raise ValueError(f"{name} retargeting needs a checkpoint with the stage-2 heads")
                x_d = x_d + retarget_delta(getattr(self.heads, name), x_s, cond.to(x_s).expand(b, -1))
        if self.stitching:
            x_d = stitch(self.heads.stitching, x_s, x_d)[0]
        return x_d

    @torch.no_grad()
    def warp(self, src: Source, x_d: torch.Tensor) -> torch.Tensor:
        """W: the warped feature volume for driving keypoints x_d (B, K, 3)."""
        b = x_d.shape[0]
        f_s, x_s = src.feature.expand(b, *src.feature.shape[1:]), src.keypoints.expand(b, -1, -1)
        return self.model.warping_module(f_s, kp_source=x_s, kp_driving=x_d)["out"]

    @torch.no_grad()
    def decode(self, warped: torch.Tensor) -> torch.Tensor:
        """G: (B, 3, 2S, 2S) images in [0, 1]."""
        return self.model.spade_generator(warped).clamp(0, 1)

    def generate(self, src: Source, x_d: torch.Tensor) -> torch.Tensor:
        """W then G."""
        return self.decode(self.warp(src, x_d))
