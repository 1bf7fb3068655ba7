"""VFHQ (Xie et al. 2022): one meta file per clip, ``Clip+<YouTube id>+P<person>+C<clip>+F<first>-<last>.txt``.

Get ``meta_info.zip`` (training and test clip metadata) from the VFHQ page
(https://liangbinxie.github.io/projects/vfhq/) and the YouTube videos with yt-dlp (e.g. the community
``vfhq-downloader``). A meta file holds ``H: <height>``, ``W: <width>``, ``FPS: <rate>``, ``CROP: x0 y0 x1 y1``
lines and then per-frame boxes and landmarks; the frame span is in the file name, and the clip is frames
``first + 1 .. last - 1`` of the video at ``FPS`` (the convention of the VFHQ processing scripts, which drop the
boundary frames), i.e. the range ``[(first + 1)/FPS, last/FPS)`` seconds.

``--videos`` holds the cut clips (``<meta file stem>.mp4`` or ``Clip+<id>+P<p>+C<c>.mp4``, used whole) or the full
downloads ``<YouTube id>.mp4|mkv|webm`` (the range). Identity = ``<YouTube id>+P<person>``. Split: the folder a meta
file is in when it is named ``train`` or ``test`` (VFHQ-Test, LivePortrait's VFHQ test set), else ``--split``.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from data_prep.recipes.common import Missing, Result, Row, find_video, patterns

_NAME = re.compile(r"^Clip\+(?P<vid>.+)\+P(?P<pid>\d+)\+C(?P<clip>\d+)\+F(?P<first>\d+)-(?P<last>\d+)$")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--meta", type=Path, required=True, help="the unzipped meta_info folder (Clip+...txt, any depth)")
    p.add_argument("--videos", type=Path, required=True, help="cut clips or <YouTube id>.mp4|mkv|webm downloads")
    p.add_argument("--split", default="train", help="split of meta files not under a train/ or test/ folder")


def parse_meta(path: Path) -> dict:
    """Name fields and the ``H``, ``W``, ``FPS``, ``CROP`` header of one VFHQ meta file."""
    m = _NAME.match(path.stem)
    if m is None:
        raise ValueError(f"{path.name}: not a VFHQ meta file name (Clip+<id>+P<n>+C<n>+F<first>-<last>.txt)")
    out: dict = {**m.groupdict()}
    for line in path.read_text(encoding="utf-8").splitlines():
        key, _, value = line.partition(":")
        key = key.strip().upper()
        if key in ("H", "W") and value.strip():
            out[key] = int(value.split()[0])
        elif key == "FPS" and value.strip():
            out["fps"] = float(value.split()[0])
        elif key == "CROP" and value.strip():
            out["crop"] = [int(v) for v in value.split()[:4]]
    if "fps" not in out:
        raise ValueError(f"{path}: no 'FPS:' line")
    return out


def convert(args: argparse.Namespace) -> Result:
    files = sorted(args.meta.rglob("Clip+*.txt"))
    if not files:
        raise FileNotFoundError(f"--meta {args.meta}: no Clip+*.txt meta files (unzip VFHQ's meta_info.zip)")
    res = Result()
    for f in files:
        m = parse_meta(f)
        split = {"train": "train", "test": "test"}.get(f.parent.name.lower(), args.split)
        cut_name = f"Clip+{m['vid']}+P{m['pid']}+C{m['clip']}"
        row = Row("", f"{m['vid']}+P{m['pid']}", split, "vfhq", f.stem)
        clip = find_video(args.videos, f.stem) or find_video(args.videos, cut_name)
        full = None if clip is not None else find_video(args.videos, m["vid"])
        if clip is None and full is None:
            res.missing.append(
                Missing(f.stem, f"{patterns(args.videos, cut_name)} or {patterns(args.videos, m['vid'])}")
            )
            continue
        row.path = str((clip or full).resolve())
        if clip is None:
            row.start, row.end = (int(m["first"]) + 1) / m["fps"], int(m["last"]) / m["fps"]
        res.rows.append(row)
    return res
