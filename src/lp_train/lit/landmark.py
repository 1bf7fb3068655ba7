"""Distil the differentiable landmark regressor of stage 2 from mediapipe's face mesh (paper Sec. 3.2: the eye/lip
condition losses need landmarks of generated images through a differentiable network).

Teacher: the 478 mediapipe face-mesh points that curation stores per frame in the shards (``data_prep``), moved
with every augmentation by the loader. Student: ``LandmarkRegressor`` on the full-resolution crops
(``source_hr`` and ``driving_hr`` of each pair are two examples). Loss: L1 on the normalised points, a heatmap
cross-entropy against Gaussians at the teacher points (fast convergence of the soft-argmax), and L1 on the eye/lip
open ratios computed from the points (the quantities stage 2 uses). Validation reports the accuracy:
NME (mean point error / outer-eye-corner distance), eye / lip ratio MAE, and the same MAEs of the mean-shape
baseline (``val/*_baseline``) for scale. At the end of training the student's plain state dict is written to
``export_path`` — the file ``weights.landmark`` points at.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import lightning as L
import torch
from torch import nn

from lp_train.face.landmarks import LEFT_EYE_CORNERS, RIGHT_EYE_CORNERS, eye_open_ratio, lip_open_ratio
from lp_train.fileio import atomic_torch_save
from lp_train.teachers.landmark_regressor import LandmarkRegressor, heatmap_loss, scatter_to_mesh, soft_argmax

log = logging.getLogger(__name__)
LOSS_TERMS = ("points", "heatmap", "ratios")


def landmark_examples(batch: Mapping[str, torch.Tensor], indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both sides of a pair batch as examples: images (2B, 3, 2S, 2S) and teacher points (2B, N, 2)."""
    images = torch.cat([batch["source_hr"], batch["driving_hr"]])
    mesh = torch.cat([batch["source_landmarks"], batch["driving_landmarks"]])  # (2B, 478, 2)
    return images, mesh[:, indices.to(mesh.device)]


def landmark_metrics(pred: torch.Tensor, target: torch.Tensor, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-example accuracy of predicted points against the teacher's: ``nme`` (mean point distance / distance
    of the outer eye corners 33-263), ``eye_ratio_ae`` (mean over both eyes), ``lip_ratio_ae``; each (B,)."""
    pm, tm = scatter_to_mesh(pred, indices), scatter_to_mesh(target, indices)
    iod = (tm[:, RIGHT_EYE_CORNERS[0]] - tm[:, LEFT_EYE_CORNERS[0]]).norm(dim=-1).clamp_min(1e-6)
    return {
        "nme": (pred - target).norm(dim=-1).mean(-1) / iod,
        "eye_ratio_ae": (eye_open_ratio(pm) - eye_open_ratio(tm)).abs().mean(-1),
        "lip_ratio_ae": (lip_open_ratio(pm) - lip_open_ratio(tm)).abs().mean(-1),
    }


class LandmarkModule(L.LightningModule):
    """Trains ``LandmarkRegressor`` on (crop, mediapipe landmarks) examples from the pair loader.

    Args:
        net: the student regressor.
        optimizer: partial optimiser (``_partial_: true``).
        scheduler: optional partial LR scheduler (stepped per step).
        loss_weights: weights of the terms ``points`` (L1 of normalised coordinates), ``heatmap`` (cross-entropy
            against a Gaussian at the teacher point) and ``ratios`` (L1 of the eye/lip ratios); values in
            ``conf/module/landmark.yaml``, the one home of this module's settings (the code keeps no defaults).
        heatmap_sigma: Gaussian width of the heatmap targets, in heatmap pixels.
        export_path: where the trained state dict is written at the end of ``fit`` (null: not exported).
    """

    def __init__(
        self,
        net: LandmarkRegressor,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        scheduler: Callable[[torch.optim.Optimizer], object] | None,
        loss_weights: Mapping[str, float],
        heatmap_sigma: float,
        export_path: str | None,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        if set(loss_weights) != set(LOSS_TERMS):
            raise ValueError(f"loss_weights must weigh exactly {sorted(LOSS_TERMS)}, got {sorted(loss_weights)}")
        self.loss_weights = {k: float(v) for k, v in loss_weights.items()}
        self.heatmap_sigma = heatmap_sigma
        self.export_path = export_path
        # mean teacher shape of the first training batch: the baseline the validation metrics are compared with
        self.register_buffer("mean_shape", torch.full((net.num_points, 2), 0.5))

    def losses(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        images, target = landmark_examples(batch, self.net.indices)
        logits = self.net.forward_head(self.net.forward_features(images))
        pred = soft_argmax(logits)
        pm, tm = scatter_to_mesh(pred, self.net.indices), scatter_to_mesh(target, self.net.indices)
        terms = {
            "points": (pred - target).abs().mean(),
            "heatmap": heatmap_loss(logits, target, self.heatmap_sigma),
            "ratios": (eye_open_ratio(pm) - eye_open_ratio(tm)).abs().mean()
            + (lip_open_ratio(pm) - lip_open_ratio(tm)).abs().mean(),
        }
        terms["loss"] = sum(self.loss_weights[k] * v for k, v in terms.items())
        return terms

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self.losses(batch)
        self.log_dict({f"train/{k}": v for k, v in out.items()}, prog_bar=True, batch_size=2 * len(batch["source"]))
        return out["loss"]

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        images, target = landmark_examples(batch, self.net.indices)
        metrics = landmark_metrics(self.net(images), target, self.net.indices)
        mean_shape = self.mean_shape.expand_as(target)
        base = landmark_metrics(mean_shape, target, self.net.indices)
        logs = {f"val/{k}": v.mean() for k, v in metrics.items()}
        logs.update({f"val/{k}_baseline": v.mean() for k, v in base.items()})
        self.log_dict(logs, batch_size=len(images), sync_dist=True)

    def on_train_batch_start(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        if self.global_step == 0 and batch_idx == 0:
            _, target = landmark_examples(batch, self.net.indices)
            self.mean_shape.copy_(target.mean(0))
            self.net.set_prior(self.mean_shape)

    def on_train_end(self) -> None:
        if self.export_path and self.trainer.is_global_zero:
            export_state(self.net, self.export_path)

    def configure_optimizers(self) -> dict:
        opt = self.optimizer_factory(self.net.parameters())
        if self.scheduler_factory is None:
            return {"optimizer": opt}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}


def export_state(net: nn.Module, path: str | os.PathLike) -> Path:
    """Atomically write ``net``'s plain state dict (what ``weights.landmark`` loads)."""
    path = atomic_torch_save({k: v.detach().cpu() for k, v in net.state_dict().items()}, path)
    log.info("landmark regressor exported to %s", path)
    return path
