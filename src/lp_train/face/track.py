"""Following one face through a clip and putting its crop back: per-frame face mesh (``detect``), the curation crop
smoothed over time (``crop``), and the feathered paste-back of a generated crop into the full frame. Shared by
lp-animate and the evaluation inputs.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

import cv2
import numpy as np
from tqdm import tqdm

from lp_train.face.crop import crop_params_from_landmarks, invert_affine, smooth_crop_params
from lp_train.face.detect import FaceDetector

log = logging.getLogger(__name__)


class NoFaceError(ValueError):
    """No face was found in any frame of a clip or image."""


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
        raise NoFaceError(f"no face found in {what} ({len(found)} frame(s) checked)")
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
