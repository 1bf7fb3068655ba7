"""Stage 1 of curation: probe an input (ffprobe via ffmpeg-python for videos, PIL for images).

LivePortrait (Guo et al. 2024, Sec. 4.1) curates raw public video corpora; raw corpora contain broken files.
Probing turns each into ``MediaInfo`` or a ``Skip`` with a machine-readable reason that ends up in the curation
report, so one bad file never stops a job. Reasons: ``missing``, ``dangling_link``, ``symlink_loop``,
``not_a_file``, ``unreadable``, ``empty_file``, ``not_media``, ``truncated``, ``audio_only``, ``no_video_stream``,
``unsupported_codec``, ``probe_failed``, ``image_too_small``, ``corrupt_image``.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from fractions import Fraction

import ffmpeg

log = logging.getLogger(__name__)


class Skip(Exception):
    """An input (or part of it) that curation drops, with a reason for the report."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass
class MediaInfo:
    """What curation needs to know about an input before decoding it."""

    kind: str  # "video" | "image"
    width: int  # display width (after rotation metadata)
    height: int
    fps: float = 0.0  # average frame rate (videos)
    duration: float = 0.0  # seconds
    num_frames: int = 1  # container's frame count, or duration * fps
    codec: str = ""
    rotation: int = 0
    notes: dict = field(default_factory=dict)


def ffmpeg_url(path: str) -> str:
    """``file:`` URL so that ffmpeg never parses ``:`` / leading ``-`` in names as protocols or options."""
    return "file:" + os.path.abspath(path)


def _rate(text: str | None) -> float:
    try:
        r = Fraction(text or "0/1")
        return float(r) if r.denominator else 0.0
    except (ValueError, ZeroDivisionError):
        return 0.0


def _rotation(stream: dict) -> int:
    rot = stream.get("tags", {}).get("rotate")
    for sd in stream.get("side_data_list", []) or []:
        if "rotation" in sd:
            rot = sd["rotation"]
    try:
        return int(float(rot or 0)) % 360
    except ValueError:
        return 0


def _classify_probe_error(path: str, stderr: str) -> Skip:
    with open(path, "rb") as f:
        head = f.read(12)
    looks_mp4 = head[4:8] in (b"ftyp", b"mdat", b"moov", b"free", b"wide")
    if "moov atom not found" in stderr and looks_mp4:
        return Skip("truncated", "MP4 without index (moov atom missing: file cut short)")
    if "Invalid data found" in stderr or "moov atom not found" in stderr:
        return Skip("not_media", f"ffprobe cannot read it ({stderr.strip().splitlines()[-1][:200]})")
    return Skip("probe_failed", stderr.strip()[-300:])


def file_stat(path: str) -> os.stat_result:
    """``os.stat`` of a path (links followed), or ``Skip``: ``missing``, ``dangling_link``, ``symlink_loop``,
    ``unreadable`` (e.g. a folder on the way that may not be entered)."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        if os.path.islink(path):
            raise Skip("dangling_link", f"symlink to {os.readlink(path)}, which does not exist") from None
        raise Skip("missing", "does not exist") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise Skip("symlink_loop", "a chain of symlinks that never ends in a file") from None
        raise Skip("unreadable", f"cannot stat it: {e.strerror}") from None


def _check_file(path: str) -> None:
    st = file_stat(path)
    if not stat.S_ISREG(st.st_mode):
        raise Skip("not_a_file", "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file")
    if st.st_size == 0:
        raise Skip("empty_file", "zero bytes")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:  # e.g. mode 000, or a file another user owns: not a corrupt file
        raise Skip("unreadable", f"cannot open it: {e.strerror}") from None


def probe_video(path: str, allowed_codecs: list[str] | None = None) -> MediaInfo:
    """ffprobe a video file; raise ``Skip`` for files that cannot be curated."""
    _check_file(path)
    try:
        info = ffmpeg.probe(ffmpeg_url(path))
    except ffmpeg.Error as e:
        raise _classify_probe_error(path, e.stderr.decode("utf-8", "replace")) from None
    streams = info.get("streams", [])
    video = [s for s in streams if s.get("codec_type") == "video" and not s.get("disposition", {}).get("attached_pic")]
    if not video:
        if any(s.get("codec_type") == "audio" for s in streams):
            raise Skip("audio_only", "no video stream, only audio")
        raise Skip("no_video_stream", f"streams: {[s.get('codec_type') for s in streams]}")
    v = video[0]
    codec = v.get("codec_name") or ""
    if not codec or codec == "none":
        raise Skip("unsupported_codec", f"no decoder for codec tag {v.get('codec_tag_string', '?')!r}")
    if allowed_codecs and codec not in allowed_codecs:
        raise Skip("unsupported_codec", f"codec {codec!r} not in allowed_codecs {list(allowed_codecs)}")
    width, height = int(v.get("width") or 0), int(v.get("height") or 0)
    if width <= 0 or height <= 0:
        raise Skip("probe_failed", f"video stream without size ({codec})")
    rotation = _rotation(v)
    if rotation in (90, 270):
        width, height = height, width
    fps = _rate(v.get("avg_frame_rate")) or _rate(v.get("r_frame_rate"))
    duration = float(v.get("duration") or info.get("format", {}).get("duration") or 0.0)
    nb = int(v.get("nb_frames") or 0) or int(round(duration * fps))
    if fps <= 0 or nb <= 0:
        raise Skip("probe_failed", f"no frame rate / frame count (fps={fps}, frames={nb})")
    return MediaInfo("video", width, height, fps, duration, nb, codec, rotation)


def probe_image(path: str, min_side: int = 32) -> MediaInfo:
    """Read an image header with PIL; raise ``Skip`` for unreadable or tiny images."""
    from PIL import Image, UnidentifiedImageError

    _check_file(path)
    try:
        with Image.open(path) as im:
            width, height, mode, fmt = im.width, im.height, im.mode, im.format
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise Skip("corrupt_image", f"{type(e).__name__}: {e}") from None
    if min(width, height) < min_side:
        raise Skip("image_too_small", f"{width}x{height} < {min_side} px")
    return MediaInfo("image", width, height, codec=(fmt or "").lower(), notes={"mode": mode})


def probe(path: str, kind: str, allowed_codecs: list[str] | None = None, min_image_side: int = 32) -> MediaInfo:
    """Probe a video or image input (``kind`` from the file extension)."""
    if kind == "image":
        return probe_image(path, min_image_side)
    return probe_video(path, allowed_codecs)
