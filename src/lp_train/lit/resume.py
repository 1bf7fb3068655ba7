"""Exact resume after preemption: what Lightning's checkpoint lacks for a resumed run to
continue the *same* loss curve.

Lightning already restores the weights, both optimisers, schedulers, the EMA (a submodule), ``global_step`` and the
loop counters. ``ExactResume`` adds

- the RNG states (python, numpy, torch CPU, CUDA) of **every rank** (gathered into the checkpoint), restored right
  before the first resumed training step, so random warps / dropout continue identically;
- the data-stream position: the number of batches of the current epoch already trained on (counted here, stored
  by the train loader, a ``ResumableDataLoader``, in Lightning's loader state). On resume the loader fast-forwards
  past them in its first pass. This is exact when the stream is a function of
  (seed, epoch, rank, worker) — true for ``SyntheticPairs`` and for map-style datasets shuffled by
  ``EpochRandomSampler`` / Lightning's ``DistributedSampler``; for a WebDataset stream it is exact if its shard and
  sample shuffles are seeded per epoch, as ``lp_train.data`` does.

Fast-forwarding costs the loading (not the training) of the skipped batches of the current epoch.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, IterableDataset, RandomSampler

log = logging.getLogger(__name__)


class EpochRandomSampler(RandomSampler):
    """A RandomSampler whose permutation depends only on (seed, epoch) (``set_epoch`` is called by Lightning)."""

    def __init__(self, data_source: Any, seed: int = 0):
        super().__init__(data_source, generator=torch.Generator())
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        self.generator.manual_seed(self.seed * 1_000_003 + self.epoch)
        return super().__iter__()


class ResumableDataLoader(DataLoader):
    """A DataLoader whose state is its position in the current pass.

    ``consumed`` = batches of the current pass the training has taken (set by ``ExactResume``: the loader itself
    cannot know, Lightning prefetches ahead). ``state_dict`` stores it; ``load_state_dict`` makes the next pass
    skip that many batches, unless the pass was complete (then the next epoch starts from its beginning).
    """

    _skip = 0
    consumed = 0

    def skip_next(self, n: int) -> None:
        self._skip = int(n)

    def __iter__(self):
        it = super().__iter__()
        skip, self._skip = self._skip, 0
        for i in range(skip):
            try:
                next(it)
            except StopIteration:
                log.warning("resume: the data stream ended after %d of %d skipped batches", i, skip)
                break
        if skip:
            log.info("resume: fast-forwarded the training stream by %d batches", skip)
        return it

    def state_dict(self) -> dict:
        return {"consumed": int(self.consumed)}

    def load_state_dict(self, state: dict) -> None:
        consumed = int(state.get("consumed", 0))
        try:
            complete = consumed >= len(self)
        except TypeError:  # an iterable dataset without a length
            complete = False
        self.skip_next(0 if complete else consumed)

    @classmethod
    def wrap(cls, loader: Any, seed: int = 0) -> Any:
        """The same loader as a ``ResumableDataLoader`` (a shuffled map-style dataset gets ``EpochRandomSampler``);
        anything that is not a plain torch DataLoader is returned unchanged."""
        if type(loader) is not DataLoader:
            return loader
        kw = dict(
            batch_size=loader.batch_size, num_workers=loader.num_workers, collate_fn=loader.collate_fn,
            pin_memory=loader.pin_memory, drop_last=loader.drop_last, timeout=loader.timeout,
            worker_init_fn=loader.worker_init_fn, multiprocessing_context=loader.multiprocessing_context,
            generator=loader.generator, prefetch_factor=loader.prefetch_factor,
            persistent_workers=loader.persistent_workers, pin_memory_device=loader.pin_memory_device,
        )  # fmt: skip
        if isinstance(loader.dataset, IterableDataset):
            return cls(loader.dataset, **kw)
        if loader.batch_size is None:  # a custom batch sampler
            kw.pop("batch_size"), kw.pop("drop_last")
            return cls(loader.dataset, batch_sampler=loader.batch_sampler, **kw)
        sampler = EpochRandomSampler(loader.dataset, seed) if type(loader.sampler) is RandomSampler else loader.sampler
        return cls(loader.dataset, sampler=sampler, **kw)


def rng_state() -> dict:
    """This process's RNG states as plain Python types (bytes / ints: safe for ``torch.load(weights_only=True)`` and
    for ``all_gather_object``)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
        "torch": torch.get_rng_state().numpy().tobytes(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.numpy().tobytes() for s in torch.cuda.get_rng_state_all()]
    return state


def _byte_tensor(b: bytes) -> torch.Tensor:
    return torch.frombuffer(bytearray(b), dtype=torch.uint8)


def set_rng_state(state: dict) -> None:
    """Inverse of ``rng_state``."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_byte_tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_byte_tensor(b) for b in state["cuda"]])


class ExactResume(L.Callback):
    """Saves and restores RNG states (per rank) and the position in the training stream (see module docstring)."""

    def __init__(self) -> None:
        self._pending_rng: dict | None = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not isinstance(trainer.train_dataloader, ResumableDataLoader):
            log.warning("train loader %s is not a ResumableDataLoader: a resumed run restarts its epoch's data",
                        type(trainer.train_dataloader).__name__)  # fmt: skip

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int):
        if self._pending_rng is not None:
            set_rng_state(self._pending_rng)
            self._pending_rng = None
        loader = trainer.train_dataloader
        if isinstance(loader, ResumableDataLoader):
            loader.consumed = batch_idx + 1

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        states = [rng_state()]
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            states = [None] * dist.get_world_size()
            dist.all_gather_object(states, rng_state())
        checkpoint["exact_resume"] = {"rng": states}

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict) -> None:
        state = checkpoint.get("exact_resume")
        if state is None:
            log.warning("resume: checkpoint has no RNG/data-position state; the resumed run will not be exact")
            return
        rank = trainer.global_rank
        states = state["rng"]
        if len(states) != trainer.world_size:
            log.warning("resume: checkpoint has RNG states of %d ranks, run has %d: using rank 0's", len(states),
                        trainer.world_size)  # fmt: skip
            rank = 0
        self._pending_rng = states[rank]
