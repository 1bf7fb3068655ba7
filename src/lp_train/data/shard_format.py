"""The shard format: the contract between curation (``data_prep``) and the training loader (``lp_train.data``).

One WebDataset sample = one chunk (<= ``MAX_CHUNK_FRAMES`` frames) of one face clip, or one still image
(a one-frame clip). Shards are plain POSIX tar files named ``{prefix}-{index:06d}.tar``; inside, the members of
a sample share the key prefix (no dots in the key)::

    {key}.0000.jpg ... {key}.NNNN.jpg   RGB frames, LivePortrait crop, CROP_SIZE x CROP_SIZE, JPEG
    {key}.landmarks.npy                 float32 (T, NUM_LANDMARKS, 2): mediapipe face-mesh points (478, with iris),
                                        x right / y down, normalised to [0, 1] in crop coordinates
    {key}.json                          metadata (``SampleMeta``), UTF-8

Keys are ``{source_id}_{clip:03d}_{chunk:03d}``; ``source_id`` is a stable hash of the input's content-independent
identity (its resolved path) so reruns produce the same keys. Readable with ``tar -xf`` and with ``webdataset``
alone (``wds.WebDataset(url).decode("rgb")``).
"""

from __future__ import annotations

import hashlib
import io
import json
from dataclasses import asdict, dataclass, field

import numpy as np
from PIL import Image

from lp_train.face.landmarks import NUM_LANDMARKS

FORMAT_VERSION = "lp-train-shard/1"
CROP_SIZE = 512
MAX_CHUNK_FRAMES = 64
SHARD_PATTERN = "{prefix}-{index:06d}.tar"


@dataclass
class SampleMeta:
    """The ``.json`` member of a sample. Lists are per frame (length T)."""

    key: str
    kind: str  # "video" or "image"
    source_path: str
    identity: str
    dataset: str
    split: str
    clip_index: int
    chunk_index: int
    num_frames: int
    fps: float
    frame_indices: list[int]  # index of each frame in the decoded source (at the decode fps)
    orig_size: list[int]  # [width, height] of the source
    crop_affines: list[list[list[float]]]  # per frame 2x3 affine: source pixels -> crop pixels (CROP_SIZE²)
    face_confidence: list[float]
    face_size: float  # median side of the face box in source pixels
    sharpness: float  # median variance of the Laplacian of the crop
    format: str = FORMAT_VERSION
    extra: dict = field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode("utf-8")

    @classmethod
    def from_json(cls, data: bytes | str | dict) -> SampleMeta:
        obj = data if isinstance(data, dict) else json.loads(data)
        if obj.get("format") != FORMAT_VERSION:
            raise ValueError(f"sample metadata format {obj.get('format')!r}, expected {FORMAT_VERSION!r}")
        return cls(**obj)


def source_id(path: str) -> str:
    """Stable 16-hex-digit id of an input path (keys stay the same across reruns and machines)."""
    return hashlib.sha1(path.encode("utf-8")).hexdigest()[:16]


def sample_key(src_id: str, clip_index: int, chunk_index: int) -> str:
    return f"{src_id}_{clip_index:03d}_{chunk_index:03d}"


def frame_member(i: int) -> str:
    """Extension of frame i inside a sample (``0000.jpg``)."""
    return f"{i:04d}.jpg"


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """(H, W, 3) uint8 RGB -> JPEG bytes."""
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def encode_npy(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array, allow_pickle=False)
    return buf.getvalue()


def decode_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def encode_sample(meta: SampleMeta, frames: list[np.ndarray], landmarks: np.ndarray, quality: int = 95) -> dict:
    """A WebDataset sample dict (``__key__`` + members) ready for ``wds.TarWriter.write``."""
    if len(frames) != meta.num_frames or landmarks.shape != (meta.num_frames, NUM_LANDMARKS, 2):
        raise ValueError(
            f"sample {meta.key}: {len(frames)} frames and landmarks {landmarks.shape} for num_frames={meta.num_frames}"
        )
    sample = {"__key__": meta.key, "json": meta.to_json(), "landmarks.npy": encode_npy(landmarks.astype(np.float32))}
    for i, frame in enumerate(frames):
        sample[frame_member(i)] = encode_jpeg(frame, quality)
    return sample


def frame_names(sample: dict) -> list[str]:
    """The frame members of a raw sample, in order."""
    return sorted(k for k in sample if k.endswith(".jpg") and k[:4].isdigit())


def encode_sample_jpegs(meta: SampleMeta, jpegs: list[bytes], landmarks: np.ndarray) -> dict:
    """Like ``encode_sample`` for frames that are already JPEG-encoded (curation encodes each crop once)."""
    if len(jpegs) != meta.num_frames or landmarks.shape != (meta.num_frames, NUM_LANDMARKS, 2):
        raise ValueError(
            f"sample {meta.key}: {len(jpegs)} frames and landmarks {landmarks.shape} for num_frames={meta.num_frames}"
        )
    sample = {"__key__": meta.key, "json": meta.to_json(), "landmarks.npy": encode_npy(landmarks.astype(np.float32))}
    for i, jpeg in enumerate(jpegs):
        sample[frame_member(i)] = jpeg
    return sample
