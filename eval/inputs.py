"""Evaluation inputs (LivePortrait Sec. 4.2): test videos and source images as folders, or curation shards.

* a **video folder**: every ``.mp4/.mov/.mkv/.webm/.avi`` file, and every sub-folder of image frames, is one video;
* an **image folder**: the images sorted by name (cross-reenactment takes the first N, as the paper's "first 50
  FFHQ images");
* **shards** (``lp_train.data.shard_format``): the chunks of one clip (key ``{source_id}_{clip}_{chunk}``) are joined
  into one video ``{source_id}_{clip}``; frames are already LivePortrait crops.

Frames are returned as LivePortrait face crops: ``crop: auto`` treats square inputs as crops already (the test
clips of the paper's datasets and the shared ``d*.mp4`` are) and crops non-square ones with the curation crop
(``lp_train.face.crop`` through ``lp_train.face.track.track_face``: face mesh per frame, crop smoothed over the clip);
``crop: true`` / ``false`` forces it.
"""

from __future__ import annotations

import io
import itertools
import logging
import os
import tarfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from lp_train.animate_io import IMAGE_EXTS, read_image, read_video
from lp_train.face.crop import crop_affine, warp_crop
from lp_train.face.track import NoFaceError, track_face

log = logging.getLogger(__name__)

VIDEO_EXTS = frozenset({".mp4", ".mov", ".mkv", ".webm", ".avi"})


class InputError(ValueError):
    """An evaluation input is missing, empty or unreadable."""


@dataclass
class Clip:
    """One evaluation video (or image): a name and how to read its frames.

    Attributes:
        name: unique key in reports (file stem, or shard clip key).
        path: the file, frame folder or shard the clip comes from.
        kind: ``video``, ``frames`` (a folder of images), ``image`` or ``shard``.
        members: for shards, the (tar path, member names) of every frame in order.
    """

    name: str
    path: Path
    kind: str
    members: list[tuple[Path, str]] = field(default_factory=list)

    def frames(self, max_frames: int | None = None, stride: int = 1) -> Iterator[np.ndarray]:
        """Stream decoded (H, W, 3) uint8 RGB frames 0, stride, 2·stride, ... (at most ``max_frames``)."""
        if stride < 1:
            raise InputError(f"frame_stride must be >= 1, got {stride}")
        need = None if max_frames is None else (max_frames - 1) * stride + 1
        if self.kind == "image":
            source: Iterator[np.ndarray] = iter([read_image(self.path)])
        elif self.kind == "video":
            source = read_video(self.path, need)
        elif self.kind == "frames":
            files = sorted(p for p in self.path.iterdir() if p.suffix.lower() in IMAGE_EXTS)[:need]
            source = (read_image(p) for p in files)
        else:
            source = _read_shard_frames(self.members[:need])
        return itertools.islice(source, 0, need, stride)

    def read(self, max_frames: int | None = None, stride: int = 1) -> list[np.ndarray]:
        """``frames`` as a list (``InputError`` if nothing decodes)."""
        frames = list(self.frames(max_frames, stride))
        if not frames:
            raise InputError(f"{self.kind} {self.path}: no frames decoded")
        return frames


def _read_shard_frames(members: list[tuple[Path, str]]) -> Iterator[np.ndarray]:
    tars: dict[Path, tarfile.TarFile] = {}
    try:
        for tar, name in members:
            tf = tars.setdefault(tar, tarfile.open(tar))  # noqa: SIM115 - closed below
            with Image.open(io.BytesIO(tf.extractfile(name).read())) as im:
                yield np.asarray(im.convert("RGB"))
    finally:
        for tf in tars.values():
            tf.close()


def list_videos(root: str | os.PathLike, limit: int | None = None) -> list[Clip]:
    """Videos of a folder (files and frame sub-folders), sorted by name; ``InputError`` if there are none."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"video folder not found: {root}")
    clips = []
    for p in sorted(root.iterdir()):
        if p.is_file() and p.suffix.lower() in VIDEO_EXTS:
            clips.append(Clip(p.stem, p, "video"))
        elif p.is_dir() and any(q.suffix.lower() in IMAGE_EXTS for q in p.iterdir()):
            clips.append(Clip(p.name, p, "frames"))
    if not clips:
        raise InputError(f"no videos ({sorted(VIDEO_EXTS)} files or frame folders) in {root}")
    return clips[:limit]


def list_images(root: str | os.PathLike, limit: int | None = None) -> list[Clip]:
    """The first ``limit`` images of a folder, sorted by name."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"image folder not found: {root}")
    clips = [Clip(p.stem, p, "image") for p in sorted(root.iterdir()) if p.suffix.lower() in IMAGE_EXTS]
    if not clips:
        raise InputError(f"no images ({sorted(IMAGE_EXTS)}) in {root}")
    return clips[:limit]


def list_shard_clips(pattern_or_dir: str | os.PathLike, limit: int | None = None) -> list[Clip]:
    """Clips of curation shards (a folder of ``*.tar`` or one tar): chunks joined per ``{source_id}_{clip}``."""
    root = Path(pattern_or_dir)
    tars = sorted(root.glob("*.tar")) if root.is_dir() else [root]
    if not tars or not all(t.is_file() for t in tars):
        raise InputError(f"no shards (*.tar) at {root}")
    frames: dict[str, list[tuple[int, int, Path, str]]] = defaultdict(list)
    for tar in tars:
        with tarfile.open(tar) as tf:
            for name in tf.getnames():
                key, _, ext = name.partition(".")
                if ext.endswith(".jpg") and ext[:4].isdigit():
                    clip, _, chunk = key.rpartition("_")
                    frames[clip].append((int(chunk), int(ext[:4]), tar, name))
    clips = [Clip(k, v[0][2], "shard", [(t, n) for *_, t, n in sorted(v)]) for k, v in sorted(frames.items())
             if len(v) > 1]  # one-frame samples are still images, not test videos  # fmt: skip
    if not clips:
        raise InputError(f"shards at {root} hold no clips of 2 or more frames")
    return clips[:limit]


def face_crops(clip: Clip, crop: str | bool, size: int, max_frames: int | None = None, stride: int = 1,
               smooth_sigma: float = 1.0) -> list[np.ndarray]:  # fmt: skip
    """LivePortrait crops (``size``²) of a clip's frames, streamed: only the crops are held in memory.

    ``crop`` (see the module docstring): ``auto`` crops non-square inputs only. Cropping takes two passes over the
    clip (face landmarks of every frame, then the smoothed crops), like ``lp-animate``.
    """
    if crop not in ("auto", True, False):
        raise InputError(f"crop must be auto, true or false, got {crop!r}")
    first = next(clip.frames(1), None)
    if first is None:
        raise InputError(f"{clip.kind} {clip.path}: no frames decoded")
    if crop is False or (crop == "auto" and first.shape[0] == first.shape[1]):
        crops = [_square(f, size) for f in clip.frames(max_frames, stride)]
    else:
        crops = _tracked_crops(clip, size, max_frames, stride, smooth_sigma)
    if not crops:
        raise InputError(f"{clip.kind} {clip.path}: no frames decoded")
    return crops


def _tracked_crops(clip: Clip, size: int, max_frames: int | None, stride: int, sigma: float) -> list[np.ndarray]:
    video = clip.kind != "image"
    try:
        track = track_face(clip.frames(max_frames, stride), video, sigma if video else 0.0, clip.name)
    except NoFaceError as e:  # e.g. a stylised portrait the face mesh misses: keep it, centre-cropped
        log.warning("%s: %s; using a centre crop instead of the face crop", clip.name, e)
        return [_square(f, size) for f in clip.frames(max_frames, stride)]
    if track.missing:
        log.warning("%s: no face in %d of %d frames (nearest face used)", clip.name, track.missing, len(track.params))
    frames = clip.frames(max_frames, stride)
    return [warp_crop(f, crop_affine(p, size), size) for f, p in zip(frames, track.params, strict=True)]


def _square(rgb: np.ndarray, size: int) -> np.ndarray:
    """Centre square of ``rgb`` resized to ``size``² (area interpolation)."""
    h, w = rgb.shape[:2]
    m = min(h, w)
    y, x = (h - m) // 2, (w - m) // 2
    return cv2.resize(rgb[y : y + m, x : x + m], (size, size), interpolation=cv2.INTER_AREA)
