"""CelebV-HQ (Zhu et al. 2022): ``celebvhq_info.json`` with each clip's YouTube id, time span, box and attributes.

Get ``celebvhq_info.json`` and the videos with the corpus's own ``download_and_process.py``
(https://github.com/CelebV-HQ/CelebV-HQ; yt-dlp). The JSON::

    {"meta_info": {"appearance_mapping": [...40 names], "action_mapping": [...35 names]},
     "clips": {"<ytb_id>_<k>": {"ytb_id": "...", "duration": {"start_sec": 81.62, "end_sec": 86.17},
                                "bbox": {"top": .., "bottom": .., "left": .., "right": ..},
                                "attributes": {"appearance": [0, 1, ...], "action": [0, ...],
                                               "emotion": {"sep_flag": false, "labels": "neutral"}},
                                "version": "v0.1"}, ...}}

``--videos`` holds the processed clips ``<clip key>.mp4`` (used whole) or the raw downloads ``<ytb_id>.mp4``
(the clip's ``[start_sec, end_sec)`` as a time range). Attributes (the names whose flag is 1, and the emotion) go
into the manifest's ``attributes``. CelebV-HQ has no identity labels: clips of one YouTube video are taken as one
identity (so a split by identity never puts one video on both sides). No official split: every row is ``--split``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_prep.recipes.common import Missing, Result, Row, find_video, patterns


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", type=Path, required=True, help="celebvhq_info.json")
    p.add_argument("--videos", type=Path, required=True, help="<clip key>.mp4 clips or <ytb_id>.mp4 raw downloads")
    p.add_argument("--split", default="train", help="split of every row (CelebV-HQ has no official test split)")


def _attributes(clip: dict, meta: dict) -> dict:
    attrs = clip.get("attributes", {})
    out: dict = {}
    for kind in ("appearance", "action"):
        names = meta.get(f"{kind}_mapping", [])
        flags = attrs.get(kind, [])
        out[kind] = [n for n, f in zip(names, flags, strict=False) if f]
    emotion = attrs.get("emotion")
    if emotion is not None:
        out["emotion"] = emotion.get("labels")
    return out


def convert(args: argparse.Namespace) -> Result:
    info = json.loads(args.json.read_text(encoding="utf-8"))
    if "clips" not in info:
        raise ValueError(f"{args.json}: no 'clips' object (expected CelebV-HQ's celebvhq_info.json)")
    meta = info.get("meta_info", {})
    res = Result()
    for key, clip in sorted(info["clips"].items()):
        ytb = clip["ytb_id"]
        span = clip["duration"]
        row = Row("", ytb, args.split, "celebvhq", key, attributes=_attributes(clip, meta))
        processed = find_video(args.videos, key)
        raw = None if processed is not None else find_video(args.videos, ytb)
        if processed is None and raw is None:
            res.missing.append(Missing(key, f"{patterns(args.videos, key)} or {patterns(args.videos, ytb)}"))
            continue
        row.path = str((processed or raw).resolve())
        if processed is None:
            row.start, row.end = float(span["start_sec"]), float(span["end_sec"])
        res.rows.append(row)
    return res
