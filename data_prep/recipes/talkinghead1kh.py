"""TalkingHead-1KH (Wang et al. 2021, face-vid2vid): ``{split}_video_tubes.txt`` face tubes of 1-minute chunks.

Get ``data_list.zip`` and the videos with the corpus's own scripts (https://github.com/tcwang0509/TalkingHead-1KH:
``bash videos_download_and_crop.sh train`` and ``... val``): they download the YouTube videos listed in
``data_list/{split}_video_ids.txt``, split them into 1-minute chunks ``{split}/1min_clips/<YouTube id>_<NNNN>.mp4``
and cut each tube into ``{split}/cropped_clips/<name>_S<S>_E<E>_L<L>_T<T>_R<R>_B<B>.mp4``. A tube line is
``<name>,H,W,S,E,L,T,R,B``: the chunk ``<name>``, its size, the first and last frame (inclusive: the scripts trim
``start_frame=S, end_frame=E+1``) and the face box.

``--root`` is the folder the scripts ran in: a cropped clip is used whole; without it, the 1-minute chunk with
frames ``[S, E + 1)`` as a range (our crop replaces the box crop). Splits are the official ones: ``train`` tubes ->
``train``, ``val`` tubes (the evaluation set; LivePortrait's TalkingHead-1KH test set) -> ``test``. Identity = the
YouTube id (the corpus has no person labels; tubes of one video are taken as one person).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from data_prep.recipes.common import Missing, Result, Row, find_video, patterns

SPLITS = {"train": "train", "val": "test", "small": "train"}  # tube list -> our split
_CHUNK = re.compile(r"_\d{4}$")  # videos_split.sh names chunks <YouTube id>_%04d


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-list", type=Path, required=True, help="the unzipped data_list folder (*_video_tubes.txt)")
    p.add_argument("--root", type=Path, required=True, help="where videos_download_and_crop.sh ran ({split}/...)")
    p.add_argument("--lists", nargs="+", default=["train", "val"], help="tube lists to read (train, val, small)")


def parse_tube(line: str) -> dict:
    name, *nums = line.strip().split(",")
    if len(nums) != 8:
        raise ValueError(f"expected '<name>,H,W,S,E,L,T,R,B', got {line.strip()!r}")
    h, w, s, e, left, top, right, bottom = (int(x) for x in nums)
    return {"name": name, "H": h, "W": w, "S": s, "E": e, "L": left, "T": top, "R": right, "B": bottom}


def clip_name(t: dict) -> str:
    """The file name the corpus's ``videos_crop.py`` writes for a tube (without ``.mp4``)."""
    return f"{t['name']}_S{t['S']}_E{t['E']}_L{t['L']}_T{t['T']}_R{t['R']}_B{t['B']}"


def convert(args: argparse.Namespace) -> Result:
    res = Result()
    for lst in args.lists:
        tubes = args.data_list / f"{lst}_video_tubes.txt"
        if not tubes.is_file():
            raise FileNotFoundError(f"{tubes} not found (unzip TalkingHead-1KH's data_list.zip)")
        split = SPLITS.get(lst, lst)
        for n, line in enumerate(tubes.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            try:
                t = parse_tube(line)
            except ValueError as e:
                raise ValueError(f"{tubes}:{n}: {e}") from None
            name = clip_name(t)
            row = Row("", _CHUNK.sub("", t["name"]), split, "talkinghead1kh", name)
            cropped = find_video(args.root / lst / "cropped_clips", name)
            chunk = None if cropped is not None else find_video(args.root / lst / "1min_clips", t["name"])
            if cropped is None and chunk is None:
                expected = f"{patterns(args.root / lst / 'cropped_clips', name)} or " + patterns(
                    args.root / lst / "1min_clips", t["name"]
                )
                res.missing.append(Missing(name, expected))
                continue
            row.path = str((cropped or chunk).resolve())
            if cropped is None:
                row.start, row.end, row.unit = float(t["S"]), float(t["E"] + 1), "frames"
            res.rows.append(row)
    return res
