"""Implicit-keypoint math of LivePortrait (paper Sec. 3.1 Eq. 1-2, Sec. 3.2 Eq. 4-6), the one place it is written.

Used by training, evaluation and animation alike:

- head pose: 66 bins per angle, degrees = 3 * Σ softmax(bins)_i * i - 97.5;
- rotation: R = Rz(roll) · Ry(yaw) · Rx(pitch); keypoints are row vectors, so ``rotation_matrix`` returns Rᵀ
  and points transform as ``x @ rotation_matrix(...)``;
- driving keypoints: x = s · (x_c · Rᵀ + δ) + t with the source's canonical x_c, and t_z = 0;
- stitching: Δ[:, :3K] added to every keypoint, Δ[:, 3K:3K+2] added to x and y of all keypoints;
- relative motion (animation): pose, expression, scale and translation taken relative to the first driving frame.

Precision: under bf16 / fp16 autocast (``trainer.precision=bf16-mixed``, half-precision animation) M's head outputs
are parsed in float32 and the rotation / keypoint transforms run with autocast off, so the keypoints stay float32,
as in the official inference code (it casts M's outputs to float before the keypoint math).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

NUM_BINS = 66


def _autocast_enabled(t: torch.Tensor) -> bool:
    """Whether autocast (mixed precision) is on for ``t``'s device."""
    device = t.device.type
    return torch.amp.is_autocast_available(device) and torch.is_autocast_enabled(device)


def _autocast_off(t: torch.Tensor) -> contextlib.AbstractContextManager:
    """Autocast disabled on ``t``'s device while it is enabled there (matmuls would otherwise run in bf16/fp16)."""
    return torch.autocast(t.device.type, enabled=False) if _autocast_enabled(t) else contextlib.nullcontext()


def headpose_bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """(B, 66) bin logits -> (B,) degrees (expected bin under softmax, 3° bins centred at -97.5 + 3i)."""
    if logits.ndim != 2 or logits.shape[1] != NUM_BINS:
        raise ValueError(f"head-pose logits must be (B, {NUM_BINS}), got {tuple(logits.shape)}")
    idx = torch.arange(NUM_BINS, dtype=logits.dtype, device=logits.device)
    return (F.softmax(logits, dim=1) * idx).sum(dim=1) * 3 - 97.5


def degrees_to_bin(deg: torch.Tensor) -> torch.Tensor:
    """Degrees -> the index of the 3° bin holding them (clamped to [0, 65]); the inverse of the bin centres."""
    return ((deg + 99.0) / 3.0).floor().clamp(0, NUM_BINS - 1).long()


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """Angles in degrees, each (B,) or (B, 1) -> (B, 3, 3) = (Rz(roll) Ry(yaw) Rx(pitch))ᵀ, for ``x @ R``."""
    p, y, r = (a.reshape(-1) * (math.pi / 180.0) for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    rx = torch.stack([one, zero, zero, zero, p.cos(), -p.sin(), zero, p.sin(), p.cos()], 1).view(-1, 3, 3)
    ry = torch.stack([y.cos(), zero, y.sin(), zero, one, zero, -y.sin(), zero, y.cos()], 1).view(-1, 3, 3)
    rz = torch.stack([r.cos(), -r.sin(), zero, r.sin(), r.cos(), zero, zero, zero, one], 1).view(-1, 3, 3)
    with _autocast_off(p):
        return (rz @ ry @ rx).transpose(1, 2)


@dataclass
class MotionInfo:
    """M's output in physical units: canonical kp (B, K, 3), pose in degrees (B,), t (B, 3), δ (B, K, 3), s (B, 1).

    ``pitch_logits`` etc. keep the raw bins for the head-pose loss.
    """

    kp: torch.Tensor
    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    t: torch.Tensor
    exp: torch.Tensor
    scale: torch.Tensor
    pitch_logits: torch.Tensor
    yaw_logits: torch.Tensor
    roll_logits: torch.Tensor

    @property
    def rotation(self) -> torch.Tensor:
        return rotation_matrix(self.pitch, self.yaw, self.roll)

    def split(self, size: int) -> tuple[MotionInfo, ...]:
        """Split along the batch axis into chunks of ``size`` (e.g. source and driving run through M together)."""
        parts = {k: v.split(size) for k, v in vars(self).items()}
        return tuple(MotionInfo(**{k: v[i] for k, v in parts.items()}) for i in range(len(parts["kp"])))


def parse_motion(raw: dict[str, torch.Tensor]) -> MotionInfo:
    """Turn the motion extractor's raw head outputs (kp, exp as (B, 3K); pose as bins) into a ``MotionInfo``;
    float32 under autocast (a network whose weights are themselves bf16/fp16 keeps its dtype)."""
    missing = {"kp", "exp", "pitch", "yaw", "roll", "t", "scale"} - raw.keys()
    if missing:
        raise KeyError(f"motion extractor output lacks {sorted(missing)}")
    if _autocast_enabled(raw["kp"]):
        raw = {k: v.float() for k, v in raw.items()}
    b = raw["kp"].shape[0]
    if raw["kp"].shape[-1] % 3:
        raise ValueError(f"kp must hold 3K values, got {tuple(raw['kp'].shape)}")
    return MotionInfo(
        kp=raw["kp"].reshape(b, -1, 3),
        pitch=headpose_bins_to_degrees(raw["pitch"]),
        yaw=headpose_bins_to_degrees(raw["yaw"]),
        roll=headpose_bins_to_degrees(raw["roll"]),
        t=raw["t"],
        exp=raw["exp"].reshape(b, -1, 3),
        scale=raw["scale"],
        pitch_logits=raw["pitch"],
        yaw_logits=raw["yaw"],
        roll_logits=raw["roll"],
    )


def transform_keypoints(
    kp_c: torch.Tensor, rot: torch.Tensor, exp: torch.Tensor, scale: torch.Tensor, t: torch.Tensor
) -> torch.Tensor:
    """x = s · (x_c @ R + δ) + [t_x, t_y, 0]; kp_c and exp (B, K, 3), rot (B, 3, 3), scale (B, 1), t (B, 3)."""
    if kp_c.ndim != 3 or kp_c.shape[-1] != 3 or exp.shape != kp_c.shape:
        raise ValueError(f"kp_c and exp must both be (B, K, 3), got {tuple(kp_c.shape)} and {tuple(exp.shape)}")
    if _autocast_enabled(kp_c):  # mixed precision: the keypoint math in float32, whatever dtype the inputs have
        with _autocast_off(kp_c):
            return transform_keypoints(kp_c.float(), rot.float(), exp.float(), scale.float(), t.float())
    x = (kp_c @ rot + exp) * scale.reshape(-1, 1, 1)
    shift = torch.cat([t[:, :2], torch.zeros_like(t[:, 2:3])], dim=1)  # t_z = 0
    return x + shift[:, None, :]


def keypoints_from_motion(info: MotionInfo, kp_c: torch.Tensor | None = None) -> torch.Tensor:
    """x for a frame from its MotionInfo, using ``kp_c`` (the source's canonical keypoints) when given."""
    return transform_keypoints(info.kp if kp_c is None else kp_c, info.rotation, info.exp, info.scale, info.t)


def stitching_input(x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
    """S's input: flattened x_s ⧺ x_d -> (B, 6K)."""
    return torch.cat([x_s.flatten(1), x_d.flatten(1)], dim=1)


def retarget_input(x_s: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
    """R's input: flattened x_s ⧺ ratios ((B, 3) for eyes: 2 source + 1 target; (B, 2) for lips)."""
    return torch.cat([x_s.flatten(1), ratios.reshape(x_s.shape[0], -1)], dim=1)


def apply_stitching(x_d: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """x_d (B, K, 3) + Δ (B, 3K+2): per-keypoint offsets plus a shared (Δtx, Δty) shift."""
    b, k, _ = x_d.shape
    if delta.shape != (b, 3 * k + 2):
        raise ValueError(f"stitching Δ must be (B, {3 * k + 2}), got {tuple(delta.shape)}")
    shift = torch.cat([delta[:, 3 * k :], torch.zeros_like(delta[:, :1])], dim=1)  # (B, 3), z unchanged
    return x_d + delta[:, : 3 * k].view(b, k, 3) + shift[:, None, :]


def relative_motion(src: MotionInfo, drv: MotionInfo, drv0: MotionInfo) -> torch.Tensor:
    """Driving keypoints for the source, with motion relative to the first driving frame (animation default):
    R = (R_d R_d0ᵀ) R_s, δ = δ_s + δ_d - δ_d0, s = s_s · s_d / s_d0, t = t_s + t_d - t_d0 (t_z = 0).
    """
    r_d, r_d0 = drv.rotation, drv0.rotation
    with _autocast_off(r_d):
        rot = (r_d @ r_d0.transpose(1, 2)) @ src.rotation
    exp = src.exp + (drv.exp - drv0.exp)
    scale = src.scale * (drv.scale / drv0.scale)
    t = src.t + (drv.t - drv0.t)
    return transform_keypoints(src.kp, rot, exp, scale, t)
