"""Image and video I/O of ``lp-animate`` (the inference side of paper Sec. 3; ffmpeg through ffmpeg-python).

Videos are probed with ffprobe, decoded frame by frame as RGB through a pipe (every coded frame once, no rate
conversion, so the frame count equals ffprobe's) and written as H.264 mp4 at the given fps through a pipe to a
temporary file that is renamed into place when complete (never a half-written output).
"""

from __future__ import annotations

import logging
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import ffmpeg
import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp"})


class AnimateError(RuntimeError):
    """Bad input for animation: unreadable media, no face, a checkpoint that does not fit."""


def is_image(path: str | os.PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTS


def read_image(path: str | os.PathLike) -> np.ndarray:
    """(H, W, 3) uint8 RGB (EXIF orientation applied; grayscale / RGBA / CMYK converted)."""
    try:
        with Image.open(path) as im:
            return np.asarray(ImageOps.exif_transpose(im).convert("RGB")).copy()
    except (OSError, ValueError) as e:
        raise AnimateError(f"cannot read image {path}: {e}") from e


@dataclass(frozen=True)
class VideoInfo:
    """What ffprobe says about a video's first video stream (size after rotation)."""

    width: int
    height: int
    fps: str  # exact rate as a fraction string, e.g. "30000/1001"
    num_frames: int


def probe_video(path: str | os.PathLike) -> VideoInfo:
    """ffprobe a video; ``AnimateError`` if it is unreadable or has no video stream."""
    try:
        meta = ffmpeg.probe(str(path))
        if not any(s.get("nb_frames") for s in meta.get("streams", []) if s.get("codec_type") == "video"):
            meta = ffmpeg.probe(str(path), count_frames=None)  # container lacks a frame count: decode to count
    except ffmpeg.Error as e:
        msg = e.stderr.decode(errors="replace").strip().splitlines()[-1:] if e.stderr else []
        raise AnimateError(f"unreadable video {path}: {' '.join(msg) or 'ffprobe failed'}") from e
    streams = [s for s in meta.get("streams", []) if s.get("codec_type") == "video"]
    if not streams:
        raise AnimateError(f"unreadable video {path}: no video stream")
    s = streams[0]
    rate = next((r for r in (s.get("avg_frame_rate"), s.get("r_frame_rate")) if r and not r.startswith("0/")), None)
    if rate is None or Fraction(rate) <= 0:
        raise AnimateError(f"unreadable video {path}: no frame rate")
    n = int(s.get("nb_read_frames") or s.get("nb_frames") or 0)
    if n <= 0:
        raise AnimateError(f"unreadable video {path}: no decodable frames")
    w, h = int(s["width"]), int(s["height"])
    rotation = abs(int(float(s.get("tags", {}).get("rotate", 0) or 0)))
    for side in s.get("side_data_list", []):
        rotation = abs(int(float(side.get("rotation", rotation))))
    if rotation % 180 == 90:  # ffmpeg auto-rotates while decoding
        w, h = h, w
    return VideoInfo(w, h, str(Fraction(rate)), n)


def read_video(path: str | os.PathLike, max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Yield (H, W, 3) uint8 RGB frames (every coded frame once) through an ffmpeg pipe."""
    info = probe_video(path)
    args = {"format": "rawvideo", "pix_fmt": "rgb24", "vsync": "passthrough", "loglevel": "error"}
    if max_frames is not None:
        args["frames:v"] = int(max_frames)
    proc = ffmpeg.input(str(path)).output("pipe:", **args).run_async(pipe_stdout=True, pipe_stderr=True)
    size = info.width * info.height * 3
    try:
        while True:
            buf = proc.stdout.read(size)
            if len(buf) < size:
                break
            yield np.frombuffer(buf, np.uint8).reshape(info.height, info.width, 3)
    finally:
        proc.stdout.close()
        proc.kill()
        proc.wait()


class VideoWriter:
    """Write RGB frames to an H.264 mp4 (yuv420p; odd sizes padded by one pixel) at ``fps``; atomic on close.

    An output path with an image extension writes the single frame as an image instead.

    Args:
        path: output file.
        fps: frame rate (number or fraction string).
        crf: x264 quality (lower = better).
    """

    def __init__(self, path: str | os.PathLike, fps: str | float, crf: int = 18):
        self.path = Path(path)
        self.fps, self.crf = str(fps), crf
        self.tmp = self.path.with_name(f".{self.path.stem}.tmp{self.path.suffix}")
        self.proc: subprocess.Popen | None = None
        self.size: tuple[int, int] | None = None
        self.count = 0

    def __enter__(self) -> VideoWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return self

    def write(self, frame: np.ndarray) -> None:
        if is_image(self.path):
            if self.count:
                raise AnimateError(f"{self.path} is an image path but more than one frame was produced; use .mp4")
            Image.fromarray(frame).save(self.tmp)
            self.count = 1
            return
        h, w = frame.shape[:2]
        if self.proc is None:
            self.size = (w, h)
            pad = f"pad=ceil(iw/2)*2:ceil(ih/2)*2"  # noqa: F541 - ffmpeg expression
            self.proc = (
                ffmpeg.input("pipe:", format="rawvideo", pix_fmt="rgb24", s=f"{w}x{h}", framerate=self.fps)
                .output(
                    str(self.tmp),
                    vf=pad,
                    vcodec="libx264",
                    pix_fmt="yuv420p",
                    crf=self.crf,
                    r=self.fps,
                    movflags="+faststart",
                    format="mp4",
                    loglevel="error",
                )  # fmt: skip
                .overwrite_output()
                .run_async(pipe_stdin=True, pipe_stderr=True, quiet=True)
            )
        elif (w, h) != self.size:
            raise AnimateError(f"frame {self.count} is {w}x{h}, earlier frames were {self.size[0]}x{self.size[1]}")
        self.proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:  # noqa: ANN001
        ok = exc_type is None and self.count > 0
        if self.proc is not None:
            self.proc.stdin.close()
            err = self.proc.stderr.read().decode(errors="replace")
            if self.proc.wait() != 0 and ok:
                raise AnimateError(f"ffmpeg failed writing {self.path}: {err.strip().splitlines()[-1:]}")
        if ok:
            os.replace(self.tmp, self.path)
        elif self.tmp.exists():
            self.tmp.unlink()


def demo_inputs(out_dir: str | os.PathLike, frames: int = 50, fps: int = 25) -> tuple[Path, Path]:
    """Offline demo inputs for ``lp-animate``: ``source.png`` (scikit-image's bundled astronaut portrait) and
    ``driving.mp4``, a pseudo clip of its mirror image swaying (rotation ±8°, shift, zoom) — no data needed."""
    import cv2
    from skimage import data

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    face = data.astronaut()  # (512, 512, 3) uint8 RGB
    source = out_dir / "source.png"
    Image.fromarray(face).save(source)
    mirror = np.ascontiguousarray(face[:, ::-1])
    driving = out_dir / "driving.mp4"
    with VideoWriter(driving, fps) as writer:
        for t in np.linspace(0.0, 2 * np.pi, frames, endpoint=False):
            m = cv2.getRotationMatrix2D((256.0, 200.0), 8.0 * np.sin(t), 1.0 + 0.05 * np.sin(2 * t))
            m[:, 2] += (12.0 * np.sin(t), 6.0 * np.cos(t))
            writer.write(cv2.warpAffine(mirror, m, (512, 512), borderMode=cv2.BORDER_REFLECT))
    return source, driving


if __name__ == "__main__":
    import sys

    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m lp_train.animate_io OUT_DIR   (writes source.png + driving.mp4 for a demo)")
    print(*demo_inputs(sys.argv[1]))
