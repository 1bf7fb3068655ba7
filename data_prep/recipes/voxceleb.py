"""VoxCeleb1 / VoxCeleb2 (Nagrani et al. 2017; Chung et al. 2018): ``id/video/clip`` txt face tracks -> manifest.

Get the metadata and videos from the VGG page (https://www.robots.ox.ac.uk/~vgg/data/voxceleb/, after its request
form): the txt archives (``vox1_dev_txt.zip``, ``vox1_test_txt.zip``, ``vox2_dev_txt.zip``, ``vox2_test_txt.zip``)
unzip to ``txt/<id>/<YouTube id>/<NNNNN>.txt``, one file per face track::

    Identity  : 	id00017
    Reference : 	_mjZ87sK6cA
    Offset    : 	2
    FV Conf   : 	16.140	(1)
    ASD Conf  : 	5.142

    FRAME 	X 	Y 	W 	H
    000245 	0.123 	0.136 	0.422 	0.749
    ...

``FRAME`` counts frames of the YouTube video at 25 fps. The videos, either layout under ``--videos``:

* the released clips (VoxCeleb2's ``vox2_dev_mp4`` / ``vox2_test_mp4``: ``<id>/<YouTube id>/<NNNNN>.mp4``): one row
  per clip, the whole file;
* the full YouTube videos fetched by their ``Reference`` with yt-dlp (``<YouTube id>.mp4|mkv|webm``): one row per
  track with its range ``[first/25, (last + 1)/25)`` seconds (``FRAME`` rows are inclusive).

Identity = the ``id`` folder. Splits are the official ones: VoxCeleb1's test identities are id10270-id10309 (its
verification test set), the rest train; VoxCeleb2's dev and test archives hold disjoint identities, so
``--split`` says which archive ``--txt`` is (``auto``: ``test`` when a folder of the path is named ``test`` or
``vox2_test_txt``, ``train`` for ``dev``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.recipes.common import Missing, Result, Row, find_video, patterns

VOX_FPS = 25.0  # FRAME numbers of the txt tracks are at 25 fps (the rate VoxCeleb was processed at)
VOX1_TEST_IDS = frozenset(f"id{n}" for n in range(10270, 10310))  # VoxCeleb1 verification test: 40 identities


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--txt", type=Path, required=True, help="the unzipped txt folder: <id>/<YouTube id>/<NNNNN>.txt")
    help = "released clips <id>/<YouTube id>/<NNNNN>.mp4, or full videos <YouTube id>.mp4|mkv|webm"
    p.add_argument("--videos", type=Path, required=True, help=help)
    p.add_argument("--split", default="auto", help="train | test | auto (official split, see above)")


def parse_track(path: Path) -> dict:
    """``{"identity", "reference", "frames": [int, ...]}`` of one VoxCeleb txt track file."""
    header: dict[str, str] = {}
    frames: list[int] = []
    in_table = False
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        cells = line.split()
        if not cells:
            continue
        if in_table:
            frames.append(int(cells[0]))
        elif cells[0] == "FRAME":
            in_table = True
        elif ":" in line:
            key, _, value = line.partition(":")
            header[key.strip().lower()] = value.split()[0] if value.split() else ""
    if not frames or "reference" not in header:
        raise ValueError(f"{path}: not a VoxCeleb track file (needs 'Reference :' and a FRAME table)")
    return {"identity": header.get("identity", ""), "reference": header["reference"], "frames": frames}


def _split(txt: Path, identity: str, dataset: str, given: str) -> str:
    if given != "auto":
        return given
    if dataset == "voxceleb1":
        return "test" if identity in VOX1_TEST_IDS else "train"
    parts = {p.lower() for p in txt.resolve().parts}
    if parts & {"test", "vox2_test_txt", "vox2_test_mp4"}:
        return "test"
    if parts & {"dev", "vox2_dev_txt", "vox2_dev_mp4"}:
        return "train"
    raise ValueError(f"cannot tell whether {txt} is VoxCeleb2 dev or test: pass --split train or --split test")


def convert(args: argparse.Namespace, dataset: str) -> Result:
    if not args.txt.is_dir():
        raise FileNotFoundError(f"--txt {args.txt}: not a folder (unzip the {dataset} txt archive)")
    res = Result()
    for txt in sorted(args.txt.glob("id*/*/*.txt")):
        identity, ref, clip = txt.parent.parent.name, txt.parent.name, txt.stem
        clip_id = f"{identity}/{ref}/{clip}"
        split = _split(args.txt, identity, dataset, args.split)
        released = find_video(args.videos / identity / ref, clip)
        if released is not None:
            res.rows.append(Row(str(released.resolve()), identity, split, dataset, clip_id))
            continue
        full = find_video(args.videos, ref)
        if full is None:
            expected = f"{patterns(args.videos / identity / ref, clip)} or {patterns(args.videos, ref)}"
            res.missing.append(Missing(clip_id, expected))
            continue
        frames = parse_track(txt)["frames"]
        start, end = min(frames) / VOX_FPS, (max(frames) + 1) / VOX_FPS
        res.rows.append(Row(str(full.resolve()), identity, split, dataset, clip_id, start, end, "s"))
    return res


def convert_vox1(args: argparse.Namespace) -> Result:
    return convert(args, "voxceleb1")


def convert_vox2(args: argparse.Namespace) -> Result:
    return convert(args, "voxceleb2")
