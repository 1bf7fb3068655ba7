"""Picklable stages of the WebDataset pair pipeline (paper Sec. 3.1: pairs from one clip, or an image and a warp
of itself; optional cross-identity pairs for stage 2, Sec. 3.3). ``pipeline.py`` lists them in order.

Every random choice draws from ``StreamSeed.rng(tag)``: a generator seeded by (seed, epoch, rank, loader worker,
stage tag), so streams differ across ranks, workers and epochs and are reproducible for a fixed seed. The rank
and world size are fixed when the pipeline is built (the DataModule passes the trainer's); the loader worker is
read inside the worker process (``torch.utils.data.get_worker_info``, or the ``WORKER``/``NUM_WORKERS``
environment variables that ``webdataset`` honours). Bad data is skipped and counted in ``SkipCounters``, which
the loader workers share with the main process.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import random
import zlib
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.io as tvio
import webdataset as wds

from lp_train.data import augment
from lp_train.data.batch import compact_pair
from lp_train.data.shard_format import NUM_LANDMARKS, SampleMeta, decode_npy, frame_names

log = logging.getLogger(__name__)

COUNTERS = ("tar_errors", "incomplete_samples", "bad_meta", "bad_images", "samples", "pairs")


class SkipCounters:
    """Counts of read samples, produced pairs and skipped bad data, shared by all loader workers of one process.

    Lock-free: a shared-memory table with one row per loader worker (row 0: the main process); each process only
    writes its own row and ``as_dict`` sums the rows."""

    MAX_WORKERS = 64

    def __init__(self) -> None:  # shared memory; survives pickling into loader workers
        self._values = mp.get_context("spawn").Array("q", (self.MAX_WORKERS + 1) * len(COUNTERS), lock=False)

    def add(self, name: str, n: int = 1) -> None:
        row = min(worker_info()[0] + 1, self.MAX_WORKERS) if torch.utils.data.get_worker_info() else 0
        self._values[row * len(COUNTERS) + COUNTERS.index(name)] += n

    def as_dict(self) -> dict[str, int]:
        """Totals over the main process and all loader workers."""
        table = np.frombuffer(self._values, dtype=np.int64).reshape(self.MAX_WORKERS + 1, len(COUNTERS))
        return dict(zip(COUNTERS, table.sum(0).tolist(), strict=True))

    def __deepcopy__(self, memo: dict) -> SkipCounters:
        return self  # shared by design: copies of a pipeline count into the same place


class CountingHandler:
    """A webdataset exception handler: log, count under ``name`` and continue (``log_and_continue`` + a counter)."""

    def __init__(self, counters: SkipCounters, name: str) -> None:
        self.counters, self.name = counters, name

    def __call__(self, exn: Exception) -> bool:
        self.counters.add(self.name)
        log.warning("skipping bad data (%s): %r", self.name, exn)
        return True


def worker_info() -> tuple[int, int]:
    """(loader worker id, number of loader workers) of the calling process."""
    _, _, worker, num_workers = wds.utils.pytorch_worker_info()
    return worker, num_workers


class StreamSeed:
    """Seeds of one pipeline copy; ``begin()`` starts a new pass (epoch) unless ``fixed`` (validation)."""

    def __init__(self, seed: int, rank: int, fixed: bool = False) -> None:
        self.seed, self.rank, self.fixed, self.epoch = seed, rank, fixed, -1

    def begin(self) -> None:
        self.epoch = 0 if self.fixed else self.epoch + 1

    def set_epoch(self, epoch: int) -> None:
        """Make the next pass epoch ``epoch`` (e.g. the trainer's current epoch when a run resumes)."""
        self.epoch = epoch - 1

    def rng(self, tag: int) -> np.random.Generator:
        """The generator of one stage for this epoch, rank and loader worker."""
        return np.random.default_rng([self.seed, max(self.epoch, 0), self.rank, worker_info()[0], tag])

    def worker_seed(self) -> int:
        """A 31-bit seed of this rank and loader worker (webdataset's ``ResampledShards`` mixes in seed and epoch)."""
        return int(np.random.default_rng([self.seed, self.rank, worker_info()[0], 1]).integers(2**31))

    def rng_for(self, key: str, tag: int) -> np.random.Generator:
        """A generator that depends only on the seed and a sample key (validation: same pairs on any layout)."""
        return np.random.default_rng([self.seed, zlib.crc32(key.encode()), tag])


class ResampledShards(wds.ResampledShards):
    """Training shard source: webdataset's endless resampling of shard URLs with replacement (no epoch-end hang in
    DDP: every rank and worker always has data; ``with_epoch`` cuts the stream into epochs), seeded from
    ``StreamSeed``: each pass starts the stream seed's next epoch, so a resumed run (``StreamSeed.set_epoch``)
    draws the same shards as the uninterrupted one."""

    def __init__(self, urls: list[str], seed: StreamSeed) -> None:
        super().__init__(list(urls), seed=seed.seed, worker_seed=seed.worker_seed, deterministic=True)
        self.stream_seed = seed

    def __iter__(self) -> Iterator[dict]:
        self.stream_seed.begin()
        self.epoch = self.stream_seed.epoch - 1  # webdataset counts its epoch up by one as the pass starts
        return super().__iter__()


def split_by_node(rank: int, world: int):
    """Keep every ``world``-th shard starting at ``rank``: webdataset's ``split_by_node`` with the rank fixed when
    the pipeline is built (loader workers cannot ask ``torch.distributed``; the DataModule passes the trainer's)."""
    return wds.slice(rank, None, world)


class ValidSample:
    """``select`` predicate: the sample has its metadata, landmarks and at least one frame; counts the rest."""

    def __init__(self, counters: SkipCounters) -> None:
        self.counters = counters

    def __call__(self, sample: dict) -> bool:
        ok = "json" in sample and "landmarks.npy" in sample and bool(frame_names(sample))
        self.counters.add("samples" if ok else "incomplete_samples")
        if not ok:
            log.warning(
                "skipping incomplete sample %s from %s: members %s",
                sample.get("__key__"),
                sample.get("__url__"),
                sorted(k for k in sample if not k.startswith("__")),
            )
        return ok


def decode_meta(sample: dict) -> dict:
    """Parse ``json`` (``SampleMeta``) and ``landmarks.npy``; raise ``ValueError`` on anything inconsistent."""
    meta = SampleMeta.from_json(sample["json"])
    lmk = decode_npy(sample["landmarks.npy"])
    names = frame_names(sample)
    if lmk.shape != (len(names), NUM_LANDMARKS, 2) or meta.num_frames != len(names):
        raise ValueError(
            f"{sample['__key__']}: {len(names)} frames, num_frames={meta.num_frames}, landmarks {lmk.shape}"
        )
    if not np.isfinite(lmk).all():
        raise ValueError(f"{sample['__key__']}: non-finite landmarks")
    return {"__key__": sample["__key__"], "meta": meta, "landmarks": lmk, "jpegs": [sample[n] for n in names]}


class FramePairs:
    """Choose ``pairs_per_sample`` (source, driving) frame indices per sample and keep only those frames' bytes.

    Video: the source uniformly, the driving uniformly within ``max_gap`` frames of it (any frame if 0), never the
    same frame when the clip has more than one. Image: the single frame twice (``AugmentPairs`` warps the driving).
    Done before the shuffle buffer so that buffer holds two JPEGs per entry, not whole chunks.
    """

    def __init__(self, max_gap: int, pairs_per_sample: int, seed: StreamSeed) -> None:
        self.max_gap, self.pairs_per_sample, self.seed = max_gap, pairs_per_sample, seed

    def choose(self, rng: np.random.Generator, n: int) -> tuple[int, int]:
        i = int(rng.integers(n))
        if n == 1:
            return i, i
        gap = self.max_gap if self.max_gap > 0 else n
        lo, hi = max(0, i - gap), min(n - 1, i + gap)
        j = int(rng.integers(lo, hi))  # from [lo, hi] without i
        return i, j + (j >= i)

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        rng = self.seed.rng(2)
        for s in src:
            meta, n = s["meta"], len(s["jpegs"])
            if self.seed.fixed:
                rng = self.seed.rng_for(s["__key__"], 2)
            for _ in range(self.pairs_per_sample if n > 1 else 1):
                i, j = self.choose(rng, n)
                yield {
                    "key": s["__key__"],
                    "identity": meta.identity,
                    "is_image": meta.kind == "image" or n == 1,
                    "frames": (i, j),
                    "jpegs": (s["jpegs"][i], s["jpegs"][j]),
                    "landmarks": (s["landmarks"][i], s["landmarks"][j]),
                }


class Shuffle:
    """webdataset's shuffle buffer (``wds.shuffle``) with a per-rank/worker/epoch seed drawn as the pass starts."""

    def __init__(self, bufsize: int, initial: int, seed: StreamSeed) -> None:
        self.bufsize, self.initial, self.seed = bufsize, initial, seed

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        rng = random.Random(int(self.seed.rng(3).integers(2**63)))
        return wds.shuffle(self.bufsize, self.initial, rng=rng)(src)


class MixPairs:
    """Turn frame candidates into pair specs: an image candidate with probability ``p_image`` (a video one
    otherwise), and with probability ``cross_identity_prob`` a source whose driving frame comes from another
    identity in the pool (stage-2 cross-identity pairs; ``is_image`` is False for them).

    Candidates wait in one pool per kind (``pool_size`` each). When the drawn kind's pool is empty it reads ahead
    up to ``pool_size`` candidates (the other pool drops its oldest when full); after a failed look-ahead (a kind
    that is rare or absent in the data) it waits ``pool_size`` draws before looking ahead again, so a data set
    without images costs at most twice the reads. ``ordered=True`` (validation) keeps arrival order and kinds.
    """

    def __init__(
        self, p_image: float, cross_identity_prob: float, pool_size: int, seed: StreamSeed, ordered: bool = False
    ) -> None:
        self.p_image, self.cross, self.pool_size, self.seed, self.ordered = (
            p_image,
            cross_identity_prob,
            pool_size,
            seed,
            ordered,
        )

    def _partner(self, rng: np.random.Generator, cand: dict, pool: list[dict]) -> dict | None:
        if self.cross <= 0 or rng.random() >= self.cross:
            return None
        others = [c for c in pool if c["identity"] != cand["identity"]]
        return others[int(rng.integers(len(others)))] if others else None

    def _ordered(self, src: Iterator[dict]) -> Iterator[dict]:
        recent: list[dict] = []
        for cand in src:
            rng = self.seed.rng_for(cand["key"] + str(cand["frames"]), 4)
            yield {"source": cand, "driving": self._partner(rng, cand, recent)}
            recent = (recent + [cand])[-self.pool_size :]

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        if self.ordered:
            yield from self._ordered(src)
            return
        rng, src = self.seed.rng(4), iter(src)
        pools: dict[bool, list[dict]] = {True: [], False: []}
        exhausted, cooldown = False, 0

        def read() -> bool:
            cand = next(src, None)
            if cand is None:
                return False
            pool = pools[cand["is_image"]]
            pool.append(cand)
            if len(pool) > self.pool_size:
                pool.pop(0)
            return True

        while True:
            while not exhausted and len(pools[True]) + len(pools[False]) < self.pool_size:
                exhausted = not read()
            want = bool(rng.random() < self.p_image)
            if not pools[want] and not exhausted and cooldown <= 0:
                for _ in range(self.pool_size):
                    if pools[want] or not read():
                        break
                cooldown = 0 if pools[want] else self.pool_size
            cooldown -= 1
            kind = want if pools[want] else not want
            if not pools[kind]:
                return
            cand = pools[kind].pop(int(rng.integers(len(pools[kind]))))
            yield {"source": cand, "driving": self._partner(rng, cand, pools[False] + pools[True])}


def decode_jpeg(data: bytes, size: int) -> torch.Tensor:
    """JPEG bytes -> ``(3, size, size)`` uint8 (libjpeg-turbo via ``torchvision.io``; area-resized if the stored
    crop has another size). Raises on corrupt data."""
    img = tvio.decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=tvio.ImageReadMode.RGB)
    if img.shape[-2:] != (size, size):
        img = F.interpolate(img[None].float(), size=(size, size), mode="area" if img.shape[-1] > size else "bilinear")
        img = img[0].round_().clamp_(0, 255).to(torch.uint8)
    return img


class DecodePairs:
    """Decode the two chosen frames of a pair spec at the target side 2S; a corrupt JPEG skips the pair (counted)."""

    def __init__(self, hr_size: int, counters: SkipCounters) -> None:
        self.hr_size, self.counters = hr_size, counters

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        for spec in src:
            s, d = spec["source"], spec["driving"]
            cross = d is not None
            d = d if cross else s
            try:
                frames = [decode_jpeg(s["jpegs"][0], self.hr_size), decode_jpeg(d["jpegs"][1], self.hr_size)]
            except Exception as exn:  # torchvision raises RuntimeError on corrupt / truncated JPEG data
                self.counters.add("bad_images")
                log.warning("skipping pair with a bad frame (%s | %s): %r", s["key"], d["key"], exn)
                continue
            yield {
                "frames": frames,
                "landmarks": [s["landmarks"][0], d["landmarks"][1]],
                "same_identity": not cross,
                "is_image": s["is_image"] and not cross,
                "identity": s["identity"],
                "key": f"{s['key']}:{s['frames'][0]}|{d['key']}:{d['frames'][1]}",
            }


class AugmentPairs:
    """Draw each pair's augmentation (image pairs: a random warp of the driving copy; a flip of both frames or
    neither; colour jitter, shared for same-identity pairs), move the landmarks, and emit the compact item
    (``batch.compact_pair``); the pixels are transformed on the device by ``batch.finalize_batch``."""

    def __init__(self, cfg: augment.AugmentConfig, seed: StreamSeed, counters: SkipCounters) -> None:
        self.cfg, self.seed, self.counters = cfg, seed, counters

    def __call__(self, src: Iterator[dict]) -> Iterator[dict]:
        rng = self.seed.rng(5)
        for p in src:
            if self.seed.fixed:
                rng = self.seed.rng_for(p["key"], 5)
            size = p["frames"][0].shape[-1]
            warps, lmks, color = augment.augment_pair(
                rng, p["landmarks"], size, self.cfg, image_pair=p["is_image"], shared_color=p["same_identity"]
            )
            self.counters.add("pairs")
            yield compact_pair(
                *p["frames"], *lmks, warps, color, p["is_image"], p["same_identity"], p["identity"], p["key"]
            )
