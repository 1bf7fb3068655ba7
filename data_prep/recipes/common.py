"""What every corpus recipe shares: the manifest row, finding a listed video on disk, writing the manifest and the
list of what is missing.

A recipe reads a corpus's *released metadata* (its own files, in its own layout) and the folder where the user
put the videos fetched with the corpus's own download tool; lp-train never downloads. Every listed clip becomes a
manifest row (``data_prep.inputs``: ``path, identity, split, dataset, clip_id, start, end, unit, attributes``) if its
file is there, else a row of ``<manifest>.missing.csv`` (what was expected where) — never a crash.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

VIDEO_EXTS = (".mp4", ".mkv", ".webm", ".mov", ".avi", ".m4v")  # what download tools write
COLUMNS = ("path", "identity", "split", "dataset", "clip_id", "start", "end", "unit", "attributes")


@dataclass
class Row:
    """One manifest row: a whole file, or a time range ``[start, end)`` of it (``unit`` s or frames)."""

    path: str
    identity: str
    split: str
    dataset: str
    clip_id: str = ""
    start: float | None = None
    end: float | None = None
    unit: str = "s"
    attributes: dict = field(default_factory=dict)

    def to_csv(self) -> dict:
        d = {k: getattr(self, k) for k in COLUMNS}
        d["start"], d["end"] = _number(self.start), _number(self.end)
        d["unit"] = self.unit if self.start is not None or self.end is not None else ""
        d["attributes"] = json.dumps(self.attributes, sort_keys=True) if self.attributes else ""
        return d


@dataclass
class Missing:
    """A clip the metadata lists whose video is not on disk."""

    clip_id: str
    expected: str  # where the file was looked for (one or more paths / patterns)
    reason: str = "video not found"


@dataclass
class Result:
    rows: list[Row] = field(default_factory=list)
    missing: list[Missing] = field(default_factory=list)


def _number(v: float | None) -> str:
    if v is None:
        return ""
    return str(int(v)) if float(v).is_integer() else repr(round(float(v), 6))


def find_video(folder: Path, stem: str) -> Path | None:
    """``folder/stem.<ext>`` for the first video extension that exists (download tools pick the container)."""
    for ext in VIDEO_EXTS:
        p = folder / f"{stem}{ext}"
        if p.is_file():
            return p
    return None


def patterns(folder: Path, stem: str) -> str:
    return str(folder / f"{stem}.{{{','.join(e[1:] for e in VIDEO_EXTS)}}}")


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def missing_path(manifest: Path) -> Path:
    return manifest.with_name(manifest.stem + ".missing.csv")


def write_manifest(result: Result, out: Path) -> dict:
    """Write ``out`` (CSV, paths absolute) and, if anything is missing, ``<out stem>.missing.csv``; return counts."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    w.writeheader()
    w.writerows(r.to_csv() for r in result.rows)
    _atomic_write(out, buf.getvalue())
    miss = missing_path(out)
    if result.missing:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=("clip_id", "expected", "reason"), lineterminator="\n")
        w.writeheader()
        w.writerows({"clip_id": m.clip_id, "expected": m.expected, "reason": m.reason} for m in result.missing)
        _atomic_write(miss, buf.getvalue())
    elif miss.exists():
        miss.unlink()  # a stale list from an earlier run would mislead
    splits = Counter(r.split for r in result.rows)
    return {
        "manifest": str(out), "rows": len(result.rows), "ranged": sum(r.start is not None or r.end is not None
                                                                      for r in result.rows),
        "identities": len({(r.dataset, r.identity) for r in result.rows}), "splits": dict(sorted(splits.items())),
        "missing": len(result.missing), "missing_list": str(miss) if result.missing else None,
    }  # fmt: skip
