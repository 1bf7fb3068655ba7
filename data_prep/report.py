"""Merge / stats step of curation: shard index and a report a person can check by looking.

After all tasks of a curation run (LivePortrait, Guo et al. 2024, Sec. 4.1: 92M raw -> 69M kept frames) finished,
``merge(cfg)`` reads every task journal and writes, atomically:

* ``index.json``: every committed shard with its samples / frames / bytes, totals, and tasks still incomplete;
* ``report/report.json`` + ``report/report.md``: inputs by status, frames / clips / identities kept, drops **by
  reason** (input-level skips, frame-level and clip-level filters), image-mode conversions;
* ``report/clip_lengths.png``, ``report/face_sizes.png``: histograms over kept clips;
* ``report/contact_sheet_*.png``: grids of kept crops (first frame of evenly spread samples) with landmarks.
"""

from __future__ import annotations

import io
import json
import logging
import os
import tarfile
from collections import Counter
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from PIL import Image, ImageDraw

from data_prep.writer import Journal
from lp_train.data.shard_format import CROP_SIZE, FORMAT_VERSION, decode_npy

log = logging.getLogger(__name__)


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def shard_keys(path: Path) -> list[str]:
    """Sample keys of a shard, in order (from tar member names; the key is the name up to the first dot)."""
    keys: list[str] = []
    with tarfile.open(path) as tar:
        for m in tar:
            key = m.name.split(".", 1)[0]
            if not keys or keys[-1] != key:
                keys.append(key)
    return keys


def collect(out: Path) -> tuple[list[dict], list[dict], list[dict]]:
    """(shards, input records, task states) over all journals under ``out/journal``."""
    shards, records, tasks = [], [], []
    for jpath in sorted((out / "journal").glob("*.jsonl")):
        j = Journal(jpath)
        if j.header is None:
            continue
        done = j.done_inputs()
        shards += j.shards()
        records += list(done.values())
        tasks.append({"prefix": j.header["prefix"], "inputs": j.header["num_inputs"], "done": len(done),
                      "task": j.header.get("task"), "num_tasks": j.header.get("num_tasks")})  # fmt: skip
    return shards, records, tasks


def build_index(out: Path, shards: list[dict], tasks: list[dict], check_keys: bool) -> dict:
    """The ``index.json`` object; raises if a journalled shard is missing or keys repeat."""
    entries, seen, dups = [], set(), []
    for s in shards:
        path = out / "shards" / s["shard"]
        if not path.is_file() or path.stat().st_size != s["bytes"]:
            raise FileNotFoundError(f"shard {path} is in the journal but missing or of the wrong size")
        if check_keys:
            keys = shard_keys(path)
            if len(keys) != s["samples"]:
                raise ValueError(f"{path}: {len(keys)} samples in the tar, {s['samples']} in the journal")
            dups += [k for k in keys if k in seen]
            seen.update(keys)
        entries.append({"url": f"shards/{s['shard']}", **{k: s[k] for k in ("samples", "frames", "bytes")}})
    if dups:
        raise ValueError(f"duplicate sample keys across shards: {dups[:10]} ({len(dups)} in all)")
    return {
        "format": FORMAT_VERSION, "crop_size": CROP_SIZE, "shards": entries, "num_shards": len(entries),
        "num_samples": sum(e["samples"] for e in entries), "num_frames": sum(e["frames"] for e in entries),
        "bytes": sum(e["bytes"] for e in entries), "tasks": tasks,
        "incomplete_tasks": [t["prefix"] for t in tasks if t["done"] < t["inputs"]],
        "missing_tasks": missing_tasks(tasks),
    }  # fmt: skip


def missing_tasks(tasks: list[dict]) -> list[int]:
    """Indices of the array tasks with no journal at all (never ran, or their outputs were lost): the task count is
    recorded in every journal's header."""
    counts = {t["num_tasks"] for t in tasks if t.get("num_tasks")}
    if len(counts) > 1:
        raise ValueError(f"journals of different task counts {sorted(counts)} in one output dir: rerun with one count")
    present = {t["task"] for t in tasks if t.get("task") is not None}
    return sorted(set(range(counts.pop())) - present) if counts else []


def summarize(records: list[dict]) -> dict:
    """Counts for the report: inputs by status, drops by reason, kept frames / clips / identities."""
    status, skip, drop_frames, drop_clips, conv = Counter(), Counter(), Counter(), Counter(), Counter()
    by_dataset: dict[str, Counter] = {}
    for r in records:
        status[r["status"]] += 1
        if r["reason"]:  # skipped / empty / error inputs, and kept ones that lost frames (decode_errors)
            skip[r["reason"]] += 1
        drop_frames.update(r["drop_frames"])
        drop_clips.update(r["drop_clips"])
        if r["notes"].get("converted_from"):
            conv[r["notes"]["converted_from"]] += 1
        d = by_dataset.setdefault(r["dataset"], Counter())
        d.update({"inputs": 1, "frames_kept": r["frames_kept"], "clips_kept": r["clips_kept"], "samples": r["samples"]})
    kept = [r for r in records if r["samples"] > 0]
    frames = sum(r["frames_decoded"] for r in records)
    frames_kept = sum(r["frames_kept"] for r in records)
    decode_errors = [r["notes"]["decode_errors"] for r in records if r["notes"].get("decode_errors")]
    return {
        "inputs": len(records), "inputs_by_status": dict(status), "input_reasons": dict(skip),
        "frames_decoded": frames, "frames_kept": frames_kept, "kept_fraction": frames_kept / max(frames, 1),
        "clips_total": sum(r["clips_total"] for r in records), "clips_kept": sum(r["clips_kept"] for r in records),
        "samples": sum(r["samples"] for r in records),
        "identities_kept": len({(r["dataset"], r["identity"]) for r in kept}),
        "drop_frames": dict(drop_frames), "drop_clips": dict(drop_clips), "image_conversions": dict(conv),
        "decode_errors": {"inputs": len(decode_errors), "error_lines": sum(decode_errors),
                          "frames_dropped": drop_frames.get("decode_errors", 0)},
        "by_dataset": {k: dict(v) for k, v in sorted(by_dataset.items())},
        "skipped": [{"path": r["path"] + (r.get("range") or ""), "status": r["status"], "reason": r["reason"],
                     "detail": r["detail"]} for r in records if r["reason"]],
    }  # fmt: skip


def _histograms(records: list[dict], report_dir: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    secs = [n / r["notes"]["decode_fps"] for r in records if r["notes"].get("decode_fps") for n in r["clip_lengths"]]
    sizes = [s for r in records for s in r["face_sizes"]]
    written = []
    for name, data, xlabel in (
        ("clip_lengths.png", secs, "kept video clip length (s)"),
        ("face_sizes.png", sizes, "median face box side per kept clip (source px)"),
    ):
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        ax.hist(data, bins=30 if data else 1, color="#4477aa")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("clips")
        ax.set_title(f"{len(data)} clips")
        fig.tight_layout()
        fig.savefig(report_dir / name)
        plt.close(fig)
        written.append(name)
    return written


def _first_frames(out: Path, shards: list[dict], limit: int) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """(first frame, its landmarks, key) of ``limit`` samples spread evenly over the shards."""
    total = sum(s["samples"] for s in shards)
    if total == 0:
        return []
    want = set(np.linspace(0, total - 1, min(limit, total)).round().astype(int).tolist())
    found, pos = [], 0
    for s in shards:
        if not any(pos <= w < pos + s["samples"] for w in want):
            pos += s["samples"]
            continue
        members: dict[str, dict] = {}
        with tarfile.open(out / "shards" / s["shard"]) as tar:
            for m in tar:
                key, ext = m.name.split(".", 1)
                if ext in ("0000.jpg", "landmarks.npy"):
                    members.setdefault(key, {})[ext] = tar.extractfile(m).read()
        for i, key in enumerate(members):
            if pos + i in want:
                img = np.asarray(Image.open(io.BytesIO(members[key]["0000.jpg"])).convert("RGB"))
                found.append((img, decode_npy(members[key]["landmarks.npy"])[0], key))
        pos += s["samples"]
    return found


def contact_sheets(out: Path, shards: list[dict], report_dir: Path, count: int, rows: int, cols: int) -> list[str]:
    """PNG grids of kept crops (128 px tiles, a few landmarks drawn); returns the file names."""
    tiles = _first_frames(out, shards, count * rows * cols)
    names, tile = [], 128
    for s in range(count):
        batch = tiles[s * rows * cols : (s + 1) * rows * cols]
        if not batch:
            break
        used_cols = min(cols, len(batch))  # a short last (or only) sheet is cropped to its tiles
        sheet = Image.new("RGB", (used_cols * tile, -(-len(batch) // cols) * tile), (32, 32, 32))
        draw = ImageDraw.Draw(sheet)
        for i, (img, lmk, _key) in enumerate(batch):
            x, y = (i % cols) * tile, (i // cols) * tile
            sheet.paste(Image.fromarray(img).resize((tile, tile), Image.BILINEAR), (x, y))
            for px, py in lmk[[33, 133, 263, 362, 61, 291, 1, 152]] * tile:  # eye corners, mouth, nose, chin
                draw.ellipse((x + px - 1, y + py - 1, x + px + 1, y + py + 1), fill=(0, 255, 0))
        name = f"contact_sheet_{s:02d}.png"
        sheet.save(report_dir / name)
        names.append(name)
    return names


def _markdown(summary: dict, index: dict, images: list[str]) -> str:
    lines = [
        "# Curation report", "",
        f"- shards: {index['num_shards']}, samples: {index['num_samples']}, frames: {index['num_frames']}, "
        f"size: {index['bytes'] / 1e9:.3f} GB",
        f"- inputs: {summary['inputs']} ({summary['inputs_by_status']})",
        f"- frames decoded: {summary['frames_decoded']}, kept: {summary['frames_kept']} "
        f"({100 * summary['kept_fraction']:.1f}%)",
        f"- clips kept: {summary['clips_kept']} of {summary['clips_total']}; "
        f"identities kept: {summary['identities_kept']}",
        f"- decoder errors: {summary['decode_errors']['error_lines']} lines in {summary['decode_errors']['inputs']} "
        f"inputs; {summary['decode_errors']['frames_dropped']} frames decoded after an input's first error dropped",
        f"- incomplete tasks: {index['incomplete_tasks'] or 'none'}",
        f"- missing tasks: {index.get('missing_tasks') or 'none'}", "",
        "## Drops by reason", "", "| level | reason | count |", "|---|---|---|",
    ]  # fmt: skip
    for level, key in (("input", "input_reasons"), ("frames", "drop_frames"), ("clips", "drop_clips")):
        lines += [f"| {level} | {r} | {n} |" for r, n in sorted(summary[key].items(), key=lambda x: -x[1])]
    lines += ["", f"Image conversions (converted, not dropped): {summary['image_conversions'] or 'none'}", ""]
    lines += ["## Skipped, empty or cut inputs", "", "| status | reason | path | detail |", "|---|---|---|---|"]
    lines += [f"| {s['status']} | {s['reason']} | `{s['path']}` | {s['detail'][:120]} |" for s in summary["skipped"]]
    lines += ["", "## Plots", ""] + [f"![{n}]({n})" for n in images]
    return "\n".join(lines) + "\n"


def merge(cfg: DictConfig) -> dict:
    """Write ``index.json`` and ``report/`` for the curation run in ``cfg.output.dir``; returns the summary."""
    out = Path(cfg.output.dir)
    shards, records, tasks = collect(out)
    if not tasks:
        raise FileNotFoundError(f"no journals under {out / 'journal'}: run `lp-prep` (mode=run) first")
    index = build_index(out, shards, tasks, cfg.report.check_keys)
    if (index["missing_tasks"] or index["incomplete_tasks"]) and not cfg.get("allow_incomplete", False):
        raise ValueError(
            f"merge refused: array tasks missing {index['missing_tasks']} (no journal), incomplete "
            f"{index['incomplete_tasks']}; rerun them (slurm/submit_prep.sh --rerun K, or lp-prep task.index=K "
            "task.count=N with the same inputs), or pass allow_incomplete=true to index what exists"
        )
    write_json_atomic(out / "index.json", index)
    report_dir = out / "report"
    report_dir.mkdir(parents=True, exist_ok=True)
    summary = summarize(records)
    images = _histograms(records, report_dir)
    rc = cfg.report
    images += contact_sheets(out, shards, report_dir, rc.contact_sheets, rc.sheet_rows, rc.sheet_cols)
    write_json_atomic(
        report_dir / "report.json", {"index": {k: v for k, v in index.items() if k != "shards"}, **summary}
    )
    tmp = report_dir / "report.md.tmp"
    tmp.write_text(_markdown(summary, index, images), encoding="utf-8")
    os.replace(tmp, report_dir / "report.md")
    if index["incomplete_tasks"] or index["missing_tasks"]:
        log.warning("allow_incomplete=true: incomplete tasks %s, missing tasks %s (rerun them)",
                    index["incomplete_tasks"], index["missing_tasks"])  # fmt: skip
    log.info("merged %d shards, %d samples -> %s", index["num_shards"], index["num_samples"], out)
    return {"index": index, "summary": summary}
