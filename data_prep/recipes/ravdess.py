"""RAVDESS (Livingstone & Russo 2018): ``Actor_NN/MM-VV-EE-II-SS-RR-AA.mp4``, labels in the file name.

Get ``Video_Speech_Actor_NN.zip`` / ``Video_Song_Actor_NN.zip`` from Zenodo (https://zenodo.org/record/1188976) and
unzip them under ``--root``. The seven fields: modality (01 audio-video, 02 video only, 03 audio only), vocal
channel (01 speech, 02 song), emotion (01 neutral, 02 calm, 03 happy, 04 sad, 05 angry, 06 fearful, 07 disgust,
08 surprised), intensity (01 normal, 02 strong), statement (01, 02), repetition (01, 02), actor (01-24). Modalities
01 and 02 are the same video with and without sound: only ``--modality`` (default 02) is listed, so no clip is
curated twice. Identity = the actor. No official split: every row is ``--split``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.recipes.common import Result, Row

EMOTIONS = {"01": "neutral", "02": "calm", "03": "happy", "04": "sad", "05": "angry", "06": "fearful",
            "07": "disgust", "08": "surprised"}  # fmt: skip


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="folder of the Actor_NN folders")
    p.add_argument("--modality", default="02", choices=("01", "02"), help="01 audio-video or 02 video-only files")
    p.add_argument("--split", default="train", help="split of every row (RAVDESS has no official test split)")


def parse_name(stem: str) -> dict:
    fields = stem.split("-")
    if len(fields) != 7 or not all(f.isdigit() for f in fields) or fields[2] not in EMOTIONS:
        raise ValueError(f"{stem!r} is not a RAVDESS file name (MM-VV-EE-II-SS-RR-AA)")
    modality, channel, emotion, intensity, statement, repetition, actor = fields
    return {"modality": modality, "channel": "speech" if channel == "01" else "song", "emotion": EMOTIONS[emotion],
            "intensity": "normal" if intensity == "01" else "strong", "statement": int(statement),
            "repetition": int(repetition), "actor": f"Actor_{actor}"}  # fmt: skip


def convert(args: argparse.Namespace) -> Result:
    if not args.root.is_dir():
        raise FileNotFoundError(f"--root {args.root}: not a folder")
    res = Result()
    for f in sorted(args.root.glob("Actor_*/*.mp4")):
        label = parse_name(f.stem)
        if label["modality"] != args.modality:
            continue
        if label["actor"] != f.parent.name:
            raise ValueError(f"{f}: the name says {label['actor']} but the file is in {f.parent.name}")
        attrs = {k: label[k] for k in ("channel", "emotion", "intensity", "statement", "repetition")}
        res.rows.append(Row(str(f.resolve()), label["actor"], args.split, "ravdess", f.stem, attributes=attrs))
    return res
