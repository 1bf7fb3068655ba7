"""Face-identity embedders for CSIM (LivePortrait Sec. 4.2, Tables 2-3): dlib's ResNet (default) and ArcFace.

* ``DlibFaceEmbedder`` (default, calibrated offline): dlib's face-recognition ResNet (King 2017, 128-d, 99.38% on
  LFW) with its 5-point aligner, the models shipped by PyPI ``face-recognition-models``; the same pipeline as the
  ``face_recognition`` package (HOG detector, 5-point shape, ``compute_face_descriptor`` on the aligned 150² chip).
* ``ArcFaceEmbedder``: insightface's ArcFace IResNet (Deng et al. 2019; the "arcface_torch" ``iresnet`` layout, so
  its released ``backbone.pth`` loads strictly) from ``weights.face_id``; 112² crops aligned by a similarity
  transform of five mediapipe points (eye centres, nose tip, mouth corners) to the standard ArcFace template.
  LivePortrait's CSIM used ArcFace; with ``random`` weights it is uncalibrated (tests only).

Generated frames of an untrained model may contain no detectable face: both embedders then embed the region where
the LivePortrait crop puts the face (centre shifted down by 0.125 of the side, side/2.3 wide) and count the
fallback, which ``info()`` reports.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Protocol, runtime_checkable

import cv2
import numpy as np
import torch

from lp_train import weights as W
from lp_train.metrics.face_params import FaceMesh3D, to_uint8_hwc
from lp_train.teachers.arcface import IRESNET_LAYERS, IResNet

# LivePortrait crop geometry (lp_train.face.crop: scale 2.3, centre moved up by 0.125 of the side): where the face is.
CROP_SCALE, CROP_VY = 2.3, 0.125
# insightface's 112x112 ArcFace alignment template (left eye, right eye, nose, left / right mouth corner, image x)
ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32
)


@runtime_checkable
class IdentityEmbedder(Protocol):
    """Images (B, 3, H, W) in [0, 1] -> (B, D) identity embeddings (compared by cosine similarity)."""

    def __call__(self, images: torch.Tensor) -> torch.Tensor: ...

    def info(self) -> dict: ...


def prior_face_box(h: int, w: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) of the face in a LivePortrait crop of size (h, w)."""
    side = min(h, w) / CROP_SCALE
    cx, cy = w / 2, h / 2 + CROP_VY * min(h, w)
    return int(cx - side / 2), int(cy - side / 2), int(cx + side / 2), int(cy + side / 2)


def _face_models_dir() -> Path:
    spec = importlib.util.find_spec("face_recognition_models")  # not imported: its __init__ needs pkg_resources
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("CSIM (dlib) needs `pip install face-recognition-models dlib-bin` (dlib's model files)")
    return Path(next(iter(spec.submodule_search_locations))) / "models"


class DlibFaceEmbedder:
    """dlib face-recognition ResNet embeddings (128-d).

    Args:
        upsample: HOG detector upsampling passes (1 finds faces down to ~40 px).
        num_jitters: dlib's test-time jitter count (1 = none, as ``face_recognition``'s default).
    """

    def __init__(self, upsample: int = 1, num_jitters: int = 1) -> None:
        import dlib

        models = _face_models_dir()
        self.recognition_file = models / "dlib_face_recognition_resnet_model_v1.dat"
        self._detector = dlib.get_frontal_face_detector()
        self._shape = dlib.shape_predictor(str(models / "shape_predictor_5_face_landmarks.dat"))
        self._net = dlib.face_recognition_model_v1(str(self.recognition_file))
        self.upsample, self.num_jitters = upsample, num_jitters
        self.n_total = self.n_fallback = 0

    def embed(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (128,) float64; the largest detected face, else the crop-prior box."""
        import dlib

        rects = self._detector(rgb, self.upsample)
        self.n_total += 1
        if len(rects):
            rect = max(rects, key=lambda r: r.area())
        else:
            self.n_fallback += 1
            rect = dlib.rectangle(*prior_face_box(*rgb.shape[:2]))
        shape = self._shape(rgb, rect)
        return np.asarray(self._net.compute_face_descriptor(rgb, shape, self.num_jitters), dtype=np.float64)

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.embed(np.ascontiguousarray(x)) for x in to_uint8_hwc(images)]))

    def info(self) -> dict:
        import dlib

        return {
            "implementation": f"dlib {dlib.__version__} face_recognition_model_v1 (HOG detector, 5-point alignment)",
            "weights": f"{self.recognition_file.name} (PyPI face-recognition-models)",
            "calibrated": True,
            "settings": {
                "upsample": self.upsample,
                "num_jitters": self.num_jitters,
                "no_face_fallback": f"{self.n_fallback}/{self.n_total} frames used the crop-prior box",
            },
        }


class ArcFaceEmbedder:
    """ArcFace embeddings (512-d) of mediapipe-aligned 112² crops.

    Args:
        weights: ``weights.face_id`` value: a local arcface_torch ``backbone.pth`` state dict, or ``random``.
        arch: ``r100`` (default, insightface's ms1mv3 model), ``r50``, ``r34`` or ``r18``.
    """

    def __init__(self, weights: str | os.PathLike | None = None, arch: str = "r100") -> None:
        if arch not in IRESNET_LAYERS:
            raise ValueError(f"ArcFace arch must be one of {sorted(IRESNET_LAYERS)}, got {arch!r}")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.net = IResNet(IRESNET_LAYERS[arch])
        self.weights_info = W.load_into(self.net, "face_id", weights)
        self.net.eval().requires_grad_(False)
        self.arch = arch
        self._mesh: FaceMesh3D | None = None
        self.n_total = self.n_fallback = 0

    def align(self, rgb: np.ndarray) -> np.ndarray:
        """(H, W, 3) uint8 -> (112, 112, 3) uint8 aligned crop (crop-prior box if no face is found)."""
        if self._mesh is None:
            self._mesh = FaceMesh3D()
        pts = self._mesh(rgb)
        self.n_total += 1
        if pts is None:
            self.n_fallback += 1
            x0, y0, x1, y1 = prior_face_box(*rgb.shape[:2])
            src = np.array([[x0, y0], [x1, y0], [x0, y1]], np.float32)
            m = cv2.getAffineTransform(src, np.array([[0, 0], [112, 0], [0, 112]], np.float32))
        else:  # template order: image-left eye (subject's right: iris 468), image-right eye (473), nose, mouth
            five = pts[[468, 473, 1, 61, 291], :2].astype(np.float32)
            m, _ = cv2.estimateAffinePartial2D(five, ARCFACE_TEMPLATE, method=cv2.LMEDS)
        return cv2.warpAffine(rgb, m, (112, 112), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        crops = np.stack([self.align(x) for x in to_uint8_hwc(images)])
        x = torch.from_numpy(crops).permute(0, 3, 1, 2).float().div(255.0)  # the net maps [0, 1] to [-1, 1]
        return self.net(x.to(next(self.net.parameters()).device)).double().cpu()

    def info(self) -> dict:
        return {
            "implementation": f"ArcFace IResNet-{self.arch} (insightface arcface_torch layout), mediapipe 5-point "
            "alignment to the 112² template",
            "weights": f"{self.weights_info.name}={self.weights_info.source}",
            "calibrated": self.weights_info.calibrated,
            "settings": {"no_face_fallback": f"{self.n_fallback}/{self.n_total} frames used the crop-prior box"},
        }

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_mesh"] = None
        return state
