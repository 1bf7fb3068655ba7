"""Embedded demo corpus for ``make demo``: pseudo talking-head clips and stills made from real photos that ship
inside installed packages — no network, no ``../shared``.

LivePortrait (Guo et al. 2024, Sec. 4.1) trains on talking-head videos and still portraits. A fresh clone has no
such data, so the demo animates the real face photos bundled with our dependencies:

* ``skimage.data.astronaut()`` — Eileen Collins (NASA portrait, public domain), colour, 512²;
* ``skimage.data.camera()`` — "cameraman", grayscale, small face (MIT-licensed scikit-image data);
* ``matplotlib/mpl-data/sample_data/grace_hopper.jpg`` — Grace Hopper (public domain), colour.

Each photo becomes one clip of smooth pseudo head motion: a similarity transform (translation, +-4° roll,
+-4% scale) around the face, following sums of slow sinusoids, plus a mouth-open warp (a local downward
displacement below the upper lip, driven by a "speech" envelope). Clips are H.264 MP4 written with ffmpeg; the
photos are also written as stills (one converted to grayscale PNG, one RGBA PNG, to exercise image conversion).
``manifest.csv`` lists every file with identity, split and dataset. Everything is deterministic.

Usage: ``python -m data_prep.demo_data OUT_DIR [--seconds 2.4] [--fps 25] [--size 384] [--curate]``; with
``--curate`` the corpus is also curated into ``OUT_DIR/curated`` (shards + index + report, ``curate_demo``).
"""

from __future__ import annotations

import argparse
import csv
import logging
import subprocess
from pathlib import Path

import cv2
import numpy as np
from hydra import compose, initialize_config_dir
from lp_train.conf import CONF_DIR
from omegaconf import OmegaConf
from PIL import Image

from data_prep.cli import execute
from lp_train.face.detect import FaceDetector
from lp_train.face.landmarks import INNER_LIP_UPPER, MOUTH_CORNERS

log = logging.getLogger(__name__)


def demo_photos() -> dict[str, np.ndarray]:
    """Real face photos shipped inside installed packages, as (H, W, 3) uint8 RGB."""
    import matplotlib.cbook as cbook
    import skimage.data

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    return {
        "astronaut": skimage.data.astronaut(),
        "cameraman": np.repeat(skimage.data.camera()[..., None], 3, axis=2),
        "hopper": hopper,
    }


def _face_geometry(rgb: np.ndarray) -> tuple[np.ndarray, float, np.ndarray, float]:
    """(face centre, face size, upper-lip point, mouth width) from the face mesh (pixels)."""
    with FaceDetector(min_confidence=0.5, max_faces=1) as det:
        faces = det.detect(rgb)
    if not faces:
        raise RuntimeError("demo photo without a detectable face")
    lmk = faces[0].landmarks
    box = faces[0].box
    center = np.array([(box[0] + box[2]) / 2, (box[1] + box[3]) / 2])
    mouth_w = float(np.linalg.norm(lmk[MOUTH_CORNERS[1]] - lmk[MOUTH_CORNERS[0]]))
    return center, faces[0].size, lmk[INNER_LIP_UPPER].astype(np.float64), mouth_w


def _motion(t: np.ndarray, seed: int) -> np.ndarray:
    """Smooth pseudo head motion per frame: (T, 5) [dx, dy (fraction of face), roll (deg), log scale, mouth 0..1]."""
    rng = np.random.default_rng(seed)
    out = np.zeros((len(t), 5))
    amps = (0.06, 0.04, 4.0, 0.04)
    for j, amp in enumerate(amps):
        for _ in range(3):
            f, ph = rng.uniform(0.15, 0.9), rng.uniform(0, 2 * np.pi)
            out[:, j] += amp / 3 * np.sin(2 * np.pi * f * t + ph)
    syllables = np.abs(np.sin(2 * np.pi * 2.2 * t + rng.uniform(0, np.pi)))  # ~4.4 syllables/s
    envelope = 0.5 + 0.5 * np.sin(2 * np.pi * 0.4 * t + rng.uniform(0, np.pi))
    out[:, 4] = syllables * envelope
    return out


def _mouth_warp(img: np.ndarray, lip: np.ndarray, width: float, opening: float) -> np.ndarray:
    """Move the region below the upper lip down by up to ``opening`` x 0.35 mouth widths (Gaussian falloff)."""
    if opening <= 1e-3:
        return img
    h, w = img.shape[:2]
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    dy = ys - lip[1]
    weight = np.exp(-(((xs - lip[0]) / (0.6 * width)) ** 2)) * np.exp(-(((dy - 0.5 * width) / (0.8 * width)) ** 2))
    weight *= dy > 0
    shift = (opening * 0.35 * width) * weight
    return cv2.remap(img, xs, ys - shift.astype(np.float32), cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def render_clip(rgb: np.ndarray, seconds: float, fps: int, size: int, seed: int) -> list[np.ndarray]:
    """Frames (size x size RGB) of a pseudo talking head animated from one photo."""
    center, face, lip, mouth_w = _face_geometry(rgb)
    zoom = 0.38 * size / face  # the face fills ~38% of the frame, like a talking-head shot
    t = np.arange(int(round(seconds * fps))) / fps
    frames = []
    for dx, dy, roll, log_s, mouth in _motion(t, seed):
        src = _mouth_warp(rgb, lip, mouth_w, mouth)
        m = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), float(roll), zoom * float(np.exp(log_s)))
        m[:, 2] += np.array([size / 2, size / 2]) - center + np.array([dx, dy]) * size
        frames.append(cv2.warpAffine(src, m, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT))
    return frames


def write_mp4(frames: list[np.ndarray], path: Path, fps: int, crf: int = 18) -> None:
    """Encode RGB frames as H.264 / yuv420p MP4 with the ffmpeg binary (raw frames on stdin)."""
    h, w = frames[0].shape[:2]
    cmd = [
        "ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}",
        "-r", str(fps), "-i", "pipe:", "-c:v", "libx264", "-preset", "medium", "-crf", str(crf),
        "-pix_fmt", "yuv420p", "-bitexact", "-map_metadata", "-1", str(path),
    ]  # fmt: skip
    proc = subprocess.run(cmd, input=b"".join(np.ascontiguousarray(f).tobytes() for f in frames), capture_output=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ffmpeg failed writing {path}: {proc.stderr.decode(errors='replace')[-500:]}")


def make_demo_corpus(out_dir: str | Path, seconds: float = 2.4, fps: int = 25, size: int = 384) -> Path:
    """Write ``videos/*.mp4``, ``images/*`` and ``manifest.csv`` under ``out_dir``; returns the manifest path."""
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rows = []
    for seed, (name, rgb) in enumerate(sorted(demo_photos().items())):
        clip = out / "videos" / f"{name}.mp4"
        write_mp4(render_clip(rgb, seconds, fps, size, seed), clip, fps)
        rows.append({"path": f"videos/{clip.name}", "identity": name, "split": "train", "dataset": "demo"})
        still = Image.fromarray(rgb)
        if name == "cameraman":
            img_path = out / "images" / f"{name}.png"
            still.convert("L").save(img_path)  # grayscale PNG -> converted by curation
        elif name == "hopper":
            img_path = out / "images" / f"{name}.png"
            alpha = Image.new("L", still.size, 255)
            still.putalpha(alpha)  # RGBA PNG -> composited by curation
            still.save(img_path)
        else:
            img_path = out / "images" / f"{name}.jpg"
            still.save(img_path, quality=95)
        rows.append({"path": f"images/{img_path.name}", "identity": name, "split": "train", "dataset": "demo"})
    manifest = out / "manifest.csv"
    with open(manifest, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "identity", "split", "dataset"])
        writer.writeheader()
        writer.writerows(rows)
    log.info("demo corpus: %d videos, %d images -> %s", len(rows) // 2, len(rows) // 2, out)
    return manifest


def curate_demo(out_dir: str | Path, workers: int = 1, overrides: tuple[str, ...] = ()) -> Path:
    """Make the demo corpus in ``out_dir/raw`` and curate it into ``out_dir/curated`` (default curation config);
    returns the path of ``index.json`` (its shard URLs are relative to that folder)."""
    out = Path(out_dir)
    manifest = make_demo_corpus(out / "raw")
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("data_prep", overrides=[f"workers={workers}", *overrides])
    OmegaConf.update(cfg, "inputs.manifest", str(manifest))
    OmegaConf.update(cfg, "output.dir", str(out / "curated"))
    execute(cfg)
    cfg.mode = "merge"
    execute(cfg)
    return out / "curated" / "index.json"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir")
    ap.add_argument("--seconds", type=float, default=2.4)
    ap.add_argument("--fps", type=int, default=25)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--curate", action="store_true", help="also curate into OUT_DIR/curated (corpus in OUT_DIR/raw)")
    ap.add_argument("--workers", type=int, default=1)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.curate:
        print(curate_demo(args.out_dir, args.workers))
    else:
        print(make_demo_corpus(args.out_dir, args.seconds, args.fps, args.size))


if __name__ == "__main__":
    main()
