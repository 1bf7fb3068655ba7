"""What every lp-train metric shares: a mean-of-per-frame-scores ``torchmetrics.Metric`` and provenance records.

The evaluation tables of LivePortrait (Guo et al. 2024, Sec. 4.2, Tables 2-3) average a per-frame score over all
evaluated frames. ``FrameMetric`` implements exactly that: ``score(preds, target)`` gives one value per frame,
``update`` sums them (float64) with their count, ``compute`` returns the mean. Both states are summed across DDP
ranks by torchmetrics (``dist_reduce_fx="sum"``), so a distributed result equals the single-process one.

Frames a metric cannot score (no face found by a face-based estimator) are given as NaN by ``score``; ``update``
counts them in ``missing`` instead of the mean, and the report states the number.

Every metric describes itself with ``info()`` (implementation, weights file, calibration, exact settings); a metric
whose network runs on ``random`` weights is ``calibrated=False`` and reports never put it in a headline table.
``append_result`` writes one JSON line per evaluation to ``metric-<name>.jsonl`` (stylegan3 / EDM style).
"""

from __future__ import annotations

import json
import os
import time
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torchmetrics import Metric


def check_images(preds: torch.Tensor, target: torch.Tensor | None = None, name: str = "metric") -> None:
    """Raise ``ValueError`` unless the inputs are float (B, 3, H, W) images of equal shape."""
    for label, x in (("preds", preds), ("target", target)):
        if x is None:
            continue
        if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise ValueError(f"{name}: {label} must be a float (B, 3, H, W) tensor in [0, 1], got {got}")
    if target is not None and preds.shape != target.shape:
        raise ValueError(f"{name}: preds {tuple(preds.shape)} and target {tuple(target.shape)} differ in shape")


class FrameMetric(Metric):
    """Mean over frames of a per-frame score; subclasses implement ``score`` and ``info``.

    States (all summed over DDP ranks): ``total`` (float64 sum of valid scores), ``count`` (valid frames) and
    ``missing`` (frames scored NaN, e.g. no face found).
    """

    name: str = "frame_metric"
    higher_is_better: bool | None = None
    # what ``update`` takes: "image_pair" (generated, ground-truth images), "face_params" (two ``FaceParams``),
    # "identity" (two embedding batches); the evaluation suite feeds each metric by its kind
    kind: str = "image_pair"
    full_state_update = False

    def __init__(self) -> None:
        super().__init__()
        self.add_state("total", torch.tensor(0.0, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
        self.add_state("missing", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")

    @abstractmethod
    def score(self, preds: Any, target: Any) -> torch.Tensor:
        """Per-frame scores (B,), NaN where the frame cannot be scored."""

    def update(self, preds: Any, target: Any) -> None:
        """Score a batch and accumulate it."""
        self.update_scores(self.score(preds, target))

    def update_scores(self, scores: torch.Tensor) -> None:
        """Accumulate precomputed per-frame scores (NaN = missing)."""
        scores = scores.detach().reshape(-1).to(device=self.total.device, dtype=torch.float64)
        valid = ~torch.isnan(scores)
        self.total += scores[valid].sum()
        self.count += valid.sum()
        self.missing += (~valid).sum()

    def compute(self) -> torch.Tensor:
        """Mean of the valid per-frame scores (NaN when no frame was valid)."""
        if self.count == 0:
            return torch.tensor(float("nan"), dtype=torch.float64)
        return self.total / self.count

    def info(self) -> dict:
        """Provenance: ``implementation``, ``weights``, ``calibrated``, ``settings`` (overridden by subclasses)."""
        return {"implementation": type(self).__qualname__, "weights": None, "calibrated": True, "settings": {}}


def weights_record(info: Any) -> dict:
    """A ``lp_train.weights.WeightsInfo`` (or None for a weight-free metric) as a JSON-able dict."""
    if info is None:
        return {"weights": None, "calibrated": True}
    return {"weights": f"{info.name}={info.source}", "calibrated": bool(info.calibrated)}


def append_result(out_dir: str | os.PathLike, name: str, record: Mapping[str, Any]) -> Path:
    """Append one JSON line ``{time, metric, **record}`` to ``out_dir/metric-<name>.jsonl``; returns the file.

    A single ``write`` of one line on a file opened for append: concurrent writers never interleave lines.
    """
    path = Path(out_dir) / f"metric-{name}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps({"time": time.strftime("%Y-%m-%dT%H:%M:%S"), "metric": name, **record}, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
    return path
