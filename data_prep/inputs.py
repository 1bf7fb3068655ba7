"""Curation inputs: directories (recursive) and manifests (CSV / JSONL) -> an ordered, de-duplicated input list.

LivePortrait (Guo et al. 2024, Sec. 4.1) curates public video corpora (VoxCeleb, MEAD, RAVDESS, ...) plus
stylised portraits (AAHQ), images being one-frame clips. Every run (and every SLURM array task) builds the same
list from the same arguments, sorted by path, so task ``k`` of ``n`` can take a deterministic slice of it.

A manifest row has ``path`` (absolute, or relative to the manifest's folder) and optional ``identity``, ``split``,
``dataset``, and an optional time range inside a long source video: ``start``, ``end`` (end exclusive; either may be
empty: from the beginning / to the end) with ``unit`` ``s`` (seconds, the default) or ``frames`` (frame indices of the
source stream at its native rate), or a unit suffix on the value (``12.5s``, ``300f``), and ``clip_id`` (the
corpus's own name of the clip, kept in the sample metadata). Rows of one file with different ranges are different
inputs with different sample keys (``InputItem.id`` hashes the path *and* the range; a whole-file row keeps the key
of the file). Without an identity, each input file is its own identity (``identity_from="file"``), unless
``identity_from`` names a folder level that holds one person. Inputs listed twice (same resolved path; optionally
same content) are kept once; the repeats stay in the list, marked ``duplicate_of``, so that the report records them
with reason ``duplicate``.

Directory scans follow symlinked folders. What cannot be an input stays in the list, marked with a ``skip`` reason
that the report records: ``missing`` (a given path that does not exist), ``dangling_link``, ``symlink_loop`` (a
link to a folder above it, or a link chain without end), ``not_a_file`` (a folder or device named like a media
file; a folder's contents are still scanned), ``unreadable`` (a folder that cannot be listed),
``unknown_extension`` (a given file that is not a video or image by its extension).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from data_prep.probe import Skip, file_stat
from lp_train.data.shard_format import source_id

VIDEO_EXTS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi", ".m4v"})
IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


@dataclass(frozen=True)
class InputItem:
    """One input file and its labels."""

    path: str  # resolved absolute path (absolute, unresolved for a dangling link or a loop)
    kind: str  # "video" | "image" ("other" for a skipped path without a media extension)
    identity: str
    split: str
    dataset: str
    duplicate_of: str | None = None
    dup_index: int = 0  # k for the k-th repeat of an input (0 for the first)
    skip: str | None = None  # why this path cannot be an input (found while listing inputs), or None
    skip_detail: str = ""
    clip_id: str = ""  # the corpus's name of the clip (a manifest's ``clip_id``), or ""
    start: float | None = None  # range start in ``unit`` (None: the beginning)
    end: float | None = None  # range end in ``unit``, exclusive (None: the end)
    unit: str = "s"  # "s" (seconds) | "frames" (frame indices of the source stream at its native rate)
    attributes: str = ""  # the manifest's ``attributes`` (JSON object: emotion, view, ...), copied into the samples

    @property
    def range_tag(self) -> str:
        """``""`` for a whole file, else ``@start-end unit``: what tells ranges of one file apart (two rows with the
        same range are the same frames, whatever their ``clip_id``)."""
        if self.start is None and self.end is None:
            return ""
        fmt = lambda v: "" if v is None else f"{v:.6g}"  # noqa: E731
        return f"@{fmt(self.start)}-{fmt(self.end)}{self.unit}"

    @property
    def id(self) -> str:
        """Stable id (``shard_format.source_id`` of the resolved path and range); the sample-key prefix."""
        return source_id(self.path + self.range_tag)

    @property
    def uid(self) -> str:
        """Journal id: ``id``, or ``id.dupK`` for the K-th repeat of a listed input."""
        return self.id if self.dup_index == 0 else f"{self.id}.dup{self.dup_index}"

    def to_dict(self) -> dict:
        return asdict(self)


def media_kind(path: str | Path) -> str | None:
    """``"video"``, ``"image"`` or None from the file extension."""
    ext = Path(path).suffix.lower()
    if ext in VIDEO_EXTS:
        return "video"
    if ext in IMAGE_EXTS:
        return "image"
    return None


def _identity(path: Path, identity_from: str) -> str:
    if identity_from == "file":  # the input's id: one identity per file
        return source_id(str(path))
    if identity_from == "parent":
        return path.parent.name
    if identity_from == "grandparent":  # VoxCeleb layout: id/video/clip.mp4
        return path.parent.parent.name
    if identity_from == "stem":
        return path.stem
    if identity_from == "none":
        return ""
    raise ValueError(f"identity_from must be file|parent|grandparent|stem|none, got {identity_from!r}")


def _resolve(path: str | Path, base: Path | None = None) -> Path:
    p = Path(path).expanduser()
    if not p.is_absolute() and base is not None:
        p = base / p
    return Path(os.path.realpath(p))


_UNITS = {"s": "s", "sec": "s", "secs": "s", "seconds": "s", "f": "frames", "frame": "frames", "frames": "frames"}


def parse_range(row: dict, where: str = "") -> dict:
    """``{"start", "end", "unit"}`` of a manifest row (``start``/``end`` with a ``unit`` column or suffix).

    Raises:
        ValueError: an unknown unit, units that disagree, a negative start, an end not after the start, or frame
            numbers that are not integers.
    """
    unit = str(row.get("unit") or "").strip().lower()
    if unit and unit not in _UNITS:
        raise ValueError(f"{where}: unit must be s or frames, got {row.get('unit')!r}")
    unit = _UNITS.get(unit, "")
    values: dict[str, float | None] = {}
    for name in ("start", "end"):
        raw = row.get(name)
        text = "" if raw is None else str(raw).strip().lower()
        if not text:
            values[name] = None
            continue
        suffix = "frames" if text.endswith("f") else "s" if text.endswith("s") else ""
        number = text.rstrip("fs")
        if suffix and unit and suffix != unit:
            raise ValueError(f"{where}: {name}={raw!r} is in {suffix} but the row's unit is {unit}")
        unit = unit or suffix
        try:
            values[name] = float(number)
        except ValueError:
            raise ValueError(
                f"{where}: {name} must be a number (seconds, or frames with unit=frames), got {raw!r}"
            ) from None
    unit = unit or "s"
    start, end = values["start"], values["end"]
    if start is not None and start < 0:
        raise ValueError(f"{where}: start must be >= 0, got {start}")
    if start is not None and end is not None and end <= start:
        raise ValueError(f"{where}: end ({end}) must be after start ({start}); the range is [start, end)")
    if unit == "frames" and any(v is not None and v != int(v) for v in (start, end)):
        raise ValueError(f"{where}: frame numbers must be integers, got start={start} end={end}")
    return {"start": start, "end": end, "unit": unit}


def read_manifest(manifest: str | Path) -> list[dict]:
    """Rows of a CSV (header with ``path``) or JSONL manifest; relative paths resolved against its folder."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise FileNotFoundError(f"manifest {manifest} not found")
    rows: list[dict] = []
    if manifest.suffix.lower() in (".jsonl", ".json", ".ndjson"):
        for n, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{manifest}:{n}: not a JSON object ({e})") from e
    else:
        with manifest.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    for n, row in enumerate(rows, 1):
        if not isinstance(row, dict) or not row.get("path"):
            raise ValueError(f"{manifest} row {n}: needs a 'path' field, got {row!r}")
        row["path"] = str(_resolve(row["path"], manifest.parent))
        row.update(parse_range(row, f"{manifest} row {n}"))
        row["clip_id"] = str(row.get("clip_id") or "")
        row["attributes"] = _attributes(row.get("attributes"), f"{manifest} row {n}")
    return rows


def _attributes(value, where: str) -> str:
    """A manifest's ``attributes`` (a JSON object, or its text in a CSV cell) as canonical JSON text ("" if none)."""
    if value in (None, "", {}):
        return ""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as e:
            raise ValueError(f"{where}: attributes must be a JSON object, got {value!r} ({e})") from None
    if not isinstance(value, dict):
        raise ValueError(f"{where}: attributes must be a JSON object, got {value!r}")
    return json.dumps(value, sort_keys=True)


def _content_digest(path: str, block: int = 1 << 20) -> str:
    """Size + SHA-1 of the first and last MiB: a cheap content fingerprint for duplicate detection."""
    h = hashlib.sha1()
    try:
        size = os.path.getsize(path)
        h.update(str(size).encode())
        with open(path, "rb") as f:
            h.update(f.read(block))
            if size > 2 * block:
                f.seek(-block, os.SEEK_END)
                h.update(f.read(block))
    except OSError:
        return f"unreadable:{path}"
    return h.hexdigest()


def _skip_row(path: Path, dataset: str, reason: str, detail: str) -> dict:
    return {"path": os.path.abspath(path), "dataset": dataset, "kind": media_kind(path) or "other", "skip": reason,
            "skip_detail": detail}  # fmt: skip


def _scan(folder: Path, dataset: str, ancestors: tuple[str, ...], seen: set[str], rows: list[dict]) -> None:
    """Rows for the media files under ``folder`` (recursive, symlinked folders followed) and for every anomaly."""
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        rows.append(_skip_row(folder, dataset, "unreadable", f"cannot list the folder: {e.strerror}"))
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            st = file_stat(entry.path) if entry.is_symlink() else entry.stat(follow_symlinks=False)
        except Skip as s:
            rows.append(_skip_row(path, dataset, s.reason, s.detail))
            continue
        except OSError as e:
            rows.append(_skip_row(path, dataset, "unreadable", f"cannot stat it: {e.strerror}"))
            continue
        if stat.S_ISDIR(st.st_mode):
            if media_kind(path):
                rows.append(_skip_row(path, dataset, "not_a_file", "a folder named like a media file (scanned)"))
            real = os.path.realpath(path)
            if real in ancestors:
                rows.append(_skip_row(path, dataset, "symlink_loop", f"links to {real}, a folder above it"))
            elif real not in seen:  # a folder reached again through another link is listed once
                seen.add(real)
                _scan(path, dataset, (*ancestors, real), seen, rows)
        elif media_kind(path):
            if stat.S_ISREG(st.st_mode):
                rows.append({"path": str(_resolve(path)), "dataset": dataset})
            else:
                rows.append(_skip_row(path, dataset, "not_a_file", "not a regular file (a fifo, socket or device)"))


def _given_path(p: str, dataset: str | None) -> list[dict]:
    """Rows for one entry of ``inputs.paths``: a folder (scanned), a file, or the reason it is neither."""
    given = Path(os.path.abspath(Path(p).expanduser()))
    try:
        st = file_stat(str(given))
    except Skip as s:
        return [_skip_row(given, dataset or given.parent.name, s.reason, s.detail)]
    root = _resolve(given)
    if stat.S_ISDIR(st.st_mode):
        rows: list[dict] = []
        _scan(root, dataset or root.name, (str(root),), {str(root)}, rows)
        return rows
    if not stat.S_ISREG(st.st_mode):
        return [_skip_row(given, dataset or root.parent.name, "not_a_file", "not a regular file or folder")]
    return [{"path": str(root), "dataset": dataset or root.parent.name}]


def discover(
    paths: list[str] | None = None,
    manifest: str | None = None,
    dataset: str | None = None,
    split: str = "train",
    identity_from: str = "file",
    dedupe_content: bool = False,
) -> list[InputItem]:
    """All inputs, sorted by resolved path, with duplicates and paths that cannot be inputs marked.

    Args:
        paths: directories (searched recursively for known extensions) and/or single files.
        manifest: CSV / JSONL manifest (columns: path, identity, split, dataset; optional clip_id, start, end, unit).
        dataset: dataset tag for inputs without one (default: name of the directory given in ``paths``).
        split: split for inputs without one.
        identity_from: identity for inputs without one: file (each file its own) | parent | grandparent | stem | none.
        dedupe_content: also mark inputs with identical content (size + first/last MiB) as duplicates.
    """
    rows: list[dict] = []
    for p in paths or []:
        rows.extend(_given_path(p, dataset))
    if manifest:
        rows.extend(read_manifest(manifest))
    items: list[InputItem] = []
    for row in rows:
        p = Path(row["path"])
        kind, skip = row.get("kind") or media_kind(p), row.get("skip")
        if kind is None:
            kind, skip = "other", "unknown_extension"
            row["skip_detail"] = f"not a video {sorted(VIDEO_EXTS)} or image {sorted(IMAGE_EXTS)} by its extension"
        items.append(
            InputItem(
                path=row["path"],
                kind=kind,
                identity=str(row.get("identity") or _identity(p, identity_from)),
                split=str(row.get("split") or split),
                dataset=str(row.get("dataset") or dataset or p.parent.name),
                skip=skip,
                skip_detail=row.get("skip_detail", ""),
                clip_id=row.get("clip_id", ""),
                start=row.get("start"),
                end=row.get("end"),
                unit=row.get("unit", "s"),
                attributes=row.get("attributes", ""),
            )
        )
    # stable: among equal paths and ranges, directory entries first, then manifest order
    items.sort(key=lambda it: (it.path, _range_key(it.start), _range_key(it.end), it.unit, it.clip_id))
    return _mark_duplicates(items, dedupe_content)


def _range_key(v: float | None) -> float:
    return -1.0 if v is None else v


def _mark_duplicates(items: list[InputItem], dedupe_content: bool) -> list[InputItem]:
    """Repeats of an input (same path and range; with ``dedupe_content`` same content and range) are marked."""
    seen: dict[str, str] = {}
    occurrences: dict[str, int] = {}
    out = []
    for it in items:
        name = it.path + it.range_tag
        key = (_content_digest(it.path) if dedupe_content else it.path) + it.range_tag
        k = occurrences.get(name, 0)
        occurrences[name] = k + 1
        if key in seen:
            it = InputItem(**{**it.to_dict(), "duplicate_of": seen[key], "dup_index": k})
        else:
            seen[key] = name
        out.append(it)
    return out


def task_slice(items: list[InputItem], task_index: int, num_tasks: int) -> list[InputItem]:
    """Deterministic, balanced slice of the inputs for SLURM array task ``task_index`` of ``num_tasks``.

    Items are dealt round-robin in path order (``items[task_index::num_tasks]``), which spreads big and small
    folders over tasks; every input lands in exactly one task.
    """
    if num_tasks < 1 or not 0 <= task_index < num_tasks:
        raise ValueError(f"task {task_index} of {num_tasks}: need 0 <= task < num_tasks")
    return items[task_index::num_tasks]
