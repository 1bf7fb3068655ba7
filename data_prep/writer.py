"""Atomic WebDataset shard writing and the exactly-once journal of a curation task.

LivePortrait-scale curation (Guo et al. 2024, Sec. 4.1: 92M raw frames) runs for days on preemptible nodes, so a
task must survive ``kill -9`` at any instant. The rules:

* Shards are written like ``webdataset.ShardWriter`` (``wds.TarWriter`` inside; a new shard starts when the next
  sample would exceed ``max_samples`` / ``max_bytes``) but to ``{name}.tmp``, then flushed, fsynced and renamed
  (``os.replace``) to ``{prefix}-{index:06d}.tar``: a visible shard is always complete. Tar member metadata is
  fixed (mtime, owner, mode), so the same samples give byte-identical shards.
* Samples arrive in input order. After each shard commit the journal (``journal/{prefix}.jsonl``, one JSON
  object per line, fsynced) records the shard, the inputs whose samples are now all committed, and at most one
  input that is ``partial`` (its first ``n`` samples are in committed shards). Inputs without samples are
  journalled as soon as they finish.
* On restart, the journal says which inputs are done, where the next shard index is and how many samples of the
  partial input to skip; stray ``.tmp`` files and a shard renamed after the last journal line (crash between
  rename and journal write) are deleted, to be rewritten identically. Result: the final shard set equals that of
  an uninterrupted run, and no sample is written twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from lp_train.data.shard_format import SHARD_PATTERN

log = logging.getLogger(__name__)

TAR_MTIME = 0.0  # fixed member metadata -> reproducible shards


def fsync_dir(path: str | Path) -> None:
    fd = os.open(str(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def config_digest(obj: dict) -> str:
    """SHA-1 of a JSON-serialisable config (keys sorted)."""
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Journal:
    """Append-only JSONL journal of one task. A torn last line (crash mid-write) is ignored on read."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.records = self._read()

    def _read(self) -> list[dict]:
        if not self.path.exists():
            return []
        out = []
        for line in self.path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: ignoring a torn journal line (crash while writing)", self.path)
                break
        return out

    def append(self, record: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and len(self.records) != len(self._read()):
            self._rewrite()  # drop a torn tail before appending
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())
        self.records.append(record)

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records), encoding="utf-8")
        os.replace(tmp, self.path)

    @property
    def header(self) -> dict | None:
        return self.records[0] if self.records and self.records[0].get("type") == "header" else None

    def done_inputs(self) -> dict[str, dict]:
        """uid -> record of every finished input."""
        return {r["uid"]: r for rec in self.records if rec.get("type") == "commit" for r in rec["inputs"]}

    def last_shard_commit(self) -> dict | None:
        for rec in reversed(self.records):
            if rec.get("type") == "commit" and rec.get("shard"):
                return rec
        return None

    def shards(self) -> list[dict]:
        """``{"shard", "samples", "frames", "bytes"}`` of every committed shard, in order."""
        return [
            {k: rec[k] for k in ("shard", "samples", "frames", "bytes")}
            for rec in self.records
            if rec.get("type") == "commit" and rec.get("shard")
        ]


class ShardSink:
    """Writes samples into atomically committed shards and journals every commit.

    Args:
        out_dir: shard directory.
        prefix: shard name prefix (``{prefix}-{index:06d}.tar``).
        journal: the task's journal.
        max_samples: samples per shard.
        max_bytes: payload bytes per shard (soft: a shard closes before the sample that would exceed it).
        start_index: index of the next shard.
    """

    def __init__(
        self, out_dir: str | Path, prefix: str, journal: Journal, max_samples: int, max_bytes: int, start_index: int = 0
    ) -> None:
        import webdataset as wds  # imported here, not at module level: it pulls in torch (~3 s)

        self._wds = wds
        self.out_dir = Path(out_dir)
        self.prefix = prefix
        self.journal = journal
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.index = start_index
        self._file = self._tar = None
        self._count = self._bytes = self._frames = 0
        self._completed: list[dict] = []  # input records whose samples are all in the open shard (or earlier)
        self._partial: dict | None = None  # {"uid", "written"} of the input being written

    def shard_name(self, index: int) -> str:
        return SHARD_PATTERN.format(prefix=self.prefix, index=index)

    def _open(self) -> None:
        self._tmp = self.out_dir / (self.shard_name(self.index) + ".tmp")
        self._file = open(self._tmp, "wb")
        self._tar = self._wds.TarWriter(self._file, user="lp-train", group="lp-train", mode=0o444, mtime=TAR_MTIME)
        self._count = self._bytes = self._frames = 0

    def write(self, uid: str, sample: dict) -> None:
        """Append one sample of input ``uid`` (inputs must arrive in order, each ended by ``input_done``)."""
        size = sum(len(v) for k, v in sample.items() if not k.startswith("_"))
        if self._tar is not None and (self._count >= self.max_samples or self._bytes + size > self.max_bytes):
            self.commit()
        if self._tar is None:
            self._open()
        self._tar.write(sample)
        self._count += 1
        self._bytes += size
        self._frames += sum(1 for k in sample if k.endswith(".jpg"))
        written = self._partial["written"] if self._partial and self._partial["uid"] == uid else 0
        self._partial = {"uid": uid, "written": written + 1, "last_key": sample["__key__"]}

    def input_done(self, record: dict) -> None:
        """Mark an input finished: journalled now if it has no samples, else with the shard holding its last one."""
        if self._partial and self._partial["uid"] == record["uid"]:
            self._partial = None
        if record.get("samples", 0) == 0:  # nothing to commit: done now
            self.journal.append({"type": "commit", "shard": None, "inputs": [record], "partial": None})
        else:
            self._completed.append(record)

    def commit(self) -> None:
        """Close the open shard (fsync + rename) and journal it."""
        if self._tar is None:
            if self._completed:
                self.journal.append({"type": "commit", "shard": None, "inputs": self._completed, "partial": None})
                self._completed = []
            return
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        final = self.out_dir / self.shard_name(self.index)
        os.replace(self._tmp, final)
        fsync_dir(self.out_dir)
        self.journal.append(
            {
                "type": "commit", "shard": final.name, "index": self.index, "samples": self._count,
                "frames": self._frames, "bytes": final.stat().st_size, "inputs": self._completed,
                "partial": self._partial, "next_index": self.index + 1,
            }
        )  # fmt: skip
        log.info("shard %s: %d samples, %d frames, %.1f MB", final.name, self._count, self._frames, self._bytes / 1e6)
        self.index += 1
        self._tar = self._file = None
        self._completed = []


def recover(out_dir: str | Path, prefix: str, journal: Journal) -> tuple[int, dict | None]:
    """Clean up after a crash; return (next shard index, partial input ``{"uid", "written", "last_key"}``)."""
    out_dir = Path(out_dir)
    last = journal.last_shard_commit()
    next_index = last["next_index"] if last else 0
    partial = last.get("partial") if last else None
    own = re.compile(rf"^{re.escape(prefix)}-\d{{6}}\.tar(\.tmp)?$")
    committed = {r["shard"] for r in journal.shards()}
    for path in sorted(out_dir.iterdir()) if out_dir.is_dir() else []:
        if not own.match(path.name):
            continue
        if path.name.endswith(".tmp"):
            log.info("removing unfinished shard %s", path.name)
            path.unlink()
        elif path.name not in committed:
            log.warning("removing shard %s renamed after the last journal entry; it will be rewritten", path.name)
            path.unlink()
    return next_index, partial
