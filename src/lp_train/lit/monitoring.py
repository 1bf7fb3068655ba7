"""Training-health signals shared by the stage modules (so the logged numbers can be trusted): gradient norms per
sub-network and throughput (pairs/s, s/step), logged under ``train/grad_norm/*`` and ``train/perf/*``."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch
from torch import nn


def grad_norm(params: Iterable[nn.Parameter]) -> torch.Tensor:
    """Global L2 norm of the existing gradients of ``params`` (0 when none has a gradient)."""
    norms = [torch.linalg.vector_norm(p.grad.detach().float()) for p in params if p.grad is not None]
    return torch.linalg.vector_norm(torch.stack(norms)) if norms else torch.zeros(())


class ThroughputLogger(L.Callback):
    """Logs ``train/perf/step_time_s`` (wall time of one training batch, data wait excluded) and
    ``train/perf/pairs_per_s`` (pairs of all ranks per second)."""

    def __init__(self) -> None:
        self._start: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        self._start = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int):
        if self._start is None:
            return
        dt = max(time.perf_counter() - self._start, 1e-9)
        size = batch["source"].shape[0] if isinstance(batch, dict) and "source" in batch else 1
        metrics = {"train/perf/step_time_s": dt, "train/perf/pairs_per_s": size * trainer.world_size / dt}
        pl_module.log_dict(metrics, batch_size=1)
