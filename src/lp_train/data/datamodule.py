"""LightningDataModules of the training data (paper Sec. 3.1): ``LivePortraitDataModule`` reads WebDataset shards
(``conf/data/shards.yaml``, ``tiny.yaml``), ``SyntheticDataModule`` draws faces (``conf/data/synthetic.yaml``).
Both yield batches of the contract in ``lp_train.data`` (``lp_train.data.batch.check_batch``).

Under DDP each rank builds its own pipelines with the trainer's global rank and world size (``setup``), so the
split and the seeds never depend on environment variables inside loader workers. Training epochs have exactly
``train_batches_per_epoch`` batches on every rank (resampled shards + ``with_epoch``), so ranks never wait for
each other at an epoch end. ``LogDataStats`` (in ``conf/callbacks/default.yaml``) logs the skip counters (corrupt
JPEGs, malformed metadata, tar errors).
"""

from __future__ import annotations

import logging
import math

import lightning as L
import webdataset as wds
from torch.utils.data import DataLoader

from lp_train.data.augment import AugmentConfig
from lp_train.data.batch import finalize_batch
from lp_train.data.pipeline import LoaderConfig, build_train_pipeline, build_val_pipeline
from lp_train.data.stages import SkipCounters
from lp_train.data.synthetic import SyntheticPairs

log = logging.getLogger(__name__)


def _loader(dataset, num_workers: int, persistent: bool, pin_memory: bool, **kw) -> DataLoader:
    extra = {"persistent_workers": persistent, "prefetch_factor": 2} if num_workers > 0 else {}
    return DataLoader(dataset, num_workers=num_workers, pin_memory=pin_memory, **extra, **kw)


class LivePortraitDataModule(L.LightningDataModule):
    """(source, driving) pair batches from WebDataset shards written by ``lp-prep`` (``lp_train.data.shard_format``).

    The loaders yield compact uint8 batches; ``on_after_batch_transfer`` finalises them on the device, so a
    LightningModule receives the contract (it must not override ``on_after_batch_transfer`` itself, or must call
    ``lp_train.data.finalize_batch``). Without a trainer, call ``finalize_batch`` on the loader's batches.
    Every argument is set by ``conf/data/shards.yaml`` (the one home of these values; no defaults here).
    """

    def __init__(
        self,
        train_shards: str | list[str],  # paths / globs / brace patterns of training shards ("::" joins several)
        val_shards: str | list[str] | None,  # validation shards (None: no validation loader)
        size: int,  # network input side S (targets 2S)
        batch_size: int,  # pairs per batch and rank
        val_batch_size: int | None,  # validation batch size (default: batch_size)
        num_workers: int,  # loader worker processes per rank
        val_num_workers: int | None,  # validation workers (default: min(num_workers, 2))
        train_batches_per_epoch: int,  # batches per rank per training epoch
        p_image: float,  # probability of an image pair (image + warp of itself)
        max_gap: int,  # max frame distance of a video pair (0: any two frames of the chunk)
        cross_identity_prob: float,  # probability of a cross-identity pair (stage 2)
        pairs_per_sample: int,  # pairs drawn per read chunk
        shuffle_buffer: int,  # frame-pair candidates in the shuffle buffer
        pool_size: int,  # candidates per kind for image/video mixing and cross-identity partners
        seed: int,  # base seed of all loader randomness
        augment: AugmentConfig | dict | None,  # flip / colour jitter / image-pair warp options
        persistent_workers: bool,  # keep workers between epochs (their epoch counter advances the seeds)
        pin_memory: bool,  # pin batches (set True on GPU machines)
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        aug = augment if isinstance(augment, AugmentConfig) else AugmentConfig(**dict(augment or {}))
        per_worker = math.ceil(train_batches_per_epoch / max(1, num_workers))
        common = dict(
            size=size,
            p_image=p_image,
            max_gap=max_gap,
            cross_identity_prob=cross_identity_prob,
            pairs_per_sample=pairs_per_sample,
            pool_size=pool_size,
            seed=seed,
            augment=aug,
        )
        self.train_cfg = LoaderConfig(
            train_shards,
            batch_size=batch_size,
            shuffle_buffer=shuffle_buffer,
            shuffle_initial=max(1, shuffle_buffer // 4),
            epoch_batches=per_worker,
            **common,
        )
        val_only = dict(shuffle_buffer=0, shuffle_initial=0, epoch_batches=0)  # unused by the ordered validation pass
        self.val_cfg = (
            None
            if val_shards is None
            else LoaderConfig(val_shards, batch_size=val_batch_size or batch_size, **val_only, **common)
        )
        self.num_workers, self.persistent_workers, self.pin_memory = num_workers, persistent_workers, pin_memory
        self.val_num_workers = min(num_workers, 2) if val_num_workers is None else val_num_workers
        self.train_counters, self.val_counters = SkipCounters(), SkipCounters()
        self.train_set = self.val_set = None

    def _rank(self) -> tuple[int, int]:
        if self.trainer is not None:
            return self.trainer.global_rank, self.trainer.world_size
        rank, world, _, _ = wds.utils.pytorch_worker_info()
        return rank, world

    def setup(self, stage: str | None = None) -> None:
        """Build this rank's pipelines; a missing shard raises ``FileNotFoundError`` here, before any step."""
        rank, world = self._rank()
        if stage in (None, "fit") and self.train_set is None:
            self.train_set = build_train_pipeline(self.train_cfg, rank, world, self.train_counters)
            log.info("rank %d/%d: %d training shards", rank, world, len(self.train_set.urls))
        if stage in (None, "fit", "validate") and self.val_cfg is not None and self.val_set is None:
            self.val_set = build_val_pipeline(self.val_cfg, rank, world, self.val_counters)
            if len(self.val_set.urls) % (world * max(1, self.val_num_workers)):
                log.warning(
                    "%d validation shards do not split evenly over %d ranks x %d workers",
                    len(self.val_set.urls),
                    world,
                    self.val_num_workers,
                )

    def train_dataloader(self) -> DataLoader:
        """The training loader; its streams start at the trainer's current epoch (a resumed run does not replay
        epoch 0). Persistent workers then advance one epoch per pass; non-persistent workers would restart from
        the main process's copy every epoch and repeat it, hence the warning."""
        if self.train_set is None:
            self.setup("fit")
        if self.trainer is not None:
            self.train_set.stream_seed.set_epoch(self.trainer.current_epoch)
        if self.num_workers > 0 and not self.persistent_workers:
            log.warning("persistent_workers=False: every training epoch replays the same pair stream")
        return _loader(self.train_set, self.num_workers, self.persistent_workers, self.pin_memory, batch_size=None)

    def val_dataloader(self) -> DataLoader | list:
        if self.val_cfg is None:
            return []
        if self.val_set is None:
            self.setup("validate")
        return _loader(self.val_set, self.val_num_workers, False, self.pin_memory, batch_size=None)

    def on_after_batch_transfer(self, batch: dict, dataloader_idx: int) -> dict:
        """Compact uint8 batch -> the contract, on the device (``lp_train.data.batch.finalize_batch``)."""
        return finalize_batch(batch)

    def data_stats(self) -> dict[str, int]:
        """Counters of read samples, produced pairs and skipped bad data (summed over this rank's workers)."""
        out = {f"data/train_{k}": v for k, v in self.train_counters.as_dict().items()}
        out.update({f"data/val_{k}": v for k, v in self.val_counters.as_dict().items()})
        return out


class SyntheticDataModule(L.LightningDataModule):
    """Synthetic face pairs (``SyntheticPairs``) with the same batch contract, for CPU smoke tests. Every argument is
    set by ``conf/data/synthetic.yaml`` (no defaults here)."""

    def __init__(
        self,
        size: int,  # network input side S (targets 2S)
        batch_size: int,  # pairs per batch
        num_workers: int,  # loader worker processes
        train_length: int,  # training pairs per epoch
        val_length: int,  # validation pairs
        num_identities: int,  # distinct synthetic faces
        p_image: float,  # probability of an image pair
        cross_identity_prob: float,  # probability of a cross-identity pair (stage 2)
        seed: int,  # base seed (validation uses seed + 1)
        augment: AugmentConfig | dict | None,  # flip / colour jitter / image-pair warp options
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        aug = augment if isinstance(augment, AugmentConfig) else AugmentConfig(**dict(augment or {}))
        kw = dict(size=size, num_identities=num_identities, p_image=p_image, cross_identity_prob=cross_identity_prob)
        self.train_set = SyntheticPairs(train_length, seed=seed, augment=aug, **kw)
        self.val_set = SyntheticPairs(val_length, seed=seed + 1, augment=aug, **kw)
        self.batch_size, self.num_workers = batch_size, num_workers

    def train_dataloader(self) -> DataLoader:
        return _loader(
            self.train_set,
            self.num_workers,
            self.num_workers > 0,
            False,
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            collate_fn=SyntheticPairs.collate,
        )

    def val_dataloader(self) -> DataLoader:
        return _loader(
            self.val_set, self.num_workers, False, False, batch_size=self.batch_size, collate_fn=SyntheticPairs.collate
        )

    def data_stats(self) -> dict[str, int]:
        """Same interface as ``LivePortraitDataModule.data_stats`` (synthetic data has nothing to skip)."""
        return {}


class LogDataStats(L.Callback):
    """Log the datamodule's ``data_stats()`` (skipped bad samples etc.) every ``every_n_steps`` training steps."""

    def __init__(self, every_n_steps: int = 100) -> None:
        self.every_n_steps = every_n_steps

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs, batch, batch_idx: int
    ) -> None:
        dm = trainer.datamodule
        if dm is not None and hasattr(dm, "data_stats") and trainer.global_step % self.every_n_steps == 0:
            stats = dm.data_stats()
            if stats:
                pl_module.log_dict({k: float(v) for k, v in stats.items()}, rank_zero_only=False, sync_dist=False)
