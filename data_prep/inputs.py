"""Curation inputs: directories (recursive) and manifests (CSV / JSONL) -> an ordered, de-duplicated input list.

LivePortrait (Guo et al. 2024, Sec. 4.1) curates public video corpora (VoxCeleb, MEAD, RAVDESS, ...) plus
stylised portraits (AAHQ), images being one-frame clips. Every run (and every SLURM array task) builds the same
list from the same arguments, sorted by path, so task ``k`` of ``n`` can take a deterministic slice of it.

A manifest row has ``path`` (absolute, or relative to the manifest's folder) and optional ``identity``, ``split``,
``dataset``. Without an identity, each input file is its own identity (``identity_from="file"``), unless
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

    @property
    def id(self) -> str:
        """Stable id (``shard_format.source_id`` of the resolved path); the sample-key prefix."""
        return source_id(self.path)

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
    return rows


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
        manifest: CSV / JSONL manifest (columns: path, identity, split, dataset).
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
            )
        )
    items.sort(key=lambda it: it.path)  # stable: among equal paths, directory entries first, then manifest order
    return _mark_duplicates(items, dedupe_content)


def _mark_duplicates(items: list[InputItem], dedupe_content: bool) -> list[InputItem]:
    seen: dict[str, str] = {}
    occurrences: dict[str, int] = {}
    out = []
    for it in items:
        key = _content_digest(it.path) if dedupe_content else it.path
        k = occurrences.get(it.path, 0)
        occurrences[it.path] = k + 1
        if key in seen:
            it = InputItem(**{**it.to_dict(), "duplicate_of": seen[key], "dup_index": k})
        else:
            seen[key] = it.path
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
