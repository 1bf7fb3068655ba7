"""Per-video results of a protocol: a CSV that makes evaluation resumable and distributed (rows gathered on rank 0).

One row per evaluated video (cross-reenactment: per source x driving video) with, for every metric, the mean over
the video's scorable frames (``<metric>``) and their number (``<metric>_n``). Each rank appends its rows to its own
``per_video.rank<r>.csv`` as soon as a video is done (atomic rewrite), so a preempted job loses at most the video in
flight; on restart every video already in ``per_video.csv`` or in any rank file is skipped. At the end the rows of
all ranks are gathered (``torch.distributed.all_gather_object``) and rank 0 writes the merged ``per_video.csv``.
The summary is the frame-weighted mean of the rows — identical to averaging all frames at once.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path

import torch.distributed as dist

from lp_train.fileio import atomic_write_text

FIXED = ("key", "source", "driving", "frames", "seconds")


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised process group, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return [_parse(r) for r in csv.DictReader(f)]


def _parse(row: dict) -> dict:
    out: dict = {}
    for k, v in row.items():
        if k in ("key", "source", "driving"):
            out[k] = v
        elif v in ("", None):
            out[k] = float("nan")
        else:
            out[k] = float(v) if not v.lstrip("-").isdigit() else int(v)
    return out


def rows_to_csv(rows: list[dict]) -> str:
    """CSV text with the fixed columns first, then metric columns in first-seen order."""
    cols = list(FIXED) + [c for c in dict.fromkeys(k for r in rows for k in r) if c not in FIXED]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    return buf.getvalue()


class ResultStore:
    """Resumable per-video rows of one protocol in ``folder``."""

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rank, self.world = rank_world()
        self.merged = self.folder / "per_video.csv"
        self.part = self.folder / f"per_video.rank{self.rank}.csv"
        self.rows: dict[str, dict] = {}
        for path in [self.merged, *sorted(self.folder.glob("per_video.rank*.csv"))]:
            for r in _read(path):
                self.rows[r["key"]] = r
        self._mine = [r for r in _read(self.part)]

    def done(self, key: str) -> bool:
        return key in self.rows

    def add(self, row: dict) -> None:
        """Record a finished video (written to this rank's part file at once)."""
        self.rows[row["key"]] = row
        self._mine.append(row)
        atomic_write_text(self.part, rows_to_csv(self._mine))

    def gather(self) -> list[dict]:
        """All rows of all ranks (every rank gets them); rank 0 writes ``per_video.csv`` and removes part files."""
        rows = dict(self.rows)
        if self.world > 1:
            parts: list = [None] * self.world
            dist.all_gather_object(parts, list(self.rows.values()))
            for part in parts:
                rows.update({r["key"]: r for r in part})
        ordered = [rows[k] for k in sorted(rows)]
        if self.rank == 0:
            atomic_write_text(self.merged, rows_to_csv(ordered))
            for p in self.folder.glob("per_video.rank*.csv"):
                p.unlink(missing_ok=True)
        if self.world > 1:
            dist.barrier()
        return ordered


def summarise(rows: list[dict], names: list[str]) -> dict[str, dict]:
    """Frame-weighted mean of each metric over the rows: ``{name: {value, frames, videos}}``."""
    out = {}
    for n in names:
        num = den = 0.0
        vids = 0
        for r in rows:
            k = int(r.get(f"{n}_n", 0) or 0)
            if k > 0 and not math.isnan(float(r.get(n, float("nan")))):
                num += float(r[n]) * k
                den += k
                vids += 1
        out[n] = {"value": num / den if den else float("nan"), "frames": int(den), "videos": vids}
    return out
