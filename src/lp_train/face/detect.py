"""Offline face detection and dense (478-point) face landmarks with mediapipe 0.10.14's bundled models.

LivePortrait (Guo et al. 2024, Sec. 3.1 / 4.1 and App. A) crops every training frame around detected face
landmarks and uses landmarks for its landmark-guided loss, region losses and eye/lip retargeting ratios. The
official code uses insightface + a private 203-point model; we use what runs offline from an installed wheel:

* ``mp.solutions.face_detection`` (BlazeFace, full-range model) for face boxes and confidence scores;
* ``mp.solutions.face_mesh`` with ``refine_landmarks=True`` for 478 points (468 mesh points + 2 x 5 iris points),
  in video mode (tracking between frames) or static mode (every frame detected from scratch).

Detections and meshes are matched by box overlap; a detected face that the full-frame mesh missed (small faces in
large frames) gets a second chance on an enlarged square crop around it. Coordinates are pixels of the input image
(x right, y down). The index conventions of the mesh (eyes, lips, iris, the 68-point subset) are in
``lp_train.face.landmarks``.

Example::

    with FaceDetector(min_confidence=0.5, max_faces=2, video=True) as det:
        for rgb in frames:
            faces = det.detect(rgb)          # sorted by box area, largest first
            if faces:
                lmk = faces[0].landmarks     # (478, 2) float32 pixels
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass

import numpy as np

from lp_train.face.landmarks import NUM_LANDMARKS

log = logging.getLogger(__name__)


@dataclass
class Face:
    """One detected face.

    Attributes:
        box: (4,) float32 ``x0, y0, x1, y1`` in input pixels (detector box; landmark bounds if not detected).
        score: detector confidence in [0, 1]; 0.0 for a face the mesh tracked but the detector did not confirm.
        landmarks: (478, 2) float32 pixel coordinates, or None for a detected face without a mesh.
        depth: (478,) float32 relative depth of each landmark from the mesh (mediapipe's z, in pixels of the
            image width; smaller = closer to the camera), or None.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray | None
    depth: np.ndarray | None = None

    @classmethod
    def from_mesh(cls, box: np.ndarray, score: float, mesh: np.ndarray) -> Face:
        """A face from a (478, 3) mesh array (x, y, z pixels)."""
        return cls(box=box, score=score, landmarks=mesh[:, :2].copy(), depth=mesh[:, 2].copy())

    @property
    def size(self) -> float:
        """Side of the face box: ``sqrt(width * height)`` in pixels."""
        w, h = self.box[2] - self.box[0], self.box[3] - self.box[1]
        return float(np.sqrt(max(w, 0.0) * max(h, 0.0)))


def check_rgb(rgb: np.ndarray) -> np.ndarray:
    """Validate an (H, W, 3) uint8 RGB image and return it C-contiguous; raise ValueError otherwise."""
    if not isinstance(rgb, np.ndarray):
        raise ValueError(f"expected an (H, W, 3) uint8 RGB numpy array, got {type(rgb).__name__}")
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise ValueError(
            f"expected an (H, W, 3) RGB image with H, W > 0, got shape {rgb.shape}; convert grayscale/RGBA first "
            "(e.g. PIL `Image.convert('RGB')` or `cv2.cvtColor`)"
        )
    if rgb.dtype != np.uint8:
        raise ValueError(f"expected dtype uint8, got {rgb.dtype}; scale floats to [0, 255] and cast to uint8")
    return np.ascontiguousarray(rgb)


def box_iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two ``x0, y0, x1, y1`` boxes."""
    iw = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def landmark_box(landmarks: np.ndarray) -> np.ndarray:
    """Bounds ``x0, y0, x1, y1`` of a landmark set."""
    return np.concatenate([landmarks.min(0), landmarks.max(0)]).astype(np.float32)


def _import_mediapipe():
    os.environ.setdefault("GLOG_minloglevel", "2")  # silence mediapipe's C++ INFO/WARNING lines
    warnings.filterwarnings("ignore", message="SymbolDatabase.GetPrototype", category=UserWarning)
    try:
        import mediapipe as mp
    except ImportError as e:  # pragma: no cover - dependency is pinned in pyproject.toml
        raise ImportError("lp_train.face.detect needs mediapipe==0.10.14 (bundles its .tflite models)") from e
    return mp


class FaceDetector:
    """Face boxes + confidence (BlazeFace) and 478 landmarks (face mesh with iris), offline.

    Args:
        min_confidence: detector score threshold (also the mesh's detection threshold).
        max_faces: most faces the mesh returns per frame (use >= 2 to notice a second person).
        video: True tracks landmarks between consecutive frames (call ``reset()`` between clips);
            False treats every call as an unrelated image.
        model_selection: BlazeFace model, 1 = full range (faces up to ~5 m, small in frame), 0 = short range.
        crop_fallback: run the mesh again on a crop around a detected face that the full-frame mesh missed.
        min_tracking_confidence: face mesh tracking threshold (video mode).
    """

    def __init__(
        self,
        min_confidence: float = 0.5,
        max_faces: int = 2,
        video: bool = False,
        model_selection: int = 1,
        crop_fallback: bool = True,
        min_tracking_confidence: float = 0.5,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"min_confidence must be in [0, 1], got {min_confidence}")
        if max_faces < 1:
            raise ValueError(f"max_faces must be >= 1, got {max_faces}")
        mp = _import_mediapipe()
        self.min_confidence = min_confidence
        self.max_faces = max_faces
        self.video = video
        self.crop_fallback = crop_fallback
        self._detector = mp.solutions.face_detection.FaceDetection(
            model_selection=model_selection, min_detection_confidence=min_confidence
        )
        self._mesh = mp.solutions.face_mesh.FaceMesh(
            static_image_mode=not video,
            max_num_faces=max_faces,
            refine_landmarks=True,
            min_detection_confidence=min_confidence,
            min_tracking_confidence=min_tracking_confidence,
        )
        self._short_range = None  # BlazeFace short-range model, created on demand for close-up faces
        self._crop_mesh = None
        if crop_fallback:
            self._crop_mesh = mp.solutions.face_mesh.FaceMesh(
                static_image_mode=True, max_num_faces=1, refine_landmarks=True, min_detection_confidence=0.3
            )
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget tracking state (call between unrelated clips in video mode)."""
        self._mesh.reset()
        self._detector.reset()
        if self._short_range is not None:
            self._short_range.reset()

    def close(self) -> None:
        """Release the mediapipe graphs; the detector is unusable afterwards."""
        if not self._closed:
            for graph in (self._detector, self._short_range, self._mesh, self._crop_mesh):
                if graph is not None:
                    graph.close()
            self._closed = True

    def __enter__(self) -> FaceDetector:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self) -> None:  # best effort; explicit close() / with-block preferred
        try:
            self.close()
        except Exception:  # noqa: BLE001 - interpreter shutdown
            pass

    # -- detection -------------------------------------------------------------------------------------------
    def detect(self, rgb: np.ndarray) -> list[Face]:
        """Faces with landmarks in an RGB frame, largest box first.

        Args:
            rgb: (H, W, 3) uint8 RGB image.

        Returns:
            Faces whose ``landmarks`` is a (478, 2) float32 array of pixel coordinates.
        """
        return [f for f in self.detect_all(rgb) if f.landmarks is not None]

    def detect_all(self, rgb: np.ndarray) -> list[Face]:
        """Like ``detect`` but also returns detected faces that got no landmarks (``landmarks=None``)."""
        if self._closed:
            raise RuntimeError("FaceDetector is closed")
        rgb = check_rgb(rgb)
        dets = self._run_detector(self._detector, rgb)
        meshes = self._run_mesh(self._mesh, rgb)
        faces: list[Face] = []
        used: set[int] = set()
        unmatched = self._match(meshes, dets, used, faces)
        if unmatched:  # close-up faces: the full-range model misses them, the short-range model does not
            if self._short_range is None:
                self._short_range = _import_mediapipe().solutions.face_detection.FaceDetection(
                    model_selection=0, min_detection_confidence=self.min_confidence
                )
            close = self._run_detector(self._short_range, rgb)
            for mesh in self._match(unmatched, close, set(), faces):
                faces.append(Face.from_mesh(landmark_box(mesh[:, :2]), 0.0, mesh))
        for j, (box, score) in enumerate(dets):
            if j in used:
                continue
            mesh = self._mesh_in_box(rgb, box) if self._crop_mesh is not None else None
            faces.append(
                Face(box=box, score=score, landmarks=None) if mesh is None else Face.from_mesh(box, score, mesh)
            )
        faces.sort(key=lambda f: -f.size)
        return faces

    @staticmethod
    def _match(
        meshes: list[np.ndarray], dets: list[tuple[np.ndarray, float]], used: set[int], faces: list[Face]
    ) -> list[np.ndarray]:
        """Append a Face for every mesh overlapping an unused detection; return the meshes left unmatched."""
        unmatched = []
        for mesh in meshes:
            lbox = landmark_box(mesh[:, :2])
            best, best_iou = -1, 0.2
            for j, (box, _) in enumerate(dets):
                iou = box_iou(lbox, box)
                if j not in used and iou > best_iou:
                    best, best_iou = j, iou
            if best >= 0:
                used.add(best)
                faces.append(Face.from_mesh(dets[best][0], dets[best][1], mesh))
            else:
                unmatched.append(mesh)
        return unmatched

    @staticmethod
    def _run_detector(detector, rgb: np.ndarray) -> list[tuple[np.ndarray, float]]:
        h, w = rgb.shape[:2]
        result = detector.process(rgb)
        out = []
        for d in result.detections or []:
            bb = d.location_data.relative_bounding_box
            x0, y0 = max(bb.xmin * w, 0.0), max(bb.ymin * h, 0.0)
            x1, y1 = min((bb.xmin + bb.width) * w, w), min((bb.ymin + bb.height) * h, h)
            if x1 > x0 and y1 > y0:
                out.append((np.array([x0, y0, x1, y1], np.float32), float(d.score[0])))
        return out

    @staticmethod
    def _run_mesh(mesh, rgb: np.ndarray) -> list[np.ndarray]:
        """(478, 3) x, y, z pixel arrays of every face the mesh graph finds."""
        h, w = rgb.shape[:2]
        result = mesh.process(rgb)
        out = []
        for face in result.multi_face_landmarks or []:
            pts = np.array([(p.x * w, p.y * h, p.z * w) for p in face.landmark], dtype=np.float32)  # (478, 3)
            if pts.shape == (NUM_LANDMARKS, 3):
                out.append(pts)
        return out

    def _mesh_in_box(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray | None:
        """Face mesh on a square crop of 2x the detected box (small faces the full-frame mesh misses)."""
        h, w = rgb.shape[:2]
        cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
        half = max(box[2] - box[0], box[3] - box[1])
        x0, y0 = int(max(cx - half, 0)), int(max(cy - half, 0))
        x1, y1 = int(min(cx + half, w)), int(min(cy + half, h))
        if x1 - x0 < 8 or y1 - y0 < 8:
            return None
        crop = np.ascontiguousarray(rgb[y0:y1, x0:x1])
        scale = 1.0
        if max(crop.shape[:2]) < 192:  # the mesh's detector wants a face of a few dozen pixels
            import cv2

            scale = 192.0 / max(crop.shape[:2])
            crop = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        meshes = self._run_mesh(self._crop_mesh, crop)
        if not meshes:
            return None
        return (meshes[0] / scale + np.array([x0, y0, 0], np.float32)).astype(np.float32)
