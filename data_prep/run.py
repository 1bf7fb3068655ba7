"""The curation run: inputs -> (slice of a SLURM array) -> worker pool -> ordered, journalled shard writing.

Implements the data pipeline of LivePortrait (Guo et al. 2024, Sec. 4.1) at cluster scale. ``run(cfg)`` takes a
composed ``conf/data_prep.yaml``; task ``k`` of ``n`` (``task.index`` / ``task.count``, default from
``SLURM_ARRAY_TASK_ID`` / ``SLURM_ARRAY_TASK_COUNT``) curates ``inputs[k::n]`` into shards
``{output.name}-t{k:04d}-{i:06d}.tar`` (``{output.name}-{i:06d}.tar`` when n = 1) with its own journal, so array
tasks never touch each other's files and a rerun of any task resumes it (``data_prep.writer``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import functools
import logging
import os
import shutil
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from data_prep.clips import CropConfig
from data_prep.filters import FilterConfig
from data_prep.inputs import InputItem, discover, task_slice
from data_prep.pool import ordered_map
from data_prep.process import ProcessConfig, close_detectors, crash_record, process_input, read_samples
from data_prep.splits import check_identity_disjoint
from data_prep.writer import Journal, ShardSink, config_digest, recover
from lp_train.data.shard_format import FORMAT_VERSION

log = logging.getLogger(__name__)


def process_config(cfg: DictConfig) -> ProcessConfig:
    """The sample-determining part of the config as plain, picklable objects."""
    c = OmegaConf.to_container(cfg, resolve=True)
    if c["decode"].get("on_error", "cut") not in ("cut", "drop", "keep"):
        raise ValueError(f"decode.on_error must be cut | drop | keep, got {c['decode']['on_error']!r}")
    crop = {**c["crop"], "jpeg_quality": c["output"]["jpeg_quality"]}
    return ProcessConfig(
        decode=c["decode"],
        detector=c["detector"],
        crop=CropConfig.from_dict(crop),
        filters=FilterConfig.from_dict(c["filters"]),
        chunk_frames=int(c["output"]["chunk_frames"]),
    )


def task_of(cfg: DictConfig) -> tuple[int, int]:
    """(task index, task count) from the config, else from the SLURM array environment, else (0, 1)."""
    env = os.environ
    count = cfg.task.count
    if count is None:
        count = int(env.get("SLURM_ARRAY_TASK_COUNT", 1))
    index = cfg.task.index
    if index is None:
        index = int(env.get("SLURM_ARRAY_TASK_ID", 0)) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
    if not 0 <= index < count:
        raise ValueError(f"task index {index} not in [0, {count}); check task.index/task.count or the SLURM array")
    return int(index), int(count)


def shard_prefix(name: str, index: int, count: int) -> str:
    return name if count == 1 else f"{name}-t{index:04d}"


def list_inputs(cfg: DictConfig) -> list[InputItem]:
    i = cfg.inputs
    paths = list(i.paths) if i.paths else []
    if not paths and not i.manifest:
        raise ValueError("no inputs: set inputs.paths=[dir,...] and/or inputs.manifest=file.csv|.jsonl")
    items = discover(paths, i.manifest, i.dataset, i.split, i.identity_from, i.dedupe_content)
    if i.get("check_identity_splits", True):
        check_identity_disjoint((it.to_dict() for it in items if it.skip is None), "the input list")
    return items


def _open_journal(
    cfg: DictConfig, out: Path, prefix: str, items: list[InputItem], pcfg: ProcessConfig, task: tuple[int, int] = (0, 1)
) -> Journal:
    journal = Journal(out / "journal" / f"{prefix}.jsonl")
    settings = {
        "process": dataclasses.asdict(pcfg),
        "shards": {"max_samples": cfg.output.max_shard_samples, "max_bytes": cfg.output.max_shard_bytes},
        "format": FORMAT_VERSION,
    }
    header = {
        "type": "header", "prefix": prefix, "config_digest": config_digest(settings),
        "inputs_digest": config_digest([it.uid for it in items]), "num_inputs": len(items), "settings": settings,
        "task": task[0], "num_tasks": task[1],  # lets the merge find tasks whose outputs are missing altogether
    }  # fmt: skip
    old = journal.header
    if old is None:
        journal.append(header)
    elif (old["config_digest"], old["inputs_digest"]) != (header["config_digest"], header["inputs_digest"]):
        if not cfg.resume.ignore_changes:
            raise RuntimeError(
                f"{journal.path} was written with a different config or input list (config "
                f"{old['config_digest']} vs {header['config_digest']}, inputs {old['inputs_digest']} vs "
                f"{header['inputs_digest']}). Resuming would mix settings: use a new output.dir, or set "
                "resume.ignore_changes=true if the change cannot affect the samples."
            )
        log.warning("resuming %s despite changed config/inputs (resume.ignore_changes=true)", journal.path)
    return journal


@contextlib.contextmanager
def _task_lock(path: Path):
    """Exclusive lock of a task's output (a requeued task must not run twice at once)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"another lp-prep process holds {path}: the same task is already running") from None
        yield


def run(cfg: DictConfig) -> dict:
    """Curate this task's slice of the inputs into shards; resumable. Returns a summary dict."""
    k, n = task_of(cfg)
    prefix = shard_prefix(cfg.output.name, k, n)
    with _task_lock(Path(cfg.output.dir) / "journal" / f"{prefix}.lock"):
        return _run_task(cfg, k, n, prefix)


def _run_task(cfg: DictConfig, k: int, n: int, prefix: str) -> dict:
    out = Path(cfg.output.dir)
    items = task_slice(list_inputs(cfg), k, n)
    pcfg = process_config(cfg)
    shard_dir, work = out / "shards", out / ".work" / prefix
    shard_dir.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    journal = _open_journal(cfg, out, prefix, items, pcfg, (k, n))
    next_index, partial = recover(shard_dir, prefix, journal)
    done = journal.done_inputs()
    todo = [it for it in items if it.uid not in done]
    log.info("task %d/%d: %d inputs, %d done, %d to do", k, n, len(items), len(done), len(todo))
    o = cfg.output
    sink = ShardSink(shard_dir, prefix, journal, o.max_shard_samples, int(o.max_shard_bytes), next_index)
    progress = _Progress(len(items), len(done), cfg.log_every_s)
    job = functools.partial(process_input, cfg=pcfg, work_dir=str(work))
    results = ordered_map(job, todo, cfg.workers if len(todo) > 1 else 1, crash_record)
    try:
        for item, (record, path) in zip(todo, results, strict=True):
            t_write = time.perf_counter()
            if path is not None:
                _append(sink, item, path, partial if partial and partial["uid"] == item.uid else None)
            sink.input_done(record)
            progress.update(record, time.perf_counter() - t_write)
        t_write = time.perf_counter()
        sink.commit()
        progress.write_s += time.perf_counter() - t_write
    finally:
        results.close()
        close_detectors()
        progress.close()
    shutil.rmtree(work, ignore_errors=True)
    summary = {"task": k, "num_tasks": n, "prefix": prefix, **progress.summary(), "shards": len(journal.shards())}
    journal.append({"type": "done", "num_inputs": len(items), "num_done": len(journal.done_inputs())})
    log.info("task %d/%d finished: %s", k, n, summary)
    return summary


def _append(sink: ShardSink, item: InputItem, path: str, partial: dict | None) -> None:
    """Write an input's samples to the shards, skipping those a crashed run already committed (``partial``)."""
    skip = partial["written"] if partial else 0
    for i, sample in enumerate(read_samples(path)):
        if i < skip:
            if i == skip - 1 and sample["__key__"] != partial["last_key"]:
                log.error("%s: resumed sample %s != journalled %s (non-deterministic input?)",
                          item.path, sample["__key__"], partial["last_key"])  # fmt: skip
            continue
        sink.write(item.uid, sample)
    os.remove(path)


class _Progress:
    """tqdm bar (inputs, frames, kept %) plus a log line every ``every_s`` seconds (SLURM logs)."""

    def __init__(self, total: int, done: int, every_s: float) -> None:
        self.bar = tqdm(total=total, initial=done, unit="input", dynamic_ncols=True, disable=None)
        self.total, self.count, self.every_s = total, done, every_s
        self.frames = self.kept = self.samples = 0
        self.write_s = 0.0
        self.stages: dict[str, float] = {}
        self.t0 = self.last = time.monotonic()

    def update(self, rec: dict, write_s: float = 0.0) -> None:
        self.count += 1
        self.write_s += write_s
        for k, v in rec.get("timings", {}).items():
            self.stages[k] = self.stages.get(k, 0.0) + v
        self.frames += rec["frames_decoded"]
        self.kept += rec["frames_kept"]
        self.samples += rec["samples"]
        kept = 100.0 * self.kept / max(self.frames, 1)
        self.bar.set_postfix(frames=self.frames, kept=f"{kept:.0f}%", samples=self.samples, refresh=False)
        self.bar.update(1)
        now = time.monotonic()
        if now - self.last >= self.every_s or self.count == self.total:
            self.last = now
            rate = self.frames / max(now - self.t0, 1e-6)
            log.info(
                "inputs %d/%d (%.0f%%) | frames %d, kept %.1f%% | samples %d | %.1f frames/s",
                self.count, self.total, 100.0 * self.count / max(self.total, 1), self.frames, kept, self.samples, rate,
            )  # fmt: skip

    def summary(self) -> dict:
        stages = {k: round(v, 3) for k, v in sorted({**self.stages, "write": self.write_s}.items())}
        return {"inputs": self.total, "frames": self.frames, "frames_kept": self.kept, "samples": self.samples,
                "seconds": round(time.monotonic() - self.t0, 2), "stage_seconds": stages}  # fmt: skip

    def close(self) -> None:
        self.bar.close()
