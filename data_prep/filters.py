"""Quality filters of curation: per-frame face checks and per-clip checks, each with a named drop reason.

LivePortrait (Guo et al. 2024, Sec. 4.1) filters its 92M raw frames down to 69M with quality filtering; the paper
does not list the criteria, so ours are configurable (``conf/data_prep/filters/*.yaml``) and every drop is counted
by reason in the report:

* frame level: ``no_face``, ``multiple_faces`` (a second face at least ``second_face_ratio`` of the tracked one),
  ``low_confidence`` (detector score), ``face_too_small`` (box side in source pixels), ``landmark_jump`` (median
  landmark displacement between consecutive frames relative to the face size);
* clip level, in this order: ``too_short`` (frames), ``blurry`` (median variance of the Laplacian of the face
  region of the crop, measured at 256²), ``not_human`` (a second, independent human-face detector -- dlib's MMOD
  CNN -- does not confirm the tracked face on at least half of a few checked frames: mediapipe's BlazeFace and
  face mesh also fire on cats, dogs and monkeys), ``identity_change`` (face descriptors of frames across the clip
  disagree; dlib's 128-d face-recognition ResNet when ``dlib`` + ``face_recognition_models`` are installed).
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from lp_train.face.detect import Face, box_iou, landmark_box
from lp_train.face.landmarks import FACE_MESH_68

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
    human_face: bool = True  # dlib's CNN confirms a human face (not_human); off for stylised art
    human_face_except: list[str] = field(default_factory=list)  # dataset tags exempt from human_face
    human_every_s: float = 10.0  # one check on a clip's first frame and every this many seconds

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
        self._model = dlib.face_recognition_model_v1(str(_model_path(_RESNET)))

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("dlib") is not None and _model_path(_RESNET) is not None

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


_RESNET = "dlib_face_recognition_resnet_model_v1.dat"  # face descriptors (IdentityEncoder)
_MMOD = "mmod_human_face_detector.dat"  # CNN human-face detector (HumanFaceCheck)


def _model_path(name: str) -> Path | None:
    """Path of a dlib model file shipped by ``face_recognition_models`` (None if it is not installed)."""
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    return path if path.is_file() else None


def identity_consistent(descriptors: list[np.ndarray], threshold: float) -> tuple[bool, float]:
    """Whether every pair of a clip's face descriptors is within ``threshold``; returns (ok, largest distance)."""
    if len(descriptors) < 2:
        return True, 0.0
    d = np.stack(descriptors)
    dist = float(np.sqrt(((d[:, None, :] - d[None, :, :]) ** 2).sum(-1)).max())
    return dist <= threshold, dist


class HumanFaceCheck:
    """Is the tracked face a human one? dlib's MMOD CNN human-face detector as a second, independent opinion.

    mediapipe's BlazeFace and face mesh (``lp_train.face.detect``) fire on many animal faces and fit a human mesh
    to them. dlib's CNN face detector (``mmod_human_face_detector.dat``, shipped by ``face_recognition_models``;
    trained on human faces only) runs on the central 62.5% of a LivePortrait crop, resized to 128² (the face is then
    ~90 px, above the detector's ~80 px window). A frame is confirmed when dlib finds a face whose box overlaps the
    mesh's landmark box (IoU >= ``min_iou``). Measured on crops: every real and painted portrait and every sampled
    frame of real talking-head clips confirmed (dlib confidence ~1.0), skimage's cat photo not (no detection);
    ~0.12 s of CPU per check, so curation checks only a few frames per clip (``filters.human_every_s``). Stylised
    faces (anime, cartoons) may fail: exempt such datasets (``filters.human_face_except``) or turn the check off
    (``filters.human_face=false``).

    Args:
        min_iou: least overlap of dlib's face box with the mesh's landmark box that confirms a frame.
    """

    WINDOW = (0.1875, 0.8125)  # part of the crop side checked: the face (~43% of the side) and a margin
    SIDE = 128  # px the window is resized to

    def __init__(self, min_iou: float = 0.3) -> None:
        import dlib

        self.min_iou = min_iou
        self._cnn = dlib.cnn_face_detection_model_v1(str(_model_path(_MMOD)))

    @staticmethod
    def available() -> bool:
        return importlib.util.find_spec("dlib") is not None and _model_path(_MMOD) is not None

    def __call__(self, crop: np.ndarray, landmarks: np.ndarray) -> bool:
        """Whether dlib confirms the face of an (S, S, 3) RGB crop with (478, 2) landmarks in [0, 1] crop units."""
        side = crop.shape[0]
        a, b = (round(f * side) for f in self.WINDOW)
        scale = self.SIDE / (b - a)
        window = cv2.resize(np.ascontiguousarray(crop[a:b, a:b]), (self.SIDE, self.SIDE), interpolation=cv2.INTER_AREA)
        face = (landmark_box(landmarks * side) - a) * scale
        for det in self._cnn(window, 0):
            r = det.rect
            if box_iou(face, np.array([r.left(), r.top(), r.right(), r.bottom()], np.float32)) >= self.min_iou:
                return True
        return False
