"""Clip assembly of curation: scene cuts, temporally smoothed LivePortrait crops, clip chunking.

LivePortrait (Guo et al. 2024, Sec. 4.1) trains on clips of one person cropped with its face crop
(``lp_train.face.crop``: square, x2.3, up 0.125, roll removed). A clip is a run of consecutive usable frames of
one tracked face; it ends at a dropped frame, a scene cut, or ``max_clip_seconds``. Crop parameters are smoothed
over the clip with a Gaussian
(sigma ``smooth_seconds``) so that the crop does not jitter. The smoothing is streamed: a frame is cropped as soon
as the parameters ``4 sigma`` frames ahead are known (or the clip ended), so only that many raw frames are held in
memory; each crop is JPEG-encoded at once. The result equals ``lp_train.face.crop.smooth_crop_params`` on the
whole clip.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import cv2
import numpy as np

from data_prep.filters import IdentityEncoder, sharpness
from lp_train.data.shard_format import encode_jpeg
from lp_train.face.crop import crop_affine, crop_params_from_landmarks, transform_points, warp_crop
from lp_train.face.detect import Face


@dataclass
class CropConfig:
    """Crop and encoding settings (``conf/data_prep.yaml: crop``, ``output.jpeg_quality``)."""

    size: int = 512
    scale: float = 2.3
    vx_ratio: float = 0.0
    vy_ratio: float = -0.125
    smooth_seconds: float = 0.1  # Gaussian sigma of the crop smoothing, seconds (0: off)
    jpeg_quality: int = 95

    @classmethod
    def from_dict(cls, d: dict) -> CropConfig:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


@dataclass
class ClipFrame:
    """One cropped frame of a clip."""

    index: int  # frame index in the decoded stream
    jpeg: bytes
    landmarks: np.ndarray  # (478, 2) float32 in [0, 1] crop coordinates
    affine: np.ndarray  # (2, 3) source pixels -> crop pixels
    score: float
    face_size: float
    sharpness: float


@dataclass
class Clip:
    """A finished run of cropped frames (``segment`` counts all clips of the input, kept or not)."""

    segment: int
    frames: list[ClipFrame]
    descriptors: list[np.ndarray] = field(default_factory=list)


class SceneCutDetector:
    """Hard cuts: mean absolute difference of 64x36 grayscale thumbnails of consecutive frames > threshold."""

    def __init__(self, threshold: float = 30.0) -> None:
        self.threshold = threshold
        self._prev: np.ndarray | None = None

    def __call__(self, rgb: np.ndarray) -> bool:
        thumb = cv2.resize(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), (64, 36), interpolation=cv2.INTER_AREA)
        thumb = thumb.astype(np.float32)
        cut = self._prev is not None and float(np.abs(thumb - self._prev).mean()) > self.threshold
        self._prev = thumb
        return cut


class ClipBuilder:
    """Accumulates tracked frames into clips with streamed, smoothed crops.

    Args:
        cfg: crop settings.
        fps: frame rate of the decoded stream (for the smoothing sigma); 0 for images (no smoothing).
        source_scale: (sx, sy) decoded pixels per source pixel (crop affines are stored for source pixels).
        identity: encoder for identity descriptors, or None.
        identity_every: compute a descriptor every this many frames of a clip (and on its first frame).
    """

    def __init__(
        self,
        cfg: CropConfig,
        fps: float,
        source_scale: tuple[float, float] = (1.0, 1.0),
        identity: IdentityEncoder | None = None,
        identity_every: int = 50,
    ) -> None:
        self.cfg = cfg
        sigma = cfg.smooth_seconds * fps if fps > 0 else 0.0
        self.radius = int(4.0 * sigma + 0.5) if sigma > 0 else 0
        k = np.arange(-self.radius, self.radius + 1, dtype=np.float64)
        w = np.exp(-0.5 * (k / sigma) ** 2) if sigma > 0 else np.ones(1)
        self.weights = w / w.sum()
        self.to_decoded = np.diag([source_scale[0], source_scale[1], 1.0])
        self.identity = identity
        self.identity_every = max(1, identity_every)
        self.segment = 0
        self.timings = {"crop": 0.0, "encode": 0.0, "identity": 0.0}  # seconds spent per stage
        self._reset()

    def _reset(self) -> None:
        self._params: list[np.ndarray] = []  # per frame [cx, cy, log size, unwrapped angle]
        self._pending: deque = deque()  # (frame_index, rgb, face) not yet cropped
        self._frames: list[ClipFrame] = []
        self._descriptors: list[np.ndarray] = []

    def __len__(self) -> int:
        return len(self._params)

    def add(self, frame_index: int, rgb: np.ndarray, face: Face) -> None:
        """Append a usable frame and its tracked face (with landmarks, in decoded pixels)."""
        cx, cy, size, angle = crop_params_from_landmarks(
            face.landmarks, self.cfg.scale, self.cfg.vx_ratio, self.cfg.vy_ratio
        )
        if self._params:
            prev = self._params[-1][3]
            angle = prev + (angle - prev + np.pi) % (2 * np.pi) - np.pi  # unwrap
        self._params.append(np.array([cx, cy, np.log(size), angle]))
        self._pending.append((frame_index, rgb, face))
        self._emit(final=False)

    def end(self) -> Clip | None:
        """Close the current clip; returns it (None if empty). The next ``add`` starts a new clip."""
        if not self._params:
            return None
        self._emit(final=True)
        clip = Clip(self.segment, self._frames, self._descriptors)
        self.segment += 1
        self._reset()
        return clip

    def _smoothed(self, t: int) -> np.ndarray:
        n = len(self._params)
        idx = np.clip(np.arange(t - self.radius, t + self.radius + 1), 0, n - 1)
        p = self.weights @ np.stack([self._params[i] for i in idx])
        return np.array([p[0], p[1], np.exp(p[2]), p[3]])

    def _emit(self, final: bool) -> None:
        n = len(self._params)
        while self._pending:
            t = len(self._frames)
            if not final and t + self.radius >= n:
                return
            frame_index, rgb, face = self._pending.popleft()
            self._frames.append(self._crop(t, frame_index, rgb, face))

    def _crop(self, t: int, frame_index: int, rgb: np.ndarray, face: Face) -> ClipFrame:
        size = self.cfg.size
        t0 = time.perf_counter()
        affine = crop_affine(self._smoothed(t), size)  # decoded pixels -> crop pixels
        crop = warp_crop(rgb, affine, size)
        lmk = transform_points(face.landmarks, affine) / size
        sharp = sharpness(crop)
        t1 = time.perf_counter()
        if self.identity is not None and t % self.identity_every == 0:
            self._descriptors.append(self.identity.encode(crop, lmk * size))
        t2 = time.perf_counter()
        jpeg = encode_jpeg(crop, self.cfg.jpeg_quality)
        self.timings["crop"] += t1 - t0
        self.timings["identity"] += t2 - t1
        self.timings["encode"] += time.perf_counter() - t2
        return ClipFrame(
            index=frame_index,
            jpeg=jpeg,
            landmarks=lmk.astype(np.float32),
            affine=affine @ self.to_decoded,
            score=float(face.score),
            face_size=float(face.size / self.to_decoded[0, 0]),
            sharpness=sharp,
        )


def chunk_bounds(num_frames: int, max_chunk: int) -> list[tuple[int, int]]:
    """Split ``num_frames`` into ceil(n / max_chunk) chunks of near-equal length: [(start, stop), ...]."""
    if num_frames <= 0:
        return []
    n = -(-num_frames // max_chunk)
    edges = [round(i * num_frames / n) for i in range(n + 1)]
    return [(edges[i], edges[i + 1]) for i in range(n)]
