"""The metric suite of one protocol: builds the configured metrics and scores generated frames batch by batch.

Metrics come from ``cfg.eval.metrics.metrics.<name>`` (Hydra ``_target_``); the shared feature extractors — the
face-parameter estimator for AED / APD / MAE and the identity embedder for CSIM — from
``cfg.eval.metrics.estimators`` and run once per frame for all metrics that need them (``lp_train.metrics``
"kind"s). FID features of generated frames are returned for caching; the distance is computed at the end.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import hydra
import torch
from omegaconf import DictConfig

from lp_train.metrics import METRICS

log = logging.getLogger(__name__)


class Suite:
    """The metrics ``names`` of a protocol, built from ``cfg_metrics`` (the ``eval/metrics`` config group).

    Args:
        cfg_metrics: ``{estimators: {face_params, identity}, metrics: {name: {_target_, ...}}}``.
        names: metric names to compute (keys of ``lp_train.metrics.METRICS``).
        device: where the networks run.
    """

    def __init__(self, cfg_metrics: DictConfig, names: Sequence[str], device: torch.device) -> None:
        unknown = [n for n in names if n not in METRICS or n not in cfg_metrics.metrics]
        if unknown:
            raise ValueError(f"unknown or unconfigured metrics {unknown}; configured: {sorted(cfg_metrics.metrics)}")
        kinds = {METRICS[n].kind for n in names}
        self.face_params = (
            hydra.utils.instantiate(cfg_metrics.estimators.face_params) if "face_params" in kinds else None
        )
        self.identity = hydra.utils.instantiate(cfg_metrics.estimators.identity) if "identity" in kinds else None
        self.metrics = {}
        for n in names:
            extra = {"face_params": {"estimator": self.face_params}, "identity": {"embedder": self.identity}}
            m = hydra.utils.instantiate(cfg_metrics.metrics[n], **extra.get(METRICS[n].kind, {}))
            self.metrics[n] = m.to(device)
        self.device = device

    def by_kind(self, kind: str) -> dict:
        return {n: m for n, m in self.metrics.items() if m.kind == kind}

    def embed(self, images: torch.Tensor) -> torch.Tensor | None:
        """Identity embeddings (for a source reused across frames), or None without CSIM."""
        return None if self.identity is None else self.identity(images)

    @torch.no_grad()
    def score(
        self, gen: torch.Tensor, drv: torch.Tensor, identity_ref: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Per-frame scores of one batch.

        Args:
            gen: (B, 3, E, E) generated frames at the evaluation size, [0, 1].
            drv: (B, 3, E, E) driving frames (= ground truth in self-reenactment).
            identity_ref: (B, D) reference embeddings for CSIM (the source in cross-reenactment); None = ``drv``.

        Returns:
            ``{metric: (B,) float64}`` (NaN = frame not scorable) plus ``fid_features`` (B, dims) if FID is on.
        """
        out: dict[str, torch.Tensor] = {}
        for n, m in self.by_kind("image_pair").items():
            out[n] = m.score(gen.to(self.device), drv.to(self.device)).cpu()
        if self.face_params is not None:
            p_gen, p_drv = self.face_params(gen), self.face_params(drv)
            for n, m in self.by_kind("face_params").items():
                out[n] = m.score(p_gen, p_drv).cpu()
        if self.identity is not None:
            ref = self.identity(drv) if identity_ref is None else identity_ref
            for n, m in self.by_kind("identity").items():
                out[n] = m.score(self.identity(gen), ref).cpu()
        for m in self.by_kind("distribution").values():
            out["fid_features"] = m.features(gen).cpu()
        return out

    def info(self) -> dict[str, dict]:
        """``info()`` of every metric (implementation, weights, calibrated, settings)."""
        return {n: m.info() for n, m in self.metrics.items()}
