"""APD — average pose distance, the cross-reenactment head-pose-accuracy metric of LivePortrait (Sec. 4.2,
Table 3): the mean L1 distance between the head-pose parameters of each generated frame and its driving frame.

Named ``apd_pose``. The default ``MediapipeFaceParams`` estimator gives (pitch, yaw, roll) in degrees from a rigid
fit of mediapipe's canonical face (``lp_train.landmarks.fit_weak_perspective``); the paper uses SMIRK's pose
parameters (axis-angle, radians), so the scales differ — the unit is recorded in ``info``. Per frame: mean over
the pose components of |p_gen - p_drv|.
"""

from __future__ import annotations

import torch

from lp_train.metrics.aed import _valid
from lp_train.metrics.base import FrameMetric
from lp_train.metrics.face_params import FaceParamEstimator, FaceParams


class PoseDistance(FrameMetric):
    """Mean L1 distance (↓) of head-pose parameters; ``update(FaceParams_gen, FaceParams_drv)``.

    Args:
        estimator: the estimator that produced the parameters (recorded in ``info``).
    """

    name = "apd_pose"
    higher_is_better = False
    kind = "face_params"

    def __init__(self, estimator: FaceParamEstimator | None = None) -> None:
        super().__init__()
        self.estimator = estimator

    def score(self, preds: FaceParams, target: FaceParams) -> torch.Tensor:
        valid = _valid(preds, target)
        d = (preds.pose - target.pose).abs().mean(1)
        return torch.where(valid, d, torch.full_like(d, float("nan")))

    def info(self) -> dict:
        est = self.estimator.info() if self.estimator is not None else {}
        return {
            "implementation": "lp_train.metrics.apd (mean |pose_gen - pose_drv| over pose components); estimator: "
            + str(est.get("implementation", "unknown")),
            "weights": est.get("weights"),
            "calibrated": bool(est.get("calibrated", False)),
            "settings": {"units": est.get("units", {}).get("pose"), "missing": "frames without a face"},
        }
