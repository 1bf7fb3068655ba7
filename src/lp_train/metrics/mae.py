"""MAE — mean angular error of the eyeball direction, the gaze-accuracy metric of LivePortrait (Sec. 4.2,
Tables 2-3): the angle in degrees between the gaze direction of each generated frame and of its driving frame.

The default gaze comes from mediapipe's iris landmarks (``lp_train.metrics.face_params.gaze_from_canonical``: iris
centre relative to the eye corners in the pose-normalised face frame, eyeball radius 0.4 x eye width; eye-in-head
direction, both eyes averaged). Any estimator that fills ``FaceParams.gaze`` with unit vectors can be used.
"""

from __future__ import annotations

import torch

from lp_train.metrics.face_params import FaceParamMetric, FaceParams


def angular_error_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) angle in degrees between (B, 3) direction vectors (atan2 form, accurate near 0)."""
    a = torch.nn.functional.normalize(a.double(), dim=1)
    b = torch.nn.functional.normalize(b.double(), dim=1)
    return torch.rad2deg(torch.atan2(torch.linalg.cross(a, b).norm(dim=1), (a * b).sum(1)))


class GazeAngularError(FaceParamMetric):
    """Mean angular error (↓, degrees) of gaze directions; ``update(FaceParams_gen, FaceParams_drv)``."""

    name = "mae_gaze"
    description = "angle between gaze unit vectors, degrees"

    def distance(self, preds: FaceParams, target: FaceParams) -> torch.Tensor:
        if preds.gaze is None or target.gaze is None:
            raise ValueError("mae_gaze: the face-parameter estimator gives no gaze (FaceParams.gaze is None)")
        return angular_error_deg(preds.gaze, target.gaze)

    def settings(self, estimator_info: dict) -> dict:
        return {"units": "degrees", "gaze": estimator_info.get("units", {}).get("gaze")}
