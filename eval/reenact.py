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

from lp_train.inference import Driver, Source, load_liveportrait
from lp_train.keypoints import MotionInfo
from lp_train.models.liveportrait import LivePortrait

log = logging.getLogger(__name__)


def load_model(cfg: DictConfig, device: torch.device) -> tuple[LivePortrait, bool]:
    """Build ``cfg.model`` and strictly load ``cfg.checkpoint`` (our file, a Lightning .ckpt or the official folder).

    A checkpoint without stage-2 heads (stage 1) drops the model's heads. Returns (model in eval mode, has_heads).
    """
    if not cfg.get("checkpoint"):
        raise ValueError("lp-eval: set checkpoint=/path/to/model.pt (ours, a Lightning .ckpt or the official folder)")
    model = load_liveportrait(hydra.utils.instantiate(cfg.model), cfg.checkpoint, cfg.get("checkpoint_prefix"))
    return model.to(device), model.stitching_retargeting_module is not None


def to_tensor(frames, size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """List of (H, W, 3) uint8 RGB -> (B, 3, size, size) float [0, 1] (antialiased bilinear resize)."""
    x = torch.stack([torch.from_numpy(f) for f in frames]).permute(0, 3, 1, 2).float().div(255.0)
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return x.clamp(0, 1).to(device)


class Reenactor:
    """Drives one source with batches of driving frames (``lp_train.inference.Driver``).

    Args:
        model: LivePortrait in eval mode.
        stitching: apply S (needs the stage-2 heads).
        relative: official relative motion (else absolute driving motion).
    """

    def __init__(self, model: LivePortrait, stitching: bool, relative: bool = True) -> None:
        if stitching and model.stitching_retargeting_module is None:
            raise ValueError("stitching=true needs a checkpoint with stage-2 heads; set stitching=false (or auto)")
        self.driver = Driver(model, stitching, relative)
        self.model, self.device = model, self.driver.device
        self.stitching, self.relative = stitching, relative
        self.source: Source | None = None
        self.drv0: MotionInfo | None = None

    def set_source(self, source: torch.Tensor) -> None:
        """source (1, 3, S, S) in [0, 1] at the model's input size."""
        self.source, self.drv0 = self.driver.source(source), None

    def drive(self, driving: torch.Tensor) -> torch.Tensor:
        """driving (B, 3, S, S) in [0, 1] (the first batch's first frame is the reference frame) -> (B, 3, 2S, 2S)."""
        if self.source is None:
            raise RuntimeError("Reenactor.drive called before set_source")
        drv = self.driver.motion(driving)
        if self.drv0 is None:
            self.drv0 = MotionInfo(**{k: v[:1] for k, v in vars(drv).items()})
        return self.driver.generate(self.source, self.driver.keypoints(self.source, drv, self.drv0))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda (this rank's LOCAL_RANK device) if available, else cpu."""
    if name != "auto":
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")
