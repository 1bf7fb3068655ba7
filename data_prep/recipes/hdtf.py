"""HDTF (Zhang et al. 2021, "Flow-guided one-shot talking face generation"): YouTube urls + talking intervals.

The metadata is the ``HDTF_dataset`` folder of https://github.com/MRzzm/HDTF: per group (``RD`` radio, ``WDA``,
``WRA``) ``{G}_video_url.txt`` (``<video name> <YouTube url>`` per line) and ``{G}_annotion_time.txt`` (sic; one
line per video: ``<video name>.mp4 MM:SS-MM:SS [MM:SS-MM:SS ...]``, the talking-face intervals). Download each url
with yt-dlp (the HDTF README asks for the 1080p/720p stream) into ``--videos`` as ``<video name>.mp4``; or, after
its step 2 (split into ``<video name>_<k>.mp4``), point ``--videos`` at the split clips: a clip file is used whole,
else the full video with the interval as a time range. Interval ``k`` of a video is clip ``<video name>_<k>``.

Identity: WDA / WRA names are a person and a video number (``AmyKlobuchar1`` -> ``AmyKlobuchar``); radio videos
(``Radio11``) name no person, so each is its own identity. HDTF has no official split: every row is ``--split``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from data_prep.recipes.common import Missing, Result, Row, find_video, patterns


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meta", type=Path, required=True, help="the HDTF_dataset folder ({G}_annotion_time.txt, ...)")
    p.add_argument(
        "--videos", type=Path, required=True, help="<video name>.mp4 downloads or <video name>_<k>.mp4 clips"
    )
    p.add_argument("--split", default="train", help="split of every row (HDTF has no official test split)")


def seconds(stamp: str) -> float:
    """``MM:SS`` or ``HH:MM:SS`` (seconds may have decimals) -> seconds."""
    total = 0.0
    for part in stamp.strip().split(":"):
        total = total * 60 + float(part)
    return total


def parse_intervals(path: Path) -> dict[str, list[tuple[float, float]]]:
    """``video name -> [(start s, end s), ...]`` of an ``*_annotion_time.txt``."""
    out: dict[str, list[tuple[float, float]]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        cells = line.split()
        if not cells:
            continue
        name = cells[0][:-4] if cells[0].lower().endswith(".mp4") else cells[0]
        try:
            spans = [tuple(seconds(t) for t in cell.split("-")) for cell in cells[1:]]
        except ValueError:
            raise ValueError(f"{path}:{n}: expected 'name.mp4 MM:SS-MM:SS ...', got {line!r}") from None
        out[name] = spans  # type: ignore[assignment]
    return out


def identity(group: str, name: str) -> str:
    return name if group == "RD" else re.sub(r"\d+$", "", name) or name


def convert(args: argparse.Namespace) -> Result:
    files = sorted(args.meta.glob("*_annotion_time.txt"))
    if not files:
        raise FileNotFoundError(f"--meta {args.meta}: no *_annotion_time.txt (the HDTF_dataset folder of MRzzm/HDTF)")
    res = Result()
    for f in files:
        group = f.name.split("_", 1)[0]
        for name, spans in sorted(parse_intervals(f).items()):
            for k, (start, end) in enumerate(spans):
                clip_id = f"{name}_{k}"
                row = Row("", identity(group, name), args.split, "hdtf", clip_id, attributes={"group": group})
                clip = find_video(args.videos, clip_id)
                full = None if clip is not None else find_video(args.videos, name)
                if clip is None and full is None:
                    res.missing.append(
                        Missing(clip_id, f"{patterns(args.videos, clip_id)} or {patterns(args.videos, name)}")
                    )
                    continue
                if end <= start:
                    res.missing.append(Missing(clip_id, f"{f.name}: {name}", f"empty interval {start}-{end} s"))
                    continue
                row.path = str((clip or full).resolve())
                if clip is None:
                    row.start, row.end = start, end
                res.rows.append(row)
    return res
