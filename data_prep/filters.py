"""Quality filters of curation: per-frame face checks and per-clip checks, each with a named drop reason.

LivePortrait (Guo et al. 2024, Sec. 4.1) filters its 92M raw frames down to 69M with quality filtering; the paper
does not list the criteria, so ours are configurable (``conf/data_prep/filters/*.yaml``) and every drop is counted
by reason in the report:

* frame level: ``no_face``, ``multiple_faces`` (a second face at least ``second_face_ratio`` of the tracked one),
  ``low_confidence`` (detector score), ``face_too_small`` (box side in source pixels), ``landmark_jump`` (median
  landmark displacement between consecutive frames relative to the face size);
* clip level: ``too_short`` (frames), ``blurry`` (median variance of the Laplacian of the face region of the
  crop, measured at 256²), ``identity_change`` (face descriptors of frames across the clip disagree; dlib's
  128-d face-recognition ResNet when ``dlib`` + ``face_recognition_models`` are installed).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lp_train.face_detect import FACE_MESH_68, Face

log = logging.getLogger(__name__)


@dataclass
class FilterConfig:
    """Thresholds; see ``conf/data_prep/filters/default.yaml`` for the documented defaults."""

    min_confidence: float = 0.5
    min_face_size: float = 80.0  # px, video frames
    min_face_size_image: float = 64.0  # px, still images
    second_face_ratio: float = 0.5
    max_landmark_jump: float = 0.3  # median landmark displacement per frame / face size
    min_clip_seconds: float = 0.5
    min_clip_frames: int = 8
    min_sharpness: float = 15.0
    identity: bool = True  # use dlib when available
    identity_threshold: float = 0.6  # dlib's same-person distance
    identity_every_s: float = 2.0

    @classmethod
    def from_dict(cls, d: dict) -> FilterConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def frame_check(
    faces: list[Face], dominant: Face | None, prev_lmk: np.ndarray | None, cfg: FilterConfig, min_size: float
) -> str | None:
    """Drop reason for one frame, or None if it is usable.

    Args:
        faces: all faces of the frame (``FaceDetector.detect_all``).
        dominant: the tracked face (with landmarks) or None.
        prev_lmk: landmarks of the tracked face in the previous frame (None at a track start).
        min_size: smallest allowed face box side in source pixels.
    """
    if dominant is None:
        return "no_face"
    if any(f is not dominant and f.size >= cfg.second_face_ratio * dominant.size for f in faces):
        return "multiple_faces"
    if dominant.score < cfg.min_confidence:
        return "low_confidence"
    if dominant.size < min_size:
        return "face_too_small"
    if prev_lmk is not None and landmark_jump(prev_lmk, dominant.landmarks, dominant.size) > cfg.max_landmark_jump:
        return "landmark_jump"
    return None


def landmark_jump(prev: np.ndarray, cur: np.ndarray, face_size: float) -> float:
    """Median displacement of the 68 main landmarks between two frames, in units of the face size.

    The median ignores expression (an opening mouth moves a few points a lot) and catches what the filter is for:
    a tracker that snapped to another face or lost it. Measured on real talking heads: p99 0.005-0.2 (the latter
    for fast, animated head motion at 25 fps), so the default threshold is 0.3.
    """
    idx = list(FACE_MESH_68)
    d = np.linalg.norm(cur[idx] - prev[idx], axis=1)
    return float(np.median(d) / max(face_size, 1.0))


def sharpness(crop: np.ndarray) -> float:
    """Variance of the Laplacian of the central face region of a crop, measured at 256² (resolution-independent)."""
    gray = cv2.cvtColor(crop, cv2.COLOR_RGB2GRAY)
    if gray.shape[0] != 256:
        gray = cv2.resize(gray, (256, 256), interpolation=cv2.INTER_AREA)
    face = gray[72:200, 72:184]  # the face sits in the middle ~45% of a LivePortrait crop (scale 2.3)
    return float(cv2.Laplacian(face, cv2.CV_64F).var())


class IdentityEncoder:
    """dlib's 128-d face-recognition descriptor (ResNet, LFW 99.38%) of an aligned face chip, offline.

    Available when ``dlib`` (``dlib-bin``) and ``face_recognition_models`` are installed; otherwise
    ``IdentityEncoder.available()`` is False and the identity filter is skipped (logged once).
    """

    def __init__(self) -> None:
        import dlib

        self._dlib = dlib
        self._model = dlib.face_recognition_model_v1(str(_model_dir() / "dlib_face_recognition_resnet_model_v1.dat"))

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("dlib") is not None and _model_dir() is not None

    def encode(self, rgb: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """128-d descriptor of the face with (478, 2) mesh landmarks in ``rgb`` (pixels)."""
        dlib = self._dlib
        pts = landmarks[list(FACE_MESH_68)]
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        rect = dlib.rectangle(int(x0), int(y0), int(x1), int(y1))
        shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in pts])
        chip = dlib.get_face_chip(np.ascontiguousarray(rgb), shape, size=150, padding=0.25)
        return np.asarray(self._model.compute_face_descriptor(chip), dtype=np.float32)


def _model_dir() -> Path | None:
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    d = Path(next(iter(spec.submodule_search_locations))) / "models"
    return d if (d / "dlib_face_recognition_resnet_model_v1.dat").is_file() else None


def identity_consistent(descriptors: list[np.ndarray], threshold: float) -> tuple[bool, float]:
    """Whether every pair of a clip's face descriptors is within ``threshold``; returns (ok, largest distance)."""
    if len(descriptors) < 2:
        return True, 0.0
    d = np.stack(descriptors)
    dist = float(np.sqrt(((d[:, None, :] - d[None, :, :]) ** 2).sum(-1)).max())
    return dist <= threshold, dist
