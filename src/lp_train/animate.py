"""lp-animate: drive a portrait with a video through a trained (or the official) LivePortrait (paper Sec. 3, Fig. 2;
the official inference pipeline's relative motion, stitching and eye/lip retargeting, Sec. 3.2).

Per driving frame: crop the face with the curation crop (``lp_train.crop``) -> M on the driving crop -> keypoints
with motion relative to the first driving frame (``keypoints.relative_motion``; a driving *image* transfers its
absolute pose and expression) -> optional eye / lip retargeting Δ (target ratio: a number, or ``driving`` for the
driving frame's own ratio) -> optional stitching -> W -> G -> paste the crop back into the full source frame with a
feathered mask through the inverse crop affine -> ffmpeg at the driving fps (atomic write). A source *video* is
animated frame by frame (frame i driven by driving frame i).

``lp-animate checkpoint=PATH source=IMG driving=VIDEO [model=tiny] [stitching=false] [eye_ratio=0.3]
[side_by_side=true] [max_frames=N]`` (also ``python -m lp_train.animate``). Config: ``conf/animate.yaml``.
"""

from __future__ import annotations

import itertools
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import hydra
import numpy as np
import torch
from omegaconf import DictConfig
from tqdm import tqdm

from lp_train import landmarks as lm
from lp_train.animate_io import AnimateError, VideoWriter, is_image, probe_video, read_image, read_video
from lp_train.checkpoint import CheckpointError, check_state_dict, read_model_state
from lp_train.cli_errors import UserError, report_user_errors, run_cli
from lp_train.crop import crop_affine, crop_params_from_landmarks, invert_affine, smooth_crop_params, warp_crop
from lp_train.face_detect import FaceDetector
from lp_train.keypoints import (
    MotionInfo,
    apply_stitching,
    keypoints_from_motion,
    relative_motion,
    retarget_input,
    stitching_input,
)
from lp_train.models.liveportrait import LivePortrait

log = logging.getLogger(__name__)
CONF_DIR = str(Path(__file__).resolve().parents[2] / "conf")
HEAD_PREFIX = "stitching_retargeting_module."


# -- model ---------------------------------------------------------------------------------------------------------
def load_model(model: LivePortrait, checkpoint: str | os.PathLike, prefix: str | None, need_heads: bool) -> None:
    """Strictly load ``checkpoint`` (our model file, a Lightning .ckpt, or the official folder) into ``model``.

    Raises:
        AnimateError: the file is unreadable, does not fit the configured model, or lacks the stitching /
            retargeting heads that the options ask for.
    """
    try:
        sd = read_model_state(checkpoint, prefix)
    except (CheckpointError, FileNotFoundError) as e:
        raise AnimateError(f"cannot read checkpoint {checkpoint}: {e}") from e
    has_heads = any(k.startswith(HEAD_PREFIX) for k in sd)
    if need_heads and not has_heads:
        raise AnimateError(
            f"checkpoint {checkpoint} has no stitching/retargeting weights but stitching or eye/lip retargeting was "
            "requested; train stage 2, or set stitching=false eye_ratio=null lip_ratio=null"
        )
    expected = {k: v for k, v in model.state_dict().items() if has_heads or not k.startswith(HEAD_PREFIX)}
    try:
        check_state_dict(expected, sd, f"checkpoint {checkpoint}")
    except CheckpointError as e:
        raise AnimateError(
            f"{e}. Is `model=` the configuration the checkpoint was trained with (official / tiny / yours)?"
        ) from e
    model.load_state_dict(sd, strict=False)


class Animator:
    """The per-frame network stages of animation, batch 1; timed separately by ``bench/bench_animate.py``.

    Args:
        model: LivePortrait in eval mode, on its device.
        stitching: apply S to the driving keypoints.
        relative: motion relative to the first driving frame (else absolute driving pose / expression).
    """

    def __init__(self, model: LivePortrait, stitching: bool = True, relative: bool = True):
        self.model, self.stitching, self.relative = model, stitching, relative
        self.device = next(model.parameters()).device
        self.heads = model.stitching_retargeting_module

    def to_tensor(self, crop: np.ndarray) -> torch.Tensor:
        """(S, S, 3) uint8 crop -> (1, 3, S, S) float in [0, 1] on the model's device."""
        return torch.from_numpy(crop).to(self.device).permute(2, 0, 1)[None].float() / 255.0

    @torch.no_grad()
    def source(self, crop: np.ndarray) -> tuple[torch.Tensor, MotionInfo, torch.Tensor]:
        """f_s, the source's motion and x_s."""
        img = self.to_tensor(crop)
        info = self.model.motion(img)
        return self.model.extract_feature(img), info, keypoints_from_motion(info)

    @torch.no_grad()
    def motion(self, crop: np.ndarray) -> MotionInfo:
        """M on one driving crop."""
        return self.model.motion(self.to_tensor(crop))

    @torch.no_grad()
    def keypoints(
        self,
        src: MotionInfo,
        x_s: torch.Tensor,
        drv: MotionInfo,
        drv0: MotionInfo | None,
        eye: tuple[np.ndarray, float] | None = None,
        lip: tuple[np.ndarray, float] | None = None,
    ) -> torch.Tensor:
        """Driving keypoints for the source: relative (or absolute) motion, + R_eyes / R_lip Δ, then stitching.

        ``eye`` / ``lip``: (source ratios, target ratio) or None for no retargeting.
        """
        x_d = (
            relative_motion(src, drv, drv0)
            if self.relative and drv0 is not None
            else keypoints_from_motion(drv, kp_c=src.kp)
        )
        for net, cond in ((self.heads.eye if self.heads else None, eye), (self.heads.lip if self.heads else None, lip)):
            if cond is not None:
                ratios = torch.tensor([*np.ravel(cond[0]), cond[1]], dtype=x_s.dtype, device=self.device)[None]
                x_d = x_d + net(retarget_input(x_s, ratios)).view_as(x_s)
        if self.stitching:
            x_d = apply_stitching(x_d, self.heads.stitching(stitching_input(x_s, x_d)))
        return x_d

    @torch.no_grad()
    def warp(self, f_s: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        return self.model.warping_module(f_s, kp_source=x_s, kp_driving=x_d)["out"]

    @torch.no_grad()
    def generate(self, warped: torch.Tensor) -> np.ndarray:
        """G -> (2S, 2S, 3) uint8."""
        img = self.model.spade_generator(warped)[0].clamp(0, 1)
        return (img.permute(1, 2, 0) * 255).round().byte().cpu().numpy()


# -- faces, crops, paste-back --------------------------------------------------------------------------------------
@dataclass
class FaceTrack:
    """Per-frame face landmarks (pixels) and smoothed crop parameters ``[cx, cy, size, angle]`` of a clip."""

    landmarks: np.ndarray  # (T, 478, 2), gaps filled from the nearest frame with a face
    params: np.ndarray  # (T, 4)
    missing: int  # frames without a detected face


def track_face(frames: Iterator[np.ndarray], video: bool, smooth_sigma: float, what: str, **crop_kw) -> FaceTrack:
    """Detect the largest face in every frame (tracking in video mode) and derive the curation crop per frame."""
    found: list[np.ndarray | None] = []
    with FaceDetector(video=video, max_faces=1) as det:
        for rgb in tqdm(frames, desc=f"detect {what}", unit="frame", disable=not video):
            faces = det.detect(rgb)
            found.append(faces[0].landmarks if faces else None)
    hits = [i for i, f in enumerate(found) if f is not None]
    if not hits:
        raise AnimateError(f"no face found in {what} ({len(found)} frame(s) checked)")
    if len(hits) < len(found):
        log.warning("%s: no face in %d of %d frames; using the nearest frame's face", what, len(found) - len(hits),
                    len(found))  # fmt: skip
    nearest = np.array([min(hits, key=lambda h: abs(h - i)) for i in range(len(found))])
    lmk = np.stack([found[i] for i in nearest]).astype(np.float32)
    params = np.stack([crop_params_from_landmarks(p, **crop_kw) for p in lmk])
    return FaceTrack(lmk, smooth_crop_params(params, smooth_sigma), len(found) - len(hits))


def feather_mask(size: int, feather: float) -> np.ndarray:
    """(size, size) float32 mask: 1 inside, a smooth ramp to 0 over ``feather`` x size at the borders."""
    c = (np.arange(size, dtype=np.float32) + 0.5) / size
    edge = np.minimum(c, 1 - c)
    ramp = np.clip(edge / max(feather, 1e-6), 0.0, 1.0)
    ramp = ramp * ramp * (3 - 2 * ramp)  # smoothstep
    return np.minimum(ramp[:, None], ramp[None, :])


def paste_back(frame: np.ndarray, crop: np.ndarray, affine: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Blend ``crop`` ((S, S, 3) uint8; ``affine`` maps frame pixels to crop pixels) into ``frame``."""
    h, w = frame.shape[:2]
    inv = invert_affine(affine)
    warped = cv2.warpAffine(crop, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    alpha = cv2.warpAffine(mask, inv, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)[..., None]
    out = alpha * warped.astype(np.float32) + (1 - alpha) * frame.astype(np.float32)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def side_by_side(*images: np.ndarray) -> np.ndarray:
    """Concatenate RGB images horizontally at the height of the last one."""
    h = images[-1].shape[0]
    return np.concatenate([cv2.resize(im, (round(im.shape[1] * h / im.shape[0]), h)) for im in images], axis=1)


# -- inputs --------------------------------------------------------------------------------------------------------
@dataclass
class Media:
    """An image (one frame) or a video, re-readable (videos are streamed twice: detection, then animation)."""

    path: Path
    image: np.ndarray | None
    fps: str
    num_frames: int

    @classmethod
    def open(cls, path: str | os.PathLike, max_frames: int | None, what: str) -> Media:
        path = Path(path)
        if not path.is_file():
            raise AnimateError(f"{what} not found: {path}")
        if is_image(path):
            return cls(path, read_image(path), "25/1", 1)
        info = probe_video(path)
        n = info.num_frames if max_frames is None else min(info.num_frames, int(max_frames))
        return cls(path, None, info.fps, n)

    def frames(self) -> Iterator[np.ndarray]:
        if self.image is not None:
            yield self.image
            return
        n = 0
        for n, frame in enumerate(read_video(self.path, self.num_frames), start=1):  # noqa: B007
            yield frame
        if n < self.num_frames:
            raise AnimateError(f"{self.path}: decoded {n} frames, ffprobe announced {self.num_frames}")


# -- the pipeline --------------------------------------------------------------------------------------------------
def _ratio_target(value: str | float | None, frame_lmk: np.ndarray, kind: str) -> float | None:
    if value is None:
        return None
    if value == "driving":
        ratio = lm.eye_open_ratio(frame_lmk) if kind == "eye" else lm.lip_open_ratio(frame_lmk)
        return float(ratio.mean())
    return float(value)


def build_animator(cfg: DictConfig) -> Animator:
    """Instantiate ``cfg.model``, load ``cfg.checkpoint``, move to ``cfg.device``."""
    need_heads = bool(cfg.stitching) or cfg.eye_ratio is not None or cfg.lip_ratio is not None
    model: LivePortrait = hydra.utils.instantiate(cfg.model)
    load_model(model, cfg.checkpoint, cfg.get("checkpoint_prefix"), need_heads)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return Animator(model.to(device).eval(), stitching=bool(cfg.stitching), relative=bool(cfg.relative_motion))


@torch.no_grad()
def animate(cfg: DictConfig) -> Path:
    """Run the animation described by ``cfg`` (``conf/animate.yaml``); returns the written mp4 (or image)."""
    animator = build_animator(cfg)
    crop_kw = dict(scale=cfg.crop.scale, vx_ratio=cfg.crop.vx_ratio, vy_ratio=cfg.crop.vy_ratio)
    size = animator.model.input_size
    out_size = 2 * size
    src = Media.open(cfg.source, cfg.max_frames, "source")
    drv = Media.open(cfg.driving, cfg.max_frames, "driving")
    src_track = track_face(src.frames(), src.image is None, cfg.crop.smooth_sigma, f"source {src.path}", **crop_kw)
    drv_track = track_face(drv.frames(), drv.image is None, cfg.crop.smooth_sigma, f"driving {drv.path}", **crop_kw)
    n = drv.num_frames if src.image is not None else min(src.num_frames, drv.num_frames)
    mask = feather_mask(out_size, cfg.feather)
    output = Path(cfg.output)
    fps = drv.fps if drv.image is None else str(cfg.image_fps)
    src_frames = src.frames() if src.image is None else itertools.repeat(src.image)
    state, drv0 = None, None
    with VideoWriter(output, fps, crf=cfg.crf) as writer:
        pairs = zip(src_frames, drv.frames(), strict=False)  # a source image repeats; a source video may be longer
        for i, (s_rgb, d_rgb) in enumerate(tqdm(pairs, total=n, desc="animate", unit="frame")):
            if i >= n:
                break
            s_idx = i if src.image is None else 0
            s_aff = crop_affine(src_track.params[s_idx], size)
            if state is None or src.image is None:
                f_s, s_info, x_s = animator.source(warp_crop(s_rgb, s_aff, size))
                s_lmk = src_track.landmarks[s_idx]
                state = (f_s, s_info, x_s, lm.eye_open_ratio(s_lmk), lm.lip_open_ratio(s_lmk))
            f_s, s_info, x_s, s_eye, s_lip = state
            d_info = animator.motion(warp_crop(d_rgb, crop_affine(drv_track.params[i], size), size))
            drv0 = d_info if drv0 is None else drv0
            eye_t = _ratio_target(cfg.eye_ratio, drv_track.landmarks[i], "eye")
            lip_t = _ratio_target(cfg.lip_ratio, drv_track.landmarks[i], "lip")
            x_d = animator.keypoints(
                s_info, x_s, d_info, drv0 if drv.image is None else s_info,
                None if eye_t is None else (s_eye, eye_t), None if lip_t is None else (s_lip, lip_t),
            )  # fmt: skip
            result = animator.generate(animator.warp(f_s, x_s, x_d))  # (2S, 2S, 3)
            if cfg.paste_back:
                result = paste_back(s_rgb, result, crop_affine(src_track.params[s_idx], out_size), mask)
                left = (s_rgb, d_rgb)
            else:
                left = (warp_crop(s_rgb, crop_affine(src_track.params[s_idx], out_size), out_size),
                        warp_crop(d_rgb, crop_affine(drv_track.params[i], out_size), out_size))  # fmt: skip
            writer.write(side_by_side(*left, result) if cfg.side_by_side else result)
    log.info("wrote %s (%d frames at %s fps)", output, n, fps)
    return output


@hydra.main(config_path=CONF_DIR, config_name="animate", version_base="1.3")
@report_user_errors("lp-animate")
def _hydra_main(cfg: DictConfig) -> None:
    try:
        print(animate(cfg))
    except AnimateError as e:
        raise UserError(str(e)) from e


def main() -> None:
    """Console script ``lp-animate`` (Hydra overrides on the command line); user errors -> one line, exit 2."""
    run_cli("lp-animate", _hydra_main)


if __name__ == "__main__":
    main()
