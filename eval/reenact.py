"""Batched reenactment for evaluation: a checkpoint -> generated frames (LivePortrait Sec. 3.1-3.2 inference path).

Per source: F(s) and M(s) once. Per batch of driving frames: M(d), driving keypoints with the official relative
motion rule (``lp_train.keypoints.relative_motion``: rotation, expression, scale and translation relative to the
first driving frame; ``relative_motion: false`` uses the driving frame's absolute pose and expression with the
source's canonical keypoints), optional stitching S, then ``LivePortrait.warp_decode``. In self-reenactment the
first driving frame is the source itself, so relative and absolute motion agree on pose.
"""

from __future__ import annotations

import logging
import os

import hydra
import torch
import torch.nn.functional as F
from omegaconf import DictConfig

from lp_train.checkpoint import load_strict, read_model_state
from lp_train.keypoints import MotionInfo, apply_stitching, keypoints_from_motion, relative_motion, stitching_input
from lp_train.models.liveportrait import LivePortrait

log = logging.getLogger(__name__)
HEADS = "stitching_retargeting_module."


def load_model(cfg: DictConfig, device: torch.device) -> tuple[LivePortrait, bool]:
    """Build ``cfg.model`` and strictly load ``cfg.checkpoint`` (our file, a Lightning .ckpt or the official folder).

    A checkpoint without stage-2 heads (stage 1) drops the model's heads. Returns (model in eval mode, has_heads).
    """
    if not cfg.get("checkpoint"):
        raise ValueError("lp-eval: set checkpoint=/path/to/model.pt (ours, a Lightning .ckpt or the official folder)")
    model: LivePortrait = hydra.utils.instantiate(cfg.model)
    sd = read_model_state(cfg.checkpoint, cfg.get("checkpoint_prefix"))
    has_heads = any(k.startswith(HEADS) for k in sd)
    if not has_heads:
        model.stitching_retargeting_module = None
    load_strict(model, sd, f"checkpoint {cfg.checkpoint}")
    return model.to(device).eval().requires_grad_(False), has_heads


def _repeat(info: MotionInfo, n: int) -> MotionInfo:
    return MotionInfo(**{k: v.expand(n, *v.shape[1:]) for k, v in vars(info).items()})


def to_tensor(frames, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """List of (H, W, 3) uint8 RGB -> (B, 3, size, size) float [0, 1] (antialiased bilinear resize)."""
    x = torch.stack([torch.from_numpy(f) for f in frames]).permute(0, 3, 1, 2).float().div(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).to(device)


class Reenactor:
    """Drives one source with batches of driving frames.

    Args:
        model: LivePortrait in eval mode.
        stitching: apply S (needs the stage-2 heads).
        relative: official relative motion (else absolute driving motion).
    """

    def __init__(self, model: LivePortrait, stitching: bool, relative: bool = True) -> None:
        if stitching and model.stitching_retargeting_module is None:
            raise ValueError("stitching=true needs a checkpoint with stage-2 heads; set stitching=false (or auto)")
        self.model, self.stitching, self.relative = model, stitching, relative
        self.device = next(model.parameters()).device
        self._src: tuple | None = None
        self._drv0: MotionInfo | None = None

    @torch.no_grad()
    def set_source(self, source: torch.Tensor) -> None:
        """source (1, 3, S, S) in [0, 1] at the model's input size."""
        source = source.to(self.device)
        info = self.model.motion(source)
        self._src = (self.model.extract_feature(source), info, keypoints_from_motion(info))
        self._drv0 = None

    @torch.no_grad()
    def drive(self, driving: torch.Tensor) -> torch.Tensor:
        """driving (B, 3, S, S) in [0, 1] (the first batch's first frame is the reference frame) -> (B, 3, 2S, 2S)."""
        if self._src is None:
            raise RuntimeError("Reenactor.drive called before set_source")
        f_s, src, x_s = self._src
        b = driving.shape[0]
        drv = self.model.motion(driving.to(self.device))
        if self._drv0 is None:
            self._drv0 = MotionInfo(**{k: v[:1] for k, v in vars(drv).items()})
        src_b = _repeat(src, b)
        if self.relative:
            x_d = relative_motion(src_b, drv, _repeat(self._drv0, b))
        else:
            x_d = keypoints_from_motion(drv, kp_c=src_b.kp)
        x_sb = x_s.expand(b, -1, -1)
        if self.stitching:
            x_d = apply_stitching(x_d, self.model.stitching_retargeting_module.stitching(stitching_input(x_sb, x_d)))
        out = self.model.warp_decode(f_s.expand(b, *f_s.shape[1:]), x_sb, x_d)["image"]
        return out.clamp(0, 1)


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda (this rank's LOCAL_RANK device) if available, else cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")
