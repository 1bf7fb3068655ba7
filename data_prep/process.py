"""Curation of one input: probe -> decode -> detect + track -> smoothed crop -> filters -> chunked samples.

This is LivePortrait's (Guo et al. 2024, Sec. 4.1) per-video curation: one tracked face per clip, the LivePortrait
crop stored at 512², quality filters, clips of at most ``MAX_CHUNK_FRAMES`` per sample. ``process_input`` never
raises for a bad input: it returns a record with a ``status`` (``ok`` | ``empty`` | ``skipped`` | ``error``), a
``reason`` (also set on an ``ok`` input that lost frames to ``decode_errors``) and the drop counts by reason, and
streams its samples into a temporary pickle file that the writer
appends to the shards in input order (``data_prep.writer``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import time
from collections import Counter
from dataclasses import dataclass, field

import cv2
import numpy as np

from data_prep.clips import Clip, ClipBuilder, CropConfig, SceneCutDetector, chunk_bounds
from data_prep.decode import VideoReader, frame_range, load_image
from data_prep.filters import FilterConfig, HumanFaceCheck, IdentityEncoder, frame_check, identity_consistent
from data_prep.inputs import InputItem
from data_prep.probe import MediaInfo, Skip, probe
from lp_train.data.shard_format import MAX_CHUNK_FRAMES, SampleMeta, encode_sample_jpegs, sample_key
from lp_train.face.detect import Face, FaceDetector, box_iou

log = logging.getLogger(__name__)


@dataclass
class ProcessConfig:
    """Everything that determines the samples of an input (hashed into the journal header)."""

    decode: dict = field(default_factory=dict)  # fps, max_side, max_frames, max_clip_seconds, scene_cut, ...
    detector: dict = field(default_factory=dict)  # FaceDetector kwargs
    crop: CropConfig = field(default_factory=CropConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    chunk_frames: int = MAX_CHUNK_FRAMES


_DETECTORS: dict[str, FaceDetector] = {}  # per worker process
_DLIB: dict[type, object] = {}  # per worker process: dlib models by class (None: dlib not installed)


def _detector(kind: str, kwargs: dict) -> FaceDetector:
    if kind not in _DETECTORS:
        _DETECTORS[kind] = FaceDetector(video=kind == "video", **kwargs)
    return _DETECTORS[kind]


def _dlib_model(cls: type, name: str):
    """This process's ``IdentityEncoder`` / ``HumanFaceCheck`` (created once), or None without dlib."""
    if cls not in _DLIB:
        _DLIB[cls] = cls() if cls.available() else None
        if _DLIB[cls] is None:
            log.warning("%s filter off: install dlib-bin and face_recognition_models to enable it", name)
    return _DLIB[cls]


def _identity_encoder(cfg: FilterConfig) -> IdentityEncoder | None:
    return _dlib_model(IdentityEncoder, "identity") if cfg.identity else None


def _human_check(cfg: FilterConfig, dataset: str) -> HumanFaceCheck | None:
    if not cfg.human_face or dataset in cfg.human_face_except:
        return None
    return _dlib_model(HumanFaceCheck, "human_face")


def close_detectors() -> None:
    """Release this process's mediapipe graphs."""
    for det in _DETECTORS.values():
        det.close()
    _DETECTORS.clear()


class _Result:
    """Counters of one input, turned into its journal record."""

    def __init__(self, item: InputItem) -> None:
        self.item = item
        self.frames = 0
        self.drop_frames: Counter = Counter()
        self.drop_clips: Counter = Counter()
        self.clip_lengths: list[int] = []
        self.face_sizes: list[float] = []
        self.clips_total = 0
        self.samples = 0
        self.notes: dict = {}
        self.timings: Counter = Counter()
        self.cut: tuple[str, str] | None = None  # (reason, detail) when part of a kept input was dropped

    def discard(self, reason: str) -> None:
        """The whole input is dropped: every decoded frame counts as dropped for ``reason``."""
        self.drop_frames = Counter({reason: self.frames} if self.frames else {})
        self.drop_clips = Counter({reason: self.clips_total} if self.clips_total else {})
        self.clip_lengths, self.face_sizes, self.samples = [], [], 0

    def record(self, status: str, reason: str | None = None, detail: str = "") -> dict:
        it = self.item
        return {
            "uid": it.uid, "path": it.path, "range": it.range_tag or None, "clip_id": it.clip_id or None,
            "kind": it.kind, "identity": it.identity, "dataset": it.dataset, "split": it.split, "status": status,
            "reason": reason, "detail": detail[:500],
            "frames_decoded": self.frames, "frames_kept": int(sum(self.clip_lengths)),
            "clips_total": self.clips_total, "clips_kept": len(self.clip_lengths), "samples": self.samples,
            "drop_frames": dict(self.drop_frames), "drop_clips": dict(self.drop_clips),
            "clip_lengths": self.clip_lengths, "face_sizes": [round(s, 1) for s in self.face_sizes],
            "notes": self.notes, "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }  # fmt: skip


def process_input(item: InputItem, cfg: ProcessConfig, work_dir: str) -> tuple[dict, str | None]:
    """Curate one input.

    Returns:
        ``(record, samples_path)``: the journal record and a pickle stream of its samples (None when it has none).
    """
    res = _Result(item)
    path = os.path.join(work_dir, f"{item.uid}.pkl")
    t0 = time.perf_counter()
    try:
        if item.skip is not None:  # found while listing the inputs (a dangling link, a loop, a missing path, ...)
            raise Skip(item.skip, item.skip_detail)
        if item.duplicate_of is not None:
            raise Skip("duplicate", f"same input as {item.duplicate_of}")
        info = probe(item.path, item.kind, cfg.decode.get("allowed_codecs"), cfg.decode.get("min_image_side", 32))
        res.timings["probe"] += time.perf_counter() - t0
        with open(path, "wb") as out:
            if info.kind == "image":
                _process_image(item, info, cfg, res, out)
            else:
                _process_video(item, info, cfg, res, out)
    except Skip as s:
        _remove(path)
        res.discard(s.reason)
        return _finish(res, t0, "skipped", s.reason, s.detail), None
    except Exception as e:  # noqa: BLE001 - one bad input must never stop the job
        log.exception("internal error on %s", item.path)
        _remove(path)
        res.discard("internal_error")
        return _finish(res, t0, "error", "internal_error", f"{type(e).__name__}: {e}"), None
    if res.samples == 0:
        _remove(path)
        reason = res.drop_frames.most_common(1)[0][0] if res.drop_frames else "no_frames"
        detail = res.cut[1] if res.cut and res.cut[0] == reason else "no clip passed the filters"
        return _finish(res, t0, "empty", reason, detail), None
    return _finish(res, t0, "ok", *(res.cut or (None, ""))), path


def crash_record(item: InputItem) -> tuple[dict, None]:
    """The result of an input whose worker process died on it (twice): recorded as ``error: worker_crashed``."""
    return _Result(item).record("error", "worker_crashed", "the worker process died (segfault / out of memory)"), None


def _finish(res: _Result, t0: float, status: str, reason: str | None = None, detail: str = "") -> dict:
    res.timings["total"] = time.perf_counter() - t0
    return res.record(status, reason, detail)


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


def _pick(faces: list[Face], prev_box: np.ndarray | None) -> Face | None:
    """The tracked face: the landmarked face overlapping the previous box most, else the largest."""
    cands = [f for f in faces if f.landmarks is not None]
    if not cands:
        return None
    if prev_box is not None:
        best = max(cands, key=lambda f: box_iou(f.box, prev_box))
        if box_iou(best.box, prev_box) > 0.3:
            return best
    return cands[0]


def _process_video(item: InputItem, info: MediaInfo, cfg: ProcessConfig, res: _Result, out) -> None:
    dc, fc = cfg.decode, cfg.filters
    on_error = dc.get("on_error", "cut")
    first, stop = _frame_range(item, info, float(dc.get("fps") or info.fps))
    reader = VideoReader(
        item.path, info, dc.get("fps"), dc.get("max_side"), dc.get("max_frames"), on_error != "keep", first, stop
    )
    det = _detector("video", cfg.detector)
    det.reset()
    ident = _identity_encoder(fc)
    scale = (reader.width / info.width, reader.height / info.height)
    builder = ClipBuilder(cfg.crop, reader.fps, scale, ident, round(fc.identity_every_s * reader.fps))
    scene = SceneCutDetector(dc.get("scene_threshold", 30.0)) if dc.get("scene_cut") else None
    max_len = max(1, math.ceil(dc.get("max_clip_seconds", 30.0) * reader.fps) - 1)  # clips shorter than the limit
    min_size = fc.min_face_size * scale[0]
    prev_box = prev_lmk = None
    frames = iter(reader)
    while True:
        t = time.perf_counter()
        frame = next(frames, None)
        res.timings["decode"] += time.perf_counter() - t
        if frame is None:
            break
        i, res.frames = res.frames, res.frames + 1
        if scene is not None and scene(frame):
            _finish_clip(builder.end(), item, info, reader.fps, cfg, res, out)
            det.reset()
            prev_box = prev_lmk = None
        t = time.perf_counter()
        faces = det.detect_all(frame)
        res.timings["detect"] += time.perf_counter() - t
        face = _pick(faces, prev_box)
        reason = frame_check(faces, face, prev_lmk, fc, min_size)
        prev_box = face.box if face is not None else None
        if reason is not None:
            res.drop_frames[reason] += 1
            _finish_clip(builder.end(), item, info, reader.fps, cfg, res, out)
            prev_lmk = face.landmarks if reason == "landmark_jump" else None
            continue
        if len(builder) >= max_len:
            _finish_clip(builder.end(), item, info, reader.fps, cfg, res, out)
        builder.add(first + i, frame, face)  # frame index in the whole decoded stream
        prev_lmk = face.landmarks
    _finish_clip(builder.end(), item, info, reader.fps, cfg, res, out)
    res.timings.update({k: res.timings[k] + v for k, v in builder.timings.items()})
    reader.check(dc.get("min_decoded_fraction", 0.9))
    _decode_errors(reader, on_error, res)
    res.notes["decode_fps"] = reader.fps
    res.notes["decode_size"] = [reader.width, reader.height]
    if item.range_tag:
        res.notes["range"] = {"clip_id": item.clip_id, "first_frame": first, "stop_frame": first + reader.frames_read}


def _frame_range(item: InputItem, info: MediaInfo, fps: float) -> tuple[int, int | None]:
    """The input's ``[first, stop)`` frames of the decoded stream; ``Skip("bad_range")`` if it lies outside."""
    first, stop = frame_range(item.start, item.end, item.unit, info.fps, fps)
    total = int(round(info.duration * fps)) if info.duration else info.num_frames
    if total and first >= total:
        raise Skip("bad_range", f"range {item.range_tag} starts at frame {first}; the video has {total} at {fps:g} fps")
    if stop is not None and stop <= first:
        raise Skip("bad_range", f"range {item.range_tag} holds no frame at {fps:g} fps")
    return first, stop


def _decode_errors(reader: VideoReader, on_error: str, res: _Result) -> None:
    """Record the decoder's errors; frames decoded after the first one are dropped (``cut``) or the input is."""
    if not reader.error_count:
        return
    res.notes["decode_errors"] = reader.error_count
    res.notes["decode_error_lines"] = reader.errors[:3]
    first = reader.errors[0][:200]
    if reader.corrupt_from is None:  # errors only after the last frame (e.g. trailing garbage): no frame affected
        return
    res.notes["corrupt_from_frame"] = reader.corrupt_from
    res.frames = reader.frames_read
    untrusted = reader.frames_read - reader.corrupt_from
    detail = (
        f"{reader.error_count} decoder errors; frames {reader.corrupt_from}-{reader.frames_read - 1} "
        f"({untrusted} of {reader.frames_read}) decoded after the first one; first: {first}"
    )
    if on_error == "drop":
        raise Skip("decode_errors", detail)
    if on_error == "cut":
        res.drop_frames["decode_errors"] += untrusted
        res.cut = ("decode_errors", detail)


def _process_image(item: InputItem, info: MediaInfo, cfg: ProcessConfig, res: _Result, out) -> None:
    if item.start is not None or item.end is not None:
        raise Skip("bad_range", f"a time range ({item.range_tag}) on an image")
    t = time.perf_counter()
    rgb, converted = load_image(item.path, tuple(cfg.decode.get("alpha_background", (255, 255, 255))))
    res.timings["decode"] += time.perf_counter() - t
    if converted:
        res.notes["converted_from"] = converted
    res.frames = 1
    info.width, info.height = rgb.shape[1], rgb.shape[0]  # after EXIF rotation
    det = _detector("image", cfg.detector)
    t = time.perf_counter()
    faces = det.detect_all(rgb)
    res.timings["detect"] += time.perf_counter() - t
    face = _pick(faces, None)
    reason = frame_check(faces, face, None, cfg.filters, cfg.filters.min_face_size_image)
    if reason is not None:
        res.drop_frames[reason] += 1
        res.drop_clips[reason] += 1
        res.clips_total = 1
        return
    builder = ClipBuilder(cfg.crop, 0.0)
    builder.add(0, rgb, face)
    _finish_clip(builder.end(), item, info, 0.0, cfg, res, out)
    res.timings.update({k: res.timings[k] + v for k, v in builder.timings.items()})


def _clip_drop_reason(clip: Clip, item: InputItem, fps: float, cfg: ProcessConfig, res: _Result) -> str | None:
    fc = cfg.filters
    n = len(clip.frames)
    if fps > 0 and n < max(fc.min_clip_frames, math.ceil(fc.min_clip_seconds * fps)):
        return "too_short"
    if float(np.median([f.sharpness for f in clip.frames])) < fc.min_sharpness:
        return "blurry"
    if not _is_human(clip, item, fps, fc, res):
        return "not_human"
    if clip.descriptors and not identity_consistent(clip.descriptors, fc.identity_threshold)[0]:
        return "identity_change"
    return None


def _is_human(clip: Clip, item: InputItem, fps: float, fc: FilterConfig, res: _Result) -> bool:
    """dlib confirms the face on at least half of the clip's checked frames (its first and one per
    ``human_every_s``), or the check is off for this input."""
    human = _human_check(fc, item.dataset)
    if human is None:
        return True
    t = time.perf_counter()
    every = max(1, round(fc.human_every_s * fps))  # images (fps 0): their one frame
    votes = [human(_rgb(f.jpeg), f.landmarks) for f in clip.frames[::every]]
    res.timings["human_face"] += time.perf_counter() - t
    return 2 * sum(votes) >= len(votes)


def _rgb(jpeg: bytes) -> np.ndarray:
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def _finish_clip(clip: Clip | None, item, info: MediaInfo, fps: float, cfg: ProcessConfig, res: _Result, out) -> None:
    """Filter a finished clip; write its chunks as samples to ``out``."""
    if clip is None:
        return
    res.clips_total += 1
    reason = _clip_drop_reason(clip, item, fps, cfg, res)
    if reason is not None:
        res.drop_clips[reason] += 1
        res.drop_frames[reason] += len(clip.frames)
        return
    res.clip_lengths.append(len(clip.frames))
    res.face_sizes.append(float(np.median([f.face_size for f in clip.frames])))
    t = time.perf_counter()
    for chunk, (a, b) in enumerate(chunk_bounds(len(clip.frames), cfg.chunk_frames)):
        frames = clip.frames[a:b]
        meta = SampleMeta(
            key=sample_key(item.id, clip.segment, chunk),
            kind=info.kind, source_path=item.path, identity=item.identity, dataset=item.dataset, split=item.split,
            clip_index=clip.segment, chunk_index=chunk, num_frames=len(frames), fps=float(fps),
            frame_indices=[f.index for f in frames], orig_size=[info.width, info.height],
            crop_affines=[np.round(f.affine, 6).tolist() for f in frames],
            face_confidence=[round(f.score, 5) for f in frames],
            face_size=round(float(np.median([f.face_size for f in frames])), 2),
            sharpness=round(float(np.median([f.sharpness for f in frames])), 3),
            extra={"source_fps": info.fps, "codec": info.codec, "landmarks": "mediapipe-face-mesh-478",
                   **_manifest_meta(item),
                   "crop": {"scale": cfg.crop.scale, "vx_ratio": cfg.crop.vx_ratio, "vy_ratio": cfg.crop.vy_ratio,
                            "smooth_seconds": cfg.crop.smooth_seconds}},
        )  # fmt: skip
        lmk = np.stack([f.landmarks for f in frames])  # (T, 478, 2) in [0, 1]
        pickle.dump(encode_sample_jpegs(meta, [f.jpeg for f in frames], lmk), out, protocol=pickle.HIGHEST_PROTOCOL)
        res.samples += 1
    res.timings["serialize"] += time.perf_counter() - t


def _manifest_meta(item: InputItem) -> dict:
    """The manifest's clip id, time range and attributes, for the sample's ``extra`` (empty for a plain file)."""
    meta: dict = {"clip_id": item.clip_id} if item.clip_id else {}
    if item.attributes:
        meta["attributes"] = json.loads(item.attributes)
    if item.range_tag:
        meta["range"] = {"start": item.start, "end": item.end, "unit": item.unit}
    return meta


def read_samples(path: str):
    """Iterate the samples of a temporary pickle stream written by ``process_input``."""
    with open(path, "rb") as f:
        while True:
            try:
                yield pickle.load(f)
            except EOFError:
                return
