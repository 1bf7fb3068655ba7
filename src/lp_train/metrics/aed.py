"""AED — average expression distance, the cross-reenactment expression-accuracy metric of LivePortrait (Sec. 4.2,
Table 3): the mean L1 distance between the expression parameters of each generated frame and its driving frame.

Named ``aed_expression`` because FOMM-family papers use "AED" for an *identity* embedding distance. LivePortrait
uses SMIRK's expression parameters; our default parameters come from ``MediapipeFaceParams`` (pose-normalised
face-mesh residual, canonical-face units) — the numbers are not on SMIRK's scale; plug SMIRK in through
``FaceParamEstimator`` to compare with the paper. Per frame: mean over the expression dimensions of |e_gen - e_drv|.
"""

from __future__ import annotations

import torch

from lp_train.metrics.base import FrameMetric
from lp_train.metrics.face_params import FaceParamEstimator, FaceParams


def _valid(pred: FaceParams, target: FaceParams) -> torch.Tensor:
    if len(pred) != len(target):
        raise ValueError(f"face parameters of {len(pred)} generated vs {len(target)} driving frames")
    return pred.found & target.found


class ExpressionDistance(FrameMetric):
    """Mean L1 distance (↓) of expression parameters; ``update(FaceParams_gen, FaceParams_drv)``.

    Args:
        estimator: the estimator that produced the parameters (recorded in ``info``; the metric does not call it).
    """

    name = "aed_expression"
    higher_is_better = False
    kind = "face_params"

    def __init__(self, estimator: FaceParamEstimator | None = None) -> None:
        super().__init__()
        self.estimator = estimator

    def score(self, preds: FaceParams, target: FaceParams) -> torch.Tensor:
        valid = _valid(preds, target)
        d = (preds.expression - target.expression).abs().mean(1)
        return torch.where(valid, d, torch.full_like(d, float("nan")))

    def info(self) -> dict:
        est = self.estimator.info() if self.estimator is not None else {}
        return {
            "implementation": "lp_train.metrics.aed (mean |expr_gen - expr_drv| over expression dims); estimator: "
            + str(est.get("implementation", "unknown")),
            "weights": est.get("weights"),
            "calibrated": bool(est.get("calibrated", False)),
            "settings": {"units": est.get("units", {}).get("expression"), "missing": "frames without a face"},
        }
