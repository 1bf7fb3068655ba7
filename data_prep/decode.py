"""Stage 2 of curation: decode videos (ffmpeg, streamed as raw RGB) and images (PIL) into uint8 RGB frames.

LivePortrait (Guo et al. 2024, Sec. 4.1) trains on video frames and on still portraits treated as one-frame
clips. Videos are streamed frame by frame from an ``ffmpeg`` subprocess at a configured frame rate (default:
the source's) and optionally downscaled so the longer side is at most ``max_side``; memory stays bounded by one
frame. ffmpeg's error lines are counted per input and tied to the output frame they precede: frames decoded after
the first error (concealment garbage from bit rot or a bad copy) are not trusted (``VideoReader``). Images are
converted to RGB whatever their mode (grayscale, CMYK, palette, alpha, 16-bit) — converted, not dropped — and the
conversion is noted for the report.

A manifest row may ask for a time range of a long source video (``inputs.InputItem.start`` / ``end``): the reader then
seeks with ffmpeg's input ``-ss`` (decoding resumes at the keyframe before it and discards up to it, so the first
frame is exact) and stops after the range; frame indices stay those of the whole decoded stream (``frame_range``).
"""

from __future__ import annotations

import logging
import queue
import re
import subprocess
import threading
from collections.abc import Iterator

import ffmpeg
import numpy as np

from data_prep.probe import MediaInfo, Skip, ffmpeg_url

log = logging.getLogger(__name__)

MAX_ERROR_LINES = 50  # error lines kept per input (all are counted)
_ERROR_LEVELS = frozenset({"error", "fatal", "panic"})
_LOG_LINE = re.compile(r"\[(panic|fatal|error|warning|info|verbose|debug|trace)\] ?(.*)$")  # -loglevel level+...
_SHOWINFO_FRAME = re.compile(r"n:\s*(\d+)\s+pts:")
_ADDRESS = re.compile(r" @ 0x[0-9a-f]+")  # "[h264 @ 0x55d0...]": a pointer, different in every run
_LOG_TIMEOUT_S = 60.0  # a frame's showinfo line is written before the frame itself; waiting longer means a bug


def output_size(info: MediaInfo, max_side: int | None) -> tuple[int, int]:
    """Decoded (width, height): the display size, shrunk to ``max_side`` (even numbers) if larger."""
    w, h = info.width, info.height
    if max_side and max(w, h) > max_side:
        s = max_side / max(w, h)
        w, h = max(2, int(round(w * s / 2)) * 2), max(2, int(round(h * s / 2)) * 2)
    return w, h


def frame_range(
    start: float | None, end: float | None, unit: str, source_fps: float, fps: float
) -> tuple[int, int | None]:
    """``[first, stop)`` frame indices of the decoded stream (at ``fps``) for a range in seconds or source frames.

    Seconds map to ``round(t * fps)``; source frame numbers (``unit="frames"``, at ``source_fps``) are used as they
    are when the stream keeps the source's rate, else converted through seconds. ``stop`` is None for "to the end".
    """
    if unit not in ("s", "frames"):
        raise ValueError(f"range unit must be s or frames, got {unit!r}")

    def index(v: float) -> int:
        if unit == "frames" and abs(fps - source_fps) < 1e-6:
            return int(v)
        seconds = v / source_fps if unit == "frames" else v
        return int(round(seconds * fps))

    return (0 if start is None else index(start)), (None if end is None else index(end))


class VideoReader:
    """Iterate the frames of a video as (H, W, 3) uint8 RGB arrays, and count the decoder's errors.

    ffmpeg runs with its log at ``info`` level, each line tagged with its level, and a ``showinfo`` filter as the
    last stage, which logs one line per output frame before the frame is written to the pipe. So every error line
    (``error`` / ``fatal`` / ``panic``: a damaged packet, a concealed macroblock, a lost reference) is known to come
    before a given output frame; warnings (e.g. swscale's "deprecated pixel format") are not errors. The decoder
    runs single-threaded (``-threads 1``), which makes this order, and so the first untrusted frame, deterministic
    (with ffmpeg <= 6.0, whose command line tool is single-threaded; later versions decode in their own thread, where
    an error can only be logged earlier, never later, than its frame). ``fps`` is always applied as a filter (the
    source's rate by default), so the rawvideo output never duplicates or drops frames behind ``showinfo``'s back.

    After iteration, ``frames_read`` is the number of frames decoded, ``error_count`` the number of error lines,
    ``errors`` the first of them, and ``corrupt_from`` the index of the first frame decoded after an error (None
    if there was none). With ``stop_at_error`` (the default) frames from ``corrupt_from`` on are decoded and
    counted but not yielded: their pixels may be concealment garbage. ``check()`` raises
    ``Skip("truncated" | "decode_error" | "unsupported_codec")`` for a file that ended early or failed.

    Args:
        path: video file.
        info: its probe result.
        fps: output frame rate (None: keep the source's).
        max_side: downscale so the longer side is at most this (None: keep).
        max_frames: stop after this many frames (None: all).
        stop_at_error: yield no frame decoded after the first decoder error.
        start_frame: first frame index of the decoded stream to read (``frame_range``; 0: the beginning).
        end_frame: stop before this frame index (None: the end of the video).

    With a range, ``frames_read`` and ``corrupt_from`` count from ``start_frame``: the i-th yielded frame is frame
    ``start_frame + i`` of the stream.
    """

    def __init__(
        self,
        path: str,
        info: MediaInfo,
        fps: float | None = None,
        max_side: int | None = None,
        max_frames: int | None = None,
        stop_at_error: bool = True,
        start_frame: int = 0,
        end_frame: int | None = None,
    ) -> None:
        self.path, self.info = path, info
        self.fps = float(fps) if fps else info.fps
        self.width, self.height = output_size(info, max_side)
        if start_frame < 0 or (end_frame is not None and end_frame <= start_frame):
            raise ValueError(f"frame range [{start_frame}, {end_frame}) of {path} is empty or negative")
        self.start_frame, self.end_frame = start_frame, end_frame
        if end_frame is not None:
            max_frames = min(max_frames or end_frame - start_frame, end_frame - start_frame)
        self.max_frames = max_frames
        self.stop_at_error = stop_at_error
        self.frames_read = 0
        self.error_count = 0
        self.errors: list[str] = []  # the first MAX_ERROR_LINES error lines
        self.corrupt_from: int | None = None
        self.returncode: int | None = None
        self._stopped_early = False
        self._log: queue.SimpleQueue = queue.SimpleQueue()
        self._log_ended = False

    @property
    def expected_frames(self) -> int:
        """Frames the stream should yield (duration x output fps, within the range)."""
        if self.fps == self.info.fps or not self.info.duration:
            total = self.info.num_frames
        else:
            total = int(round(self.info.duration * self.fps))
        stop = total if self.end_frame is None else min(total, self.end_frame)
        return max(0, stop - self.start_frame)

    def _command(self) -> list[str]:
        seek = {}
        if self.start_frame > 0:  # a quarter frame early: the timestamp rounding of -ss cannot skip the first frame
            seek["ss"] = f"{(self.start_frame - 0.25) / self.fps:.6f}"
        video = ffmpeg.input(ffmpeg_url(self.path), threads=1, **seek).video.filter("fps", fps=self.fps)
        if (self.width, self.height) != (self.info.width, self.info.height):
            video = video.filter("scale", self.width, self.height, flags="area")
        video = video.filter("showinfo", checksum=0)
        out = ffmpeg.output(video, "pipe:", format="rawvideo", pix_fmt="rgb24", an=None, sn=None)
        args = ("-nostdin", "-nostats", "-hide_banner", "-loglevel", "repeat+level+info")
        return ffmpeg.compile(out.global_args(*args), overwrite_output=True)

    def __iter__(self) -> Iterator[np.ndarray]:
        nbytes = self.width * self.height * 3
        proc = subprocess.Popen(self._command(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        drain = threading.Thread(target=self._read_log, args=(proc.stderr,), daemon=True)
        drain.start()
        eof = False
        try:
            while self.max_frames is None or self.frames_read < self.max_frames:
                buf = proc.stdout.read(nbytes)
                if len(buf) < nbytes:
                    eof = True
                    break
                index, self.frames_read = self.frames_read, self.frames_read + 1
                self._count_errors_until(index)
                if self.error_count and self.corrupt_from is None:
                    self.corrupt_from = index
                if self.corrupt_from is None or not self.stop_at_error:
                    yield np.frombuffer(buf, np.uint8).reshape(self.height, self.width, 3)
            self._stopped_early = not eof
        finally:
            if not eof:  # frame cap reached or the consumer stopped: do not decode the rest
                self._stopped_early = True
                proc.kill()
            proc.stdout.close()
            self.returncode = proc.wait()
            drain.join()  # ffmpeg has exited: its log ends
            self._count_errors_until(None)  # errors logged after the last frame (flush, trailing garbage)

    def _read_log(self, stream) -> None:
        """Turn ffmpeg's log into events on ``self._log``: ("frame", n), ("error", text); None at its end."""
        for raw in stream:
            line = raw.decode("utf-8", "replace").rstrip()
            m = _LOG_LINE.search(line)
            if m is None:
                continue
            level, text = m.group(1), m.group(2)
            if level in _ERROR_LEVELS:
                self._log.put(("error", _ADDRESS.sub("", line)))
            elif level == "info" and line.startswith("[Parsed_showinfo") and (n := _SHOWINFO_FRAME.match(text)):
                self._log.put(("frame", int(n.group(1))))
        self._log.put(None)

    def _count_errors_until(self, frame: int | None) -> None:
        """Consume log events up to ``showinfo``'s line for output frame ``frame`` (None: to the end of the log)."""
        while not self._log_ended:
            try:
                event = self._log.get(timeout=_LOG_TIMEOUT_S) if frame is not None else self._log.get_nowait()
            except queue.Empty:
                if frame is None:
                    return
                raise RuntimeError(
                    f"ffmpeg wrote frame {frame} of {self.path} but logged no showinfo line for it in "
                    f"{_LOG_TIMEOUT_S} s (unexpected ffmpeg log format?)"
                ) from None
            if event is None:
                self._log_ended = True
            elif event[0] == "error":
                self.error_count += 1
                if len(self.errors) < MAX_ERROR_LINES:
                    self.errors.append(event[1])
            elif frame is not None and event[1] >= frame:
                return

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
