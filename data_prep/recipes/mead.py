"""MEAD (Wang et al. 2020): emotional talking faces, ``<actor>/video/<view>/<emotion>/level_<n>/<NNN>.mp4``.

Get the videos from the MEAD page (https://wywu.github.io/projects/MEAD/MEAD.html; per-actor ``video.tar``
archives, unpacked under ``--root``). Identity = the actor (``M003``, ``W009``); the view, emotion and intensity
level come from the folder names into ``attributes``. MEAD has no official split: every row is ``--split``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.recipes.common import Result, Row

EMOTIONS = ("angry", "contempt", "disgusted", "fear", "happy", "neutral", "sad", "surprised")
VIEWS = ("front", "down", "left_30", "left_60", "right_30", "right_60", "top")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="folder of the actors (<actor>/video/<view>/...)")
    p.add_argument("--views", nargs="+", default=list(VIEWS), help=f"camera views to keep (default all: {VIEWS})")
    p.add_argument("--split", default="train", help="split of every row (MEAD has no official test split)")


def convert(args: argparse.Namespace) -> Result:
    if not args.root.is_dir():
        raise FileNotFoundError(f"--root {args.root}: not a folder")
    res = Result()
    for f in sorted(args.root.glob("*/video/*/*/level_*/*.mp4")):
        level, emotion, view, actor = f.parent.name, f.parent.parent.name, f.parents[2].name, f.parents[4].name
        if view not in args.views:
            continue
        if emotion not in EMOTIONS:
            raise ValueError(f"{f}: unknown MEAD emotion folder {emotion!r} (expected one of {EMOTIONS})")
        attrs = {"emotion": emotion, "level": int(level.split("_")[1]), "view": view}
        clip_id = f"{actor}/{view}/{emotion}/{level}/{f.stem}"
        res.rows.append(Row(str(f.resolve()), actor, args.split, "mead", clip_id, attributes=attrs))
    return res
