"""lp-animate: drive a portrait with a video through a trained (or the official) LivePortrait (paper Sec. 3, Fig. 2;
the official inference pipeline's relative motion, stitching and eye/lip retargeting, Sec. 3.2).

Per driving frame: crop the face with the curation crop (``lp_train.face.crop``) -> M on the driving crop -> keypoints
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

from lp_train.animate_io import AnimateError, VideoWriter, is_image, probe_video, read_image, read_video
from lp_train.checkpoint import CheckpointError, MissingHeadsError, load_model_weights
from lp_train.cli_errors import UserError, report_user_errors, run_cli
from lp_train.conf import CONF_DIR
from lp_train.face import landmarks as lm
from lp_train.face.crop import crop_affine, warp_crop
from lp_train.face.track import NoFaceError, feather_mask, paste_back, track_face
from lp_train.inference import Driver
from lp_train.models.liveportrait import LivePortrait

log = logging.getLogger(__name__)


# -- model ---------------------------------------------------------------------------------------------------------
def load_model(model: LivePortrait, checkpoint: str | os.PathLike, prefix: str | None, need_heads: bool) -> None:
    """Strictly load ``checkpoint`` (our model file, a Lightning .ckpt, or the official folder) into ``model``.

    Raises:
        AnimateError: the file is unreadable, does not fit the configured model, or lacks the stitching /
            retargeting heads that the options ask for.
    """
    try:
        load_model_weights(model, checkpoint, prefix, heads=True if need_heads else None)
    except MissingHeadsError as e:
        raise AnimateError(
            f"{e}, but stitching or eye/lip retargeting was requested; train stage 2, or set stitching=false "
            "eye_ratio=null lip_ratio=null"
        ) from e
    except FileNotFoundError as e:
        raise AnimateError(f"cannot read checkpoint {checkpoint}: {e}") from e
    except CheckpointError as e:
        raise AnimateError(
            f"{e}. Is `model=` the configuration the checkpoint was trained with (official / tiny / yours)?"
        ) from e


def crop_tensor(crop: np.ndarray, device: torch.device) -> torch.Tensor:
    """(S, S, 3) uint8 crop -> (1, 3, S, S) float in [0, 1] on ``device``."""
    return torch.from_numpy(crop).to(device).permute(2, 0, 1)[None].float() / 255.0


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) in [0, 1] -> (H, W, 3) uint8."""
    return (image[0].permute(1, 2, 0) * 255).round().byte().cpu().numpy()


def _ratio_condition(source_ratios: np.ndarray, target: float | None) -> torch.Tensor | None:
    return None if target is None else torch.tensor([[*np.ravel(source_ratios), target]], dtype=torch.float32)


# -- faces, crops, paste-back --------------------------------------------------------------------------------------
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


def build_driver(cfg: DictConfig) -> Driver:
    """Instantiate ``cfg.model``, load ``cfg.checkpoint``, move to ``cfg.device``."""
    need_heads = bool(cfg.stitching) or cfg.eye_ratio is not None or cfg.lip_ratio is not None
    model: LivePortrait = hydra.utils.instantiate(cfg.model)
    load_model(model, cfg.checkpoint, cfg.get("checkpoint_prefix"), need_heads)
    device = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    return Driver(model.to(device).eval(), stitching=bool(cfg.stitching), relative=bool(cfg.relative_motion))


@torch.no_grad()
def animate(cfg: DictConfig) -> Path:
    """Run the animation described by ``cfg`` (``conf/animate.yaml``); returns the written mp4 (or image)."""
    driver = build_driver(cfg)
    crop_kw = dict(scale=cfg.crop.scale, vx_ratio=cfg.crop.vx_ratio, vy_ratio=cfg.crop.vy_ratio)
    size = driver.model.input_size
    out_size = 2 * size
    src = Media.open(cfg.source, cfg.max_frames, "source")
    drv = Media.open(cfg.driving, cfg.max_frames, "driving")
    try:
        src_track = track_face(src.frames(), src.image is None, cfg.crop.smooth_sigma, f"source {src.path}", **crop_kw)
        drv_track = track_face(drv.frames(), drv.image is None, cfg.crop.smooth_sigma, f"driving {drv.path}", **crop_kw)
    except NoFaceError as e:
        raise AnimateError(str(e)) from e
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
                source = driver.source(crop_tensor(warp_crop(s_rgb, s_aff, size), driver.device))
                s_lmk = src_track.landmarks[s_idx]
                state = (source, lm.eye_open_ratio(s_lmk), lm.lip_open_ratio(s_lmk))
            source, s_eye, s_lip = state
            d_crop = warp_crop(d_rgb, crop_affine(drv_track.params[i], size), size)
            d_info = driver.motion(crop_tensor(d_crop, driver.device))
            drv0 = d_info if drv0 is None else drv0
            eye = _ratio_condition(s_eye, _ratio_target(cfg.eye_ratio, drv_track.landmarks[i], "eye"))
            lip = _ratio_condition(s_lip, _ratio_target(cfg.lip_ratio, drv_track.landmarks[i], "lip"))
            x_d = driver.keypoints(source, d_info, drv0 if drv.image is None else source.motion, eye, lip)
            result = to_uint8(driver.generate(source, x_d))  # (2S, 2S, 3)
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
