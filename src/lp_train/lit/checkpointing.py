"""Checkpoint writing for long, preemptible runs (a run killed at any moment resumes from its last checkpoint):

- ``AtomicCheckpointIO``: every Lightning checkpoint is written to a temporary file in the target directory and
  moved into place with ``os.replace``, so a kill mid-write never leaves a truncated ``last.ckpt``;
- ``StepCheckpoint``: periodic ``step{N}.ckpt`` files + ``last.ckpt`` (the newest state), also after the final step
  and — on SIGTERM / SIGUSR1 (SLURM's warning signal) — after the current step, then a clean stop (all ranks agree).
  Saving at a step boundary (not mid-step from a signal handler, not after ``fit`` returns) keeps the loop state
  "mid-epoch", which is what an exact resume needs;
- ``find_resume_checkpoint``: the checkpoint of a run directory (``checkpoints/last.ckpt``, periodic
  ``checkpoints/step*.ckpt`` or Lightning's SLURM ``hpc_ckpt_*.ckpt``) with the highest global step, read from the
  files (never their mtimes); unreadable ones are reported and skipped — for ``resume=auto``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.plugins.io import TorchCheckpointIO

from lp_train.fileio import atomic_torch_save

log = logging.getLogger(__name__)


class AtomicCheckpointIO(TorchCheckpointIO):
    """``torch.save`` through ``lp_train.fileio.atomic_torch_save``: a temporary file in the target directory, fsync,
    ``os.replace`` onto the final name; the file is readable by the group/others as the umask allows (0644)."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        atomic_torch_save(checkpoint, path)


class StepCheckpoint(L.Callback):
    """Checkpoints at step boundaries: ``step{N:08d}.ckpt`` every ``every_n_train_steps`` (``keep_last`` newest kept),
    ``last.ckpt`` = the newest state (a hard link to the step file, else its own file), written also after the final
    step and after the step during which one of ``signals`` arrived — the run then stops.

    Signal handlers are installed at the start of fitting, chained with those already present (Lightning's own
    SIGTERM and SLURM handlers keep working), and restored at the end. Only rank 0 touches the files; every rank
    takes part in the save (``Trainer.save_checkpoint`` is collective).

    Inside a submitit job (a ``lp-train -m hydra/launcher=slurm*`` sweep member) the preemption signal submitit asked
    SLURM for (``SUBMITIT_PREEMPT_SIGNAL``, USR2 by default) is handled too, but submitit's own handler — which
    requeues the job and exits the process at once — is held back until the checkpoint is written:
    ``run_deferred_handlers`` (called by ``lp_train.train`` after fitting) runs it.

    Args:
        dirpath: checkpoint directory (the run's ``checkpoints/``).
        every_n_train_steps: period in generator steps (0: only final / signal checkpoints).
        keep_last: periodic files kept (older ones are deleted; 0 keeps all).
        signals: signal names that trigger a checkpoint and a clean stop.
    """

    def __init__(
        self,
        dirpath: str,
        every_n_train_steps: int = 1000,
        keep_last: int = 3,
        signals: Sequence[str] = ("SIGTERM", "SIGUSR1"),
    ):
        self.dirpath = Path(dirpath)
        self.every_n_train_steps, self.keep_last = every_n_train_steps, keep_last
        self.signals = [getattr(signal, name) for name in signals]
        self.received: int | None = None
        self.saved_step: int | None = None
        self._previous: dict[int, Any] = {}
        self._deferred: set[int] = set()  # signals whose previous handler runs after the checkpoint
        self._pending: list[tuple[Any, int]] = []

    def _handler(self, signum: int, frame: Any) -> None:
        self.received = signum
        previous = self._previous.get(signum)
        if signum in self._deferred:
            self._pending.append((previous, signum))
        elif callable(previous):
            previous(signum, frame)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            log.warning("StepCheckpoint: not the main thread, signal handlers not installed")
            return
        signals = list(self.signals)
        if os.environ.get("SUBMITIT_FOLDER"):  # set by submitit in the job process
            preempt = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"), None)
            if preempt is not None:
                self._deferred.add(preempt)
                signals.append(preempt)
        for sig in dict.fromkeys(signals):
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handler)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        step = trainer.global_step
        signalled = trainer.strategy.reduce_boolean_decision(self.received is not None, all=False)
        periodic = self.every_n_train_steps > 0 and step > 0 and step % self.every_n_train_steps == 0
        final = 0 < trainer.max_steps <= step
        if not (signalled or periodic or final) or self.saved_step == step:
            return
        if signalled:
            log.warning("signal %s received: checkpointing step %d and stopping", self.received, step)
            trainer.should_stop = True
        self.save(trainer, periodic)

    def save(self, trainer: L.Trainer, periodic: bool) -> Path:
        """Write this step's checkpoint(s); returns ``last.ckpt``."""
        step, last = trainer.global_step, self.dirpath / "last.ckpt"
        if not periodic:
            trainer.save_checkpoint(last, weights_only=False)  # full state: optimisers, loops, callbacks
        else:
            path = self.dirpath / f"step{step:08d}.ckpt"
            trainer.save_checkpoint(path, weights_only=False)
            if trainer.is_global_zero:
                _link_or_copy(path, last)
                self._prune()
        self.saved_step = step
        return last

    def _prune(self) -> None:
        if self.keep_last > 0:
            for old in sorted(self.dirpath.glob("step*.ckpt"))[: -self.keep_last]:
                old.unlink(missing_ok=True)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException) -> None:
        self._restore()  # also when the fit ends by an exception (Lightning's SIGTERM stop raises one)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            if handler is not None:
                signal.signal(sig, handler)
        self._previous = {}

    def run_deferred_handlers(self) -> None:
        """Run the held-back handlers (submitit's checkpoint-and-requeue, which may exit the process)."""
        pending, self._pending = self._pending, []
        for handler, signum in pending:
            if callable(handler):
                log.warning(
                    "checkpoint written: handing signal %d to %s", signum, getattr(handler, "__qualname__", handler)
                )
                handler(signum, None)


def _link_or_copy(src: Path, dst: Path) -> None:
    """Atomically make ``dst`` the same file as ``src`` (hard link; a copy where links are not possible)."""
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def checkpoint_step(path: str | os.PathLike) -> int:
    """The ``global_step`` stored in a Lightning checkpoint (``weights_only`` load, memory-mapped: the tensors are
    not read). Raises ``ValueError`` naming the file when it is truncated, corrupt or not a Lightning checkpoint."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return int(ckpt["global_step"])
    except Exception as e:  # noqa: BLE001 - any unreadable file is reported the same way
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:200]})") from e


def find_resume_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The checkpoint of ``run_dir`` with the highest global step (see module docstring), or None.

    The step is read from each file, never taken from its modification time (a ``cp -r``, an ``rsync`` without
    ``-t`` or a restore from backup scrambles those). Among files of the same step ``last.ckpt`` wins (it may hold
    the later, end-of-epoch loop state), then the newer file. A file that cannot be read (truncated by a full disk,
    corrupt) is reported with a warning naming it and skipped, so the run falls back to the newest intact one.
    """
    run_dir = Path(run_dir)
    candidates = [*run_dir.glob("checkpoints/*.ckpt"), *run_dir.glob("hpc_ckpt_*.ckpt")]
    candidates = [p for p in candidates if p.is_file() and not p.name.startswith(".")]
    ranked = []
    for path in candidates:
        try:
            ranked.append((checkpoint_step(path), path.name == "last.ckpt", path.stat().st_mtime_ns, path))
        except ValueError as e:
            log.warning("resume: skipping %s", e)
    if not ranked:
        return None
    best = max(ranked, key=lambda r: r[:3])
    log.info("resume: %s holds the highest step (%d) of %d readable checkpoint(s)", best[3], best[0], len(ranked))
    return best[3]
