"""Training-health signals shared by the stage modules (so a reader can trust the numbers): gradient norms per
sub-network and throughput (pairs/s, s/step), logged under ``train/grad_norm/*`` and ``train/perf/*``; a wandb logger
that cannot crash a run."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger as _LightningWandbLogger
from torch import nn

log = logging.getLogger(__name__)


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


class WandbLogger(_LightningWandbLogger):
    """Lightning's ``WandbLogger`` whose failures never stop training: if wandb's service process is gone (SLURM's
    SIGTERM on requeue or preemption reaches every process of the job, wandb's too) a logging call fails with a
    connection error; that is reported once, wandb logging stops, and the step's checkpoint, the CSV log and the
    run's exit status stay what they would have been. Same arguments as Lightning's."""

    _failed: str | None = None

    def _guard(self, what: str, call: Callable[[], Any]) -> Any:
        if self._failed is not None:
            return None
        try:
            return call()
        except Exception as e:  # noqa: BLE001 - any failure of the logging backend
            self._failed = f"{type(e).__name__}: {e}"
            log.warning("wandb %s failed (%s): wandb logging stops for this process", what, self._failed)
            return None

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        self._guard("log_metrics", lambda: super(WandbLogger, self).log_metrics(metrics, step))

    def log_hyperparams(self, params: Any) -> None:
        self._guard("log_hyperparams", lambda: super(WandbLogger, self).log_hyperparams(params))

    def log_image(self, *args: Any, **kwargs: Any) -> None:
        self._guard("log_image", lambda: super(WandbLogger, self).log_image(*args, **kwargs))

    def finalize(self, status: str) -> None:
        self._guard("finalize", lambda: super(WandbLogger, self).finalize(status))
