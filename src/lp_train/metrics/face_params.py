"""Face parameters for the motion-accuracy metrics AED / APD / MAE of LivePortrait (Sec. 4.2, Table 3).

LivePortrait measures expression (AED) and head-pose (APD) accuracy with parameters from a 3D face estimator
(SMIRK) and eye-gaze accuracy (MAE) with a gaze estimator. Neither runs offline here, so the default estimator,
``MediapipeFaceParams``, derives all three from mediapipe's bundled face mesh (478 3D points incl. iris, run per
frame in static-image mode, so generated and driving frames are measured independently):

* **pose** (pitch, yaw, roll) in degrees, LivePortrait's convention: ``lp_train.face.landmarks.fit_weak_perspective``,
  a weighted fit of mediapipe's canonical face (33 rigid points) to the 2D landmarks;
* **expression**: the pose-normalised landmark residual. The 468 mesh points (x, y and mediapipe's relative
  depth z) are mapped back into the canonical face frame with the fitted pose, X = Rᵀ·[(p - t)/s, (z - z̄)/s],
  and the expression vector is X of the non-rigid points (all mesh points except the 33 rigid pose points),
  in canonical-face units (≈ cm; the canonical face is ~15 units wide). The residual w.r.t. any fixed canonical
  shape differs by a constant, which cancels in AED = mean |e_gen - e_drv|. Identity shape is not separated
  from expression (a 3DMM would be needed): in cross-reenactment AED also carries identity differences;
* **gaze**: per eye, the iris centre relative to the midpoint of the eye corners in the pose-normalised frame,
  expressed in the eye's own axes (u: corner to corner, v: perpendicular) and divided by the eyeball radius
  r = 0.4 · corner distance (≈ 12 mm of a ≈ 30 mm eye opening). With the offset d = (d_u, d_v) = r·sin θ the
  eyeball direction is g = (d_u, d_v, √(1 - |d|²)) (|d| clipped to 0.99); the two eyes' unit vectors are averaged
  and renormalised. MAE is the angle between the generated and driving gaze (degrees). It is the eye-in-head
  rotation, the quantity a reenactment model must transfer.

Frames without a detected face get ``found = False`` and NaN parameters; the metrics count them as missing.

**Other estimators** (SMIRK, Deep3DFaceRecon, a gaze network) plug in through ``FaceParamEstimator``: any object
with ``__call__(images) -> FaceParams`` and ``info() -> dict``. ``ModuleFaceParams`` adapts a torch module that
returns a dict of tensors (e.g. SMIRK's encoder: ``expression_params`` 50 + ``jaw_params`` 3 -> expression,
``pose_params`` 3 (axis-angle) -> pose) given in config (``conf/eval/face_params/external.yaml``).
"""

from __future__ import annotations

import logging
import os
from abc import abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from torch import nn

from lp_train.face import landmarks as L
from lp_train.metrics.base import FrameMetric

log = logging.getLogger(__name__)

EYEBALL_RADIUS_PER_EYE_WIDTH = 0.4
_BASIS_IDX = tuple(int(row[0]) for row in L.POSE_BASIS)
_BASIS_W = np.array([row[1] for row in L.POSE_BASIS]) / sum(row[1] for row in L.POSE_BASIS)
EXPRESSION_POINTS = tuple(i for i in range(L.NUM_MESH) if i not in set(_BASIS_IDX))


@dataclass
class FaceParams:
    """Per-frame face parameters; rows of frames without a face are NaN.

    Attributes:
        found: (B,) bool, a face was measured.
        expression: (B, E) float64 expression parameters.
        pose: (B, 3) float64 head pose (the estimator's units; default: pitch, yaw, roll in degrees).
        gaze: (B, 3) float64 unit eyeball-direction vectors, or None if the estimator has no gaze.
    """

    found: torch.Tensor
    expression: torch.Tensor
    pose: torch.Tensor
    gaze: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.found.shape[0])

    def index(self, idx: torch.Tensor | slice | Sequence[int]) -> FaceParams:
        """Select frames (e.g. repeat a source's parameters)."""
        g = None if self.gaze is None else self.gaze[idx]
        return FaceParams(self.found[idx], self.expression[idx], self.pose[idx], g)


@runtime_checkable
class FaceParamEstimator(Protocol):
    """What the AED / APD / MAE metrics need of an estimator (implement this for SMIRK, Deep3DFaceRecon, ...)."""

    def __call__(self, images: torch.Tensor) -> FaceParams:
        """(B, 3, H, W) RGB in [0, 1] -> FaceParams of B frames."""
        ...

    def info(self) -> dict:
        """``implementation``, ``weights``, ``calibrated`` and ``units`` of the parameters."""
        ...


def to_uint8_hwc(images: torch.Tensor) -> np.ndarray:
    """(B, 3, H, W) [0, 1] float -> (B, H, W, 3) uint8 RGB."""
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected (B, 3, H, W) images in [0, 1], got {tuple(images.shape)}")
    x = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


class FaceMesh3D:
    """mediapipe's face mesh with refine_landmarks (478 points) returning x, y AND z (``lp_train.face.detect``
    keeps only x, y). Static-image mode: every frame is measured on its own.

    Args:
        min_confidence: detection threshold of the mesh's face detector.
    """

    def __init__(self, min_confidence: float = 0.5) -> None:
        os.environ.setdefault("GLOG_minloglevel", "2")
        import mediapipe as mp

        self.min_confidence = min_confidence
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=min_confidence
        )

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """(H, W, 3) uint8 RGB -> (478, 3) float64 points in pixels (x, y) and x-scaled depth (z), or None."""
        h, w = rgb.shape[:2]
        res = self._mesh.process(np.ascontiguousarray(rgb))
        if not res.multi_face_landmarks:
            return None
        pts = np.array([(p.x * w, p.y * h, p.z * w) for p in res.multi_face_landmarks[0].landmark], np.float64)
        return pts if pts.shape == (L.NUM_LANDMARKS, 3) else None

    def close(self) -> None:
        self._mesh.close()


def normalise_pose(pts3d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(478, 3) mesh points (pixels) -> (pose degrees (3,), (478, 3) points in the canonical face frame)."""
    rot, s, t = L.fit_weak_perspective(pts3d[None, :, :2])
    rot, s, t = rot[0], float(s[0]), t[0]
    z = pts3d[:, 2] - (_BASIS_W * pts3d[list(_BASIS_IDX), 2]).sum()  # centre depth like the fit centres x, y
    cam = np.concatenate([(pts3d[:, :2] - t) / s, z[:, None] / s], axis=1)  # scaled-orthographic camera frame
    return L.euler_from_rotation(rot).astype(np.float64), cam @ rot  # rows: Rᵀ x


def gaze_from_canonical(x: np.ndarray) -> np.ndarray:
    """(478, 3) pose-normalised points -> (3,) unit eyeball direction (mean of both eyes; see module docstring)."""
    dirs = []
    for (outer, inner), iris in ((L.RIGHT_EYE_CORNERS, L.RIGHT_IRIS[0]), (L.LEFT_EYE_CORNERS, L.LEFT_IRIS[0])):
        a, b, c = x[outer, :2], x[inner, :2], x[iris, :2]
        width = np.linalg.norm(b - a)
        u = (b - a) / max(width, 1e-9)
        if outer == L.LEFT_EYE_CORNERS[0]:  # both eyes: u points to the image right, v down
            u = -u
        v = np.array([-u[1], u[0]])
        d = np.array([(c - (a + b) / 2) @ u, (c - (a + b) / 2) @ v]) / (EYEBALL_RADIUS_PER_EYE_WIDTH * width)
        n = np.linalg.norm(d)
        if n > 0.99:
            d = d * (0.99 / n)
        dirs.append(np.array([d[0], d[1], np.sqrt(1.0 - d @ d)]))
    g = dirs[0] + dirs[1]
    return g / np.linalg.norm(g)


class MediapipeFaceParams:
    """Default offline estimator: pose, expression and gaze from mediapipe's face mesh (see module docstring).

    Args:
        min_confidence: the face mesh's detection threshold.
    """

    def __init__(self, min_confidence: float = 0.5) -> None:
        self.min_confidence = min_confidence
        self._mesh: FaceMesh3D | None = None  # built lazily: mediapipe graphs cannot be pickled / forked

    def points(self, images: torch.Tensor) -> list[np.ndarray | None]:
        """Raw (478, 3) mesh points per frame (None where no face)."""
        if self._mesh is None:
            self._mesh = FaceMesh3D(self.min_confidence)
        return [self._mesh(rgb) for rgb in to_uint8_hwc(images)]

    def __call__(self, images: torch.Tensor) -> FaceParams:
        b = images.shape[0]
        found = torch.zeros(b, dtype=torch.bool)
        expr = torch.full((b, 3 * len(EXPRESSION_POINTS)), float("nan"), dtype=torch.float64)
        pose = torch.full((b, 3), float("nan"), dtype=torch.float64)
        gaze = torch.full((b, 3), float("nan"), dtype=torch.float64)
        for i, pts in enumerate(self.points(images)):
            if pts is None:
                continue
            angles, canon = normalise_pose(pts)
            found[i] = True
            pose[i] = torch.from_numpy(angles)
            expr[i] = torch.from_numpy(canon[list(EXPRESSION_POINTS)].reshape(-1))
            gaze[i] = torch.from_numpy(gaze_from_canonical(canon))
        return FaceParams(found, expr, pose, gaze)

    def info(self) -> dict:
        import mediapipe as mp

        return {
            "implementation": f"lp_train.metrics.face_params.MediapipeFaceParams (mediapipe {mp.__version__} face "
            "mesh, 478 points; pose: lp_train.face.landmarks.fit_weak_perspective)",
            "weights": "face_landmark_with_attention.tflite bundled in the mediapipe wheel",
            "calibrated": True,
            "units": {
                "pose": "degrees (pitch, yaw, roll)",
                "expression": "canonical-face units (~cm)",
                "gaze": "unit vector, eye-in-head",
            },
            "settings": {
                "min_confidence": self.min_confidence,
                "eyeball_radius": EYEBALL_RADIUS_PER_EYE_WIDTH,
                "expression_points": len(EXPRESSION_POINTS),
            },
        }

    def __getstate__(self) -> dict:
        return {"min_confidence": self.min_confidence, "_mesh": None}


class ModuleFaceParams:
    """Adapter for a torch face-parameter network that returns a dict of tensors (SMIRK, Deep3DFaceRecon, ...).

    Args:
        module: the network (built by Hydra from the user's ``_target_``), called on resized images.
        weights: local state-dict file loaded into ``module`` (strict), or ``random`` (uncalibrated).
        expression_keys: output keys concatenated into the expression vector (SMIRK: expression_params, jaw_params).
        pose_keys: output keys concatenated into the pose vector (SMIRK: pose_params, axis-angle radians).
        gaze_key: output key of a (B, 3) gaze direction, if the network has one.
        input_size: side the images are resized to before the call (SMIRK: 224).
        input_range: ``[0, 1]`` or ``[-1, 1]``, the range the network expects.
        pose_units: how the pose is reported (goes into ``info``).
    """

    def __init__(
        self,
        module: nn.Module,
        weights: str | None,
        expression_keys: Sequence[str],
        pose_keys: Sequence[str],
        gaze_key: str | None = None,
        input_size: int = 224,
        input_range: str = "[0, 1]",
        pose_units: str = "radians (axis-angle)",
    ) -> None:
        if input_range not in ("[0, 1]", "[-1, 1]"):
            raise ValueError(f"input_range must be '[0, 1]' or '[-1, 1]', got {input_range!r}")
        self.module = module.eval().requires_grad_(False)
        self.weights = weights
        if weights is None:
            raise ValueError("ModuleFaceParams: set `weights` to the network's state-dict file (or 'random')")
        if str(weights) != "random":
            sd = torch.load(weights, map_location="cpu", weights_only=True)
            self.module.load_state_dict(sd.get("state_dict", sd) if isinstance(sd, dict) else sd, strict=True)
        self.expression_keys, self.pose_keys, self.gaze_key = list(expression_keys), list(pose_keys), gaze_key
        self.input_size, self.input_range, self.pose_units = input_size, input_range, pose_units

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> FaceParams:
        dev = next(self.module.parameters()).device
        x = nn.functional.interpolate(images.float(), size=self.input_size, mode="bilinear", antialias=True)
        x = x * 2 - 1 if self.input_range == "[-1, 1]" else x
        out = self.module(x.to(dev))
        missing = [k for k in [*self.expression_keys, *self.pose_keys, self.gaze_key] if k and k not in out]
        if missing:
            raise KeyError(f"ModuleFaceParams: network output lacks {missing}; it has {sorted(out)}")
        cat = lambda keys: torch.cat([out[k].reshape(x.shape[0], -1) for k in keys], 1).double().cpu()  # noqa: E731
        gaze = None
        if self.gaze_key:
            gaze = nn.functional.normalize(out[self.gaze_key].double().cpu(), dim=1)
        return FaceParams(
            torch.ones(x.shape[0], dtype=torch.bool), cat(self.expression_keys), cat(self.pose_keys), gaze
        )

    def info(self) -> dict:
        return {
            "implementation": f"lp_train.metrics.face_params.ModuleFaceParams({type(self.module).__qualname__})",
            "weights": str(self.weights),
            "calibrated": str(self.weights) != "random",
            "units": {"pose": self.pose_units, "expression": f"network outputs {self.expression_keys}"},
            "settings": {"input_size": self.input_size, "input_range": self.input_range},
        }


class FaceParamMetric(FrameMetric):
    """Per-frame distance (↓) between the face parameters of generated and driving frames (AED / APD / MAE).

    ``update(FaceParams_gen, FaceParams_drv)``; a frame without a face on either side scores NaN (counted as
    missing). Subclasses give ``distance`` (B,) and their ``description`` / ``settings`` for ``info``.

    Args:
        estimator: the estimator that produced the parameters (recorded in ``info``; the metric does not call it).
    """

    higher_is_better = False
    kind = "face_params"
    description = ""  # what the per-frame distance is, for ``info()["implementation"]``

    def __init__(self, estimator: FaceParamEstimator | None = None) -> None:
        super().__init__()
        self.estimator = estimator

    @abstractmethod
    def distance(self, preds: FaceParams, target: FaceParams) -> torch.Tensor:
        """(B,) distance per frame pair (frames without a face are masked by ``score``)."""

    @abstractmethod
    def settings(self, estimator_info: dict) -> dict:
        """The ``settings`` entry of ``info()``, given the estimator's own ``info()``."""

    def score(self, preds: FaceParams, target: FaceParams) -> torch.Tensor:
        if len(preds) != len(target):
            raise ValueError(f"{self.name}: face parameters of {len(preds)} generated vs {len(target)} driving frames")
        d = self.distance(preds, target)
        return torch.where(preds.found & target.found, d, torch.full_like(d, float("nan")))

    def info(self) -> dict:
        est = self.estimator.info() if self.estimator is not None else {}
        return {
            "implementation": f"{type(self).__module__} ({self.description}); estimator: "
            + str(est.get("implementation", "unknown")),
            "weights": est.get("weights"),
            "calibrated": bool(est.get("calibrated", False)),
            "settings": self.settings(est),
        }
