"""Portrait image sets as one-frame samples: FFHQ (Karras et al. 2019) and AAHQ (Liu et al. 2021, stylised art).

LivePortrait trains on still portraits as one-frame clips (60K stylised images, AAHQ among them). FFHQ: get
``ffhq-dataset-v2.json`` and the images with the corpus's ``download_ffhq.py``
(https://github.com/NVlabs/ffhq-dataset); the JSON maps each index to
``{"category": "training" | "validation", "image": {"file_path": "images1024x1024/00000/00000.png", ...}, ...}``.
With ``--json`` every listed image is a row (``validation`` -> ``test``) and unlisted ones are reported missing;
without it the images under ``--root`` are listed. AAHQ: get the images with the AAHQ-dataset repository's script
(https://github.com/onion-liu/aahq-dataset) and list the folder. Every image is its own identity (these sets have
no person labels; FFHQ's first 50 images are also LivePortrait's cross-reenactment sources, conf/eval/data).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from data_prep.inputs import IMAGE_EXTS
from data_prep.recipes.common import Missing, Result, Row

FFHQ_SPLITS = {"training": "train", "validation": "test"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--root", type=Path, required=True, help="the image folder (searched recursively)")
    p.add_argument("--json", type=Path, default=None, help="FFHQ only: ffhq-dataset-v2.json (official split)")
    p.add_argument("--split", default="train", help="split of every image listed without --json")


def _folder(args: argparse.Namespace, dataset: str) -> Result:
    if not args.root.is_dir():
        raise FileNotFoundError(f"--root {args.root}: not a folder")
    files = sorted(p for p in args.root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file())
    rows = [Row(str(p.resolve()), f"{dataset}/{p.relative_to(args.root).with_suffix('')}", args.split, dataset,
                str(p.relative_to(args.root))) for p in files]  # fmt: skip
    return Result(rows)


def convert_ffhq(args: argparse.Namespace) -> Result:
    if args.json is None:
        return _folder(args, "ffhq")
    meta = json.loads(args.json.read_text(encoding="utf-8"))
    res = Result()
    for index, entry in sorted(meta.items(), key=lambda kv: int(kv[0])):
        rel = entry["image"]["file_path"]
        path = args.root / rel
        if not path.is_file():
            path = args.root / Path(rel).relative_to(Path(rel).parts[0])  # --root may be images1024x1024 itself
        if not path.is_file():
            res.missing.append(Missing(rel, str(args.root / rel)))
            continue
        split = FFHQ_SPLITS.get(entry.get("category", ""), args.split)
        res.rows.append(Row(str(path.resolve()), f"ffhq/{int(index):05d}", split, "ffhq", rel))
    return res


def convert_aahq(args: argparse.Namespace) -> Result:
    return _folder(args, "aahq")
