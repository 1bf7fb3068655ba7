"""AED — average expression distance, the cross-reenactment expression-accuracy metric of LivePortrait (Sec. 4.2,
Table 3): the mean L1 distance between the expression parameters of each generated frame and its driving frame.

Named ``aed_expression`` because FOMM-family papers use "AED" for an *identity* embedding distance. LivePortrait
uses SMIRK's expression parameters; our default parameters come from ``MediapipeFaceParams`` (pose-normalised
face-mesh residual, canonical-face units) — the numbers are not on SMIRK's scale; plug SMIRK in through
``FaceParamEstimator`` to compare with the paper. Per frame: mean over the expression dimensions of |e_gen - e_drv|.
"""

from __future__ import annotations

import torch

from lp_train.metrics.face_params import FaceParamMetric, FaceParams


class ExpressionDistance(FaceParamMetric):
    """Mean L1 distance (↓) of expression parameters; ``update(FaceParams_gen, FaceParams_drv)``."""

    name = "aed_expression"
    description = "mean |expr_gen - expr_drv| over expression dims"

    def distance(self, preds: FaceParams, target: FaceParams) -> torch.Tensor:
        return (preds.expression - target.expression).abs().mean(1)

    def settings(self, estimator_info: dict) -> dict:
        return {"units": estimator_info.get("units", {}).get("expression"), "missing": "frames without a face"}
