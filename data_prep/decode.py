"""Stage 2 of curation: decode videos (ffmpeg, streamed as raw RGB) and images (PIL) into uint8 RGB frames.

LivePortrait (Guo et al. 2024, Sec. 4.1) trains on video frames and on still portraits treated as one-frame
clips. Videos are streamed frame by frame from an ``ffmpeg`` subprocess at a configured frame rate (default:
the source's) and optionally downscaled so the longer side is at most ``max_side``; memory stays bounded by one
frame. Images are converted to RGB whatever their mode (grayscale, CMYK, palette, alpha, 16-bit) — converted,
not dropped — and the conversion is noted for the report.
"""

from __future__ import annotations

import logging
import subprocess
import threading
from collections.abc import Iterator

import ffmpeg
import numpy as np

from data_prep.probe import MediaInfo, Skip, ffmpeg_url

log = logging.getLogger(__name__)


def output_size(info: MediaInfo, max_side: int | None) -> tuple[int, int]:
    """Decoded (width, height): the display size, shrunk to ``max_side`` (even numbers) if larger."""
    w, h = info.width, info.height
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)
    return w, h


class VideoReader:
    """Iterate the frames of a video as (H, W, 3) uint8 RGB arrays.

    After iteration, ``frames_read`` and ``errors`` (ffmpeg's error lines) describe the decode; ``check()`` raises
    ``Skip("truncated" | "decode_error")`` for a file that ended early or failed.

    Args:
        path: video file.
        info: its probe result.
        fps: output frame rate (None: keep the source's).
        max_side: downscale so the longer side is at most this (None: keep).
        max_frames: stop after this many frames (None: all).
    """

    def __init__(
        self, path: str, info: MediaInfo, fps: float | None = None, max_side: int | None = None, max_frames=None
    ) -> None:
        self.path, self.info = path, info
        self.fps = float(fps) if fps else info.fps
        self.width, self.height = output_size(info, max_side)
        self.max_frames = max_frames
        self.frames_read = 0
        self.errors: list[str] = []
        self.returncode: int | None = None
        self._stopped_early = False

    @property
    def expected_frames(self) -> int:
        """Frames the stream should yield (duration x output fps)."""
        if self.fps == self.info.fps or not self.info.duration:
            return self.info.num_frames
        return int(round(self.info.duration * self.fps))

    def _command(self) -> list[str]:
        stream = ffmpeg.input(ffmpeg_url(self.path))
        video = stream.video
        if self.fps != self.info.fps:
            video = video.filter("fps", fps=self.fps)
        if (self.width, self.height) != (self.info.width, self.info.height):
            video = video.filter("scale", self.width, self.height, flags="area")
        out = ffmpeg.output(video, "pipe:", format="rawvideo", pix_fmt="rgb24", an=None, sn=None)
        return ffmpeg.compile(out.global_args("-nostdin", "-v", "error"), overwrite_output=True)

    def __iter__(self) -> Iterator[np.ndarray]:
        nbytes = self.width * self.height * 3
        proc = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        drain = threading.Thread(target=self._read_stderr, args=(proc,), daemon=True)
        drain.start()
        eof = False
        try:
            while self.max_frames is None or self.frames_read < self.max_frames:
                buf = proc.stdout.read(nbytes)
                if len(buf) < nbytes:
                    eof = True
                    break
                self.frames_read += 1
                yield np.frombuffer(buf, np.uint8).reshape(self.height, self.width, 3)
            self._stopped_early = not eof
        finally:
            if not eof:  # frame cap reached or the consumer stopped: do not decode the rest
                self._stopped_early = True
                proc.kill()
            proc.stdout.close()
            self.returncode = proc.wait()
            drain.join(timeout=5)

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:
            text = line.decode("utf-8", "replace").strip()
            if text and len(self.errors) < 50:
                self.errors.append(text)

    def check(self, min_fraction: float = 0.9) -> None:
        """Raise ``Skip`` if the decode failed or produced fewer than ``min_fraction`` of the expected frames."""
        if self._stopped_early:
            return
        cut_short = any("partial file" in e for e in self.errors)  # the demuxer's mark of a truncated file
        if self.frames_read == 0 and not cut_short:
            detail = self.errors[-1] if self.errors else f"ffmpeg exit code {self.returncode}"
            if any("Decoder" in e and "not found" in e for e in self.errors):
                raise Skip("unsupported_codec", detail)
            raise Skip("decode_error", detail)
        if self.frames_read < min_fraction * self.expected_frames:
            raise Skip(
                "truncated",
                f"decoded {self.frames_read} of {self.expected_frames} frames"
                + (f" ({self.errors[0][:160]})" if self.errors else ""),
            )
        if self.errors:
            log.debug("%s: ffmpeg reported %d error lines but decoded fully", self.path, len(self.errors))


def load_image(path: str, background: tuple[int, int, int] = (255, 255, 255)) -> tuple[np.ndarray, str | None]:
    """Decode an image to (H, W, 3) uint8 RGB.

    EXIF orientation is applied; alpha is composited over ``background``; grayscale, palette, CMYK and 16-bit
    images are converted.

    Returns:
        ``(rgb, converted_from)``: the image and the source mode if it was not 8-bit RGB (else None).

    Raises:
        Skip: ``corrupt_image`` when the file cannot be fully decoded.
    """
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as im:
            im.load()
            im = ImageOps.exif_transpose(im)
            mode = im.mode
            if mode == "RGB":
                return np.asarray(im, dtype=np.uint8).copy(), None
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(im, dtype=np.float64)
                arr = np.clip(arr / (257.0 if arr.max() > 255 else 1.0), 0, 255).astype(np.uint8)
                im = Image.fromarray(arr, "L")
            if mode == "P" and "transparency" in im.info:
                im = im.convert("RGBA")
            if im.mode in ("RGBA", "LA", "PA"):
                rgba = im.convert("RGBA")
                base = Image.new("RGBA", rgba.size, (*background, 255))
                im = Image.alpha_composite(base, rgba)
            rgb = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
            return rgb, mode
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise Skip("corrupt_image", f"{type(e).__name__}: {e}") from None
