"""MAE — mean angular error of the eyeball direction, the gaze-accuracy metric of LivePortrait (Sec. 4.2,
Tables 2-3): the angle in degrees between the gaze direction of each generated frame and of its driving frame.

The default gaze comes from mediapipe's iris landmarks (``lp_train.metrics.face_params.gaze_from_canonical``: iris
centre relative to the eye corners in the pose-normalised face frame, eyeball radius 0.4 x eye width; eye-in-head
direction, both eyes averaged). Any estimator that fills ``FaceParams.gaze`` with unit vectors can be used.
"""

from __future__ import annotations

import torch

from lp_train.metrics.aed import _valid
from lp_train.metrics.base import FrameMetric
from lp_train.metrics.face_params import FaceParamEstimator, FaceParams


def angular_error_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) angle in degrees between (B, 3) direction vectors (atan2 form, accurate near 0)."""
    a = torch.nn.functional.normalize(a.double(), dim=1)
    b = torch.nn.functional.normalize(b.double(), dim=1)
    return torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=1), (a * b).sum(1)))


class GazeAngularError(FrameMetric):
    """Mean angular error (↓, degrees) of gaze directions; ``update(FaceParams_gen, FaceParams_drv)``.

    Args:
        estimator: the estimator that produced the gaze vectors (recorded in ``info``).
    """

    name = "mae_gaze"
    higher_is_better = False
    kind = "face_params"

    def __init__(self, estimator: FaceParamEstimator | None = None) -> None:
        super().__init__()
        self.estimator = estimator

    def score(self, preds: FaceParams, target: FaceParams) -> torch.Tensor:
        valid = _valid(preds, target)
        if preds.gaze is None or target.gaze is None:
            raise ValueError("mae_gaze: the face-parameter estimator gives no gaze (FaceParams.gaze is None)")
        d = angular_error_deg(preds.gaze, target.gaze)
        return torch.where(valid, d, torch.full_like(d, float("nan")))

    def info(self) -> dict:
        est = self.estimator.info() if self.estimator is not None else {}
        return {
            "implementation": "lp_train.metrics.mae (angle between gaze unit vectors, degrees); estimator: "
            + str(est.get("implementation", "unknown")),
            "weights": est.get("weights"),
            "calibrated": bool(est.get("calibrated", False)),
            "settings": {"units": "degrees", "gaze": est.get("units", {}).get("gaze")},
        }
