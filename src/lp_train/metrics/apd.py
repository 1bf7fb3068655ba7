"""APD — average pose distance, the cross-reenactment head-pose-accuracy metric of LivePortrait (Sec. 4.2,
Table 3): the mean L1 distance between the head-pose parameters of each generated frame and its driving frame.

Named ``apd_pose``. The default ``MediapipeFaceParams`` estimator gives (pitch, yaw, roll) in degrees from a rigid
fit of mediapipe's canonical face (``lp_train.face.landmarks.fit_weak_perspective``); the paper uses SMIRK's pose
parameters (axis-angle, radians), so the scales differ — the unit is recorded in ``info``. Per frame: mean over
the pose components of |p_gen - p_drv|.
"""

from __future__ import annotations

import torch

from lp_train.metrics.face_params import FaceParamMetric, FaceParams


class PoseDistance(FaceParamMetric):
    """Mean L1 distance (↓) of head-pose parameters; ``update(FaceParams_gen, FaceParams_drv)``."""

    name = "apd_pose"
    description = "mean |pose_gen - pose_drv| over pose components"

    def distance(self, preds: FaceParams, target: FaceParams) -> torch.Tensor:
        return (preds.pose - target.pose).abs().mean(1)

    def settings(self, estimator_info: dict) -> dict:
        return {"units": estimator_info.get("units", {}).get("pose"), "missing": "frames without a face"}
