"""The WebDataset pipelines of the training loader (paper Sec. 3.1 mixed image-video training), one builder per
split, each a readable list of named stages (``stages.py``) whose options come from ``LoaderConfig``.

train: resampled shards (seeded per rank/worker/epoch; no epoch-end hang in DDP) -> tar -> select(valid) ->
       decode meta -> frame pairs -> shuffle -> mix image/video + cross-identity -> decode JPEGs -> augment ->
       batched, cut to ``epoch_batches`` per loader worker by ``with_epoch``.
val:   ordered shards -> split by node -> split by worker (disjoint parts) -> the same stages without shuffle,
       with per-key seeds (every layout yields the same pairs), no flip / colour jitter, partial last batch.

Batches leave the workers in the compact form of ``lp_train.data.batch`` (uint8 frames, no masks);
``finalize_batch`` (run by the DataModule after the device transfer) makes the contract batch.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field

import braceexpand
import webdataset as wds

from lp_train.data import stages as st
from lp_train.data.augment import AugmentConfig
from lp_train.data.batch import collate_compact


@dataclass
class LoaderConfig:
    """Options of one split's pipeline, built by the data modules from ``conf/data/*.yaml`` (the one home of their
    values; no defaults here). ``augment`` holds ``AugmentConfig``'s fields, whose defaults are augmentation's home."""

    shards: str | list[str]  # shard paths, globs or brace patterns ("a-{000000..000099}.tar"); "::" separates several
    size: int  # network input side S; targets are 2S
    batch_size: int  # pairs per batch (per rank)
    p_image: float  # probability of an image pair when both kinds are available (train)
    max_gap: int  # max frame distance between source and driving of a video pair (0: any two frames)
    cross_identity_prob: float  # probability of a cross-identity pair (stage 2)
    pairs_per_sample: int  # pairs drawn from one chunk before the shuffle (amortises reading 64-frame chunks)
    shuffle_buffer: int  # frame-pair candidates in the shuffle buffer (train)
    shuffle_initial: int  # candidates buffered before the first one leaves (train)
    pool_size: int  # candidates per kind waiting for image/video mixing and cross-identity partners
    epoch_batches: int  # batches per loader worker and epoch (train, ``with_epoch``)
    seed: int  # base seed; streams are seeded by (seed, epoch, rank, worker, stage)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def __post_init__(self) -> None:
        if isinstance(self.augment, dict) or hasattr(self.augment, "items"):
            self.augment = AugmentConfig(**dict(self.augment))


def expand_shards(shards: str | list[str]) -> list[str]:
    """Expand brace patterns and globs into a sorted, de-duplicated list of existing shard files.

    Raises:
        FileNotFoundError: a pattern matches nothing or a listed path does not exist (checked before training).
    """
    patterns = shards.split("::") if isinstance(shards, str) else list(shards)
    urls: list[str] = []
    for pattern in patterns:
        for path in braceexpand.braceexpand(os.path.expanduser(str(pattern))):
            found = sorted(glob.glob(path)) if glob.has_magic(path) else ([path] if os.path.isfile(path) else [])
            if not found:
                raise FileNotFoundError(
                    f"shard {path!r} (from {pattern!r}) does not exist or matches no file; check data.*.shards in "
                    f"conf/data (cwd {os.getcwd()}), or write shards with `lp-prep`"
                )
            urls.extend(found)
    return sorted(dict.fromkeys(urls))


def build_train_pipeline(cfg: LoaderConfig, rank: int = 0, world_size: int = 1, counters=None) -> wds.DataPipeline:
    """Endless resampled pair stream, cut into epochs of ``cfg.epoch_batches`` batches per loader worker."""
    urls, counters = expand_shards(cfg.shards), counters or st.SkipCounters()
    seed = st.StreamSeed(cfg.seed, rank)
    pipeline = wds.DataPipeline(
        st.ResampledShards(urls, seed),
        wds.tarfile_to_samples(handler=st.CountingHandler(counters, "tar_errors")),
        wds.select(st.ValidSample(counters)),
        wds.map(st.decode_meta, handler=st.CountingHandler(counters, "bad_meta")),
        st.FramePairs(cfg.max_gap, cfg.pairs_per_sample, seed),
        st.Shuffle(cfg.shuffle_buffer, cfg.shuffle_initial, seed),
        st.MixPairs(cfg.p_image, cfg.cross_identity_prob, cfg.pool_size, seed),
        st.DecodePairs(2 * cfg.size, counters),
        st.AugmentPairs(cfg.augment, seed, counters),
        wds.batched(cfg.batch_size, collation_fn=collate_compact, partial=False),
    )
    pipeline.counters, pipeline.stream_seed, pipeline.urls = counters, seed, urls
    return pipeline.with_epoch(cfg.epoch_batches)


def build_val_pipeline(cfg: LoaderConfig, rank: int = 0, world_size: int = 1, counters=None) -> wds.DataPipeline:
    """One ordered pass over this rank's/worker's disjoint share of the shards; same pairs on every layout."""
    urls, counters = expand_shards(cfg.shards), counters or st.SkipCounters()
    seed = st.StreamSeed(cfg.seed, rank, fixed=True)
    no_color = AugmentConfig(
        **{**vars(cfg.augment), "hflip_prob": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0, "hue": 0.0}
    )
    pipeline = wds.DataPipeline(
        wds.SimpleShardList(urls),
        st.split_by_node(rank, world_size),
        wds.split_by_worker,
        wds.tarfile_to_samples(handler=st.CountingHandler(counters, "tar_errors")),
        wds.select(st.ValidSample(counters)),
        wds.map(st.decode_meta, handler=st.CountingHandler(counters, "bad_meta")),
        st.FramePairs(cfg.max_gap, cfg.pairs_per_sample, seed),
        st.MixPairs(0.0, cfg.cross_identity_prob, cfg.pool_size, seed, ordered=True),
        st.DecodePairs(2 * cfg.size, counters),
        st.AugmentPairs(no_color, seed, counters),
        wds.batched(cfg.batch_size, collation_fn=collate_compact, partial=True),
    )
    pipeline.counters, pipeline.stream_seed, pipeline.urls = counters, seed, urls
    return pipeline
