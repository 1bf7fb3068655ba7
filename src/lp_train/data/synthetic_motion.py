"""Real portraits moved by known smooth motions: a sanity check that stage 1's keypoint -> warp path (LivePortrait
Sec. 3.1, the implicit keypoints driving W) learns motion independently of texture detail.

Every portrait is cropped once (LivePortrait crop, mediapipe landmarks) and rendered as a clip whose frame ``t`` is
the crop sampled at ``T_t(p) = A_t p + b_t + sum_k w_k(t) exp(-|p - c_k|² / 2r²)`` (normalised coordinates
[-1, 1], reflected borders): a smooth affine trajectory (rotation, scale, translation) plus a mild smooth
deformation (a few Gaussian radial-basis control points near the face, e.g. a mouth/cheek bulge). The landmarks
are moved by the inverse map, so every frame is an exact, known function of the portrait. Identities are split by
``lp_train.learning_check`` (``--portraits DIR``): held-out identities never train.

Portraits: ``*.jpg`` / ``*.png`` of a folder; without one, the photos that ship inside installed packages
(scikit-image's astronaut, matplotlib's Grace Hopper).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from lp_train.data.sample_shards import Sample, crop_clip, sample_meta
from lp_train.face.detect import FaceDetector

log = logging.getLogger(__name__)
CENTRES = np.array([[0.0, 0.35], [-0.3, 0.1], [0.3, 0.1], [0.0, -0.25]])  # (K, 2) mouth, cheeks, brow (x, y)


@dataclass(frozen=True)
class Motion:
    """One frame's backward map ``p -> A p + b + sum_k w_k exp(-|p - c_k|² / 2r²)`` in [-1, 1] coordinates."""

    A: np.ndarray  # (2, 2)
    b: np.ndarray  # (2,)
    w: np.ndarray  # (K, 2) radial-basis displacements at CENTRES
    radius: float = 0.25

    def __call__(self, p: np.ndarray) -> np.ndarray:
        """(..., 2) output points -> (..., 2) points sampled in the portrait."""
        d2 = ((p[..., None, :] - CENTRES) ** 2).sum(-1)  # (..., K)
        bump = np.exp(-d2 / (2 * self.radius**2)) @ self.w
        return p @ self.A.T + self.b + bump

    def inverse(self, q: np.ndarray, iters: int = 30) -> np.ndarray:
        """Points ``p`` with ``self(p) = q`` (fixed-point iteration; the deformation is mild, so it contracts)."""
        a_inv = np.linalg.inv(self.A)
        p = (q - self.b) @ a_inv.T
        for _ in range(iters):
            p = (q - self.b - (self(p) - p @ self.A.T - self.b)) @ a_inv.T
        return p


def smooth_motions(frames: int, rng: np.random.Generator, rotation: float = 0.25, scale: float = 0.12,
                   shift: float = 0.15, bump: float = 0.06) -> list[Motion]:  # fmt: skip
    """``frames`` motions along smooth random trajectories: each parameter is a sum of two sinusoids of random
    phase over the clip, with amplitude up to ``rotation`` (radians), ``scale`` (relative), ``shift`` (half-widths)
    and ``bump`` (radial-basis displacement)."""
    t = np.linspace(0.0, 1.0, frames)

    def path(amp: float, shape: tuple = ()) -> np.ndarray:
        tt = t.reshape(frames, *([1] * len(shape)))
        out = np.zeros((frames, *shape))
        for freq in (0.5, 1.0):
            gain, phase = rng.uniform(0.5, 1.0, size=shape), rng.uniform(0, 2 * np.pi, size=shape)
            out += 0.5 * amp * gain * np.sin(2 * np.pi * freq * tt + phase)
        return out

    angle, log_s, b, w = path(rotation), path(scale), path(shift, (2,)), path(bump, (len(CENTRES), 2))
    motions = []
    for i in range(frames):
        c, s = np.cos(angle[i]), np.sin(angle[i])
        motions.append(Motion(np.exp(log_s[i]) * np.array([[c, -s], [s, c]]), b[i], w[i]))
    return motions


def render(image: np.ndarray, motion: Motion) -> np.ndarray:
    """(S, S, 3) uint8 portrait crop -> the frame of ``motion`` (bilinear, reflected borders)."""
    size = image.shape[0]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float64)
    p = np.stack([(xs + 0.5) / size * 2 - 1, (ys + 0.5) / size * 2 - 1], axis=-1)  # pixel centres in [-1, 1]
    q = (motion(p) + 1) / 2 * size - 0.5
    return cv2.remap(image, q[..., 0].astype(np.float32), q[..., 1].astype(np.float32), cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REFLECT_101)  # fmt: skip


def move_landmarks(lmks: np.ndarray, motion: Motion) -> np.ndarray:
    """Landmarks (N, 2) in [0, 1] crop coordinates of the portrait -> where ``render`` puts them."""
    return ((motion.inverse(lmks.astype(np.float64) * 2 - 1) + 1) / 2).astype(np.float32)


def embedded_portraits() -> dict[str, np.ndarray]:
    """RGB photos shipped inside installed packages: scikit-image's astronaut, matplotlib's Grace Hopper."""
    import skimage.data
    from matplotlib import cbook

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = cv2.cvtColor(cv2.imdecode(np.frombuffer(f.read(), np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    return {"astronaut": skimage.data.astronaut(), "hopper": hopper}


def portrait_crops(folder: str | Path | None, size: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """identity (file stem) -> ((size, size, 3) uint8 LivePortrait crop, (478, 2) landmarks in [0, 1]) of every
    portrait in ``folder`` with a face (the embedded photos when ``folder`` is None or has no images)."""

    files = sorted(p for ext in ("*.jpg", "*.jpeg", "*.png") for p in Path(folder).glob(ext)) if folder else []
    if folder and not files:
        log.warning("no *.jpg / *.png portraits in %s: using the embedded photos (astronaut, hopper)", folder)
    images = {p.stem: cv2.cvtColor(cv2.imread(str(p)), cv2.COLOR_BGR2RGB) for p in files} or embedded_portraits()
    crops = {}
    for name, rgb in images.items():
        with FaceDetector(max_faces=1, video=False) as det:
            out = crop_clip(det, [rgb], size)
        if out is None:
            log.warning("no face in portrait %s, skipped", name)
            continue
        crops[name] = (out[0][0], out[1][0])
    if len(crops) < 2:
        raise ValueError(f"synthetic motion needs >= 2 portraits with a face (train and held-out), found {len(crops)}")
    return crops


def motion_samples(
    crops: dict[str, tuple[np.ndarray, np.ndarray]], frames_per_clip: int = 48, seed: int = 0, **amplitudes: float
) -> Iterator[Sample]:
    """One clip per portrait (identity = its name) along its own random smooth motion; frame ``t`` is
    ``render(crop, motions[t])``. ``amplitudes``: ``smooth_motions`` keywords."""
    for n, (name, (crop, lmks)) in enumerate(sorted(crops.items())):
        motions = smooth_motions(frames_per_clip, np.random.default_rng([seed, n]), **amplitudes)
        frames = [render(crop, m) for m in motions]
        moved = np.stack([move_landmarks(lmks, m) for m in motions])
        size = crop.shape[0]
        meta = sample_meta(f"synthetic-motion://{seed}/{name}", "video", name, n, frames_per_clip, 25.0, (size, size),
                     np.eye(3)[:2], [1.0] * frames_per_clip, size / 2.3)  # fmt: skip
        yield meta, frames, moved


def held_out_identities(names: list[str], every: int = 4) -> list[str]:
    """Every ``every``-th identity in sorted order (at least one, never all): the held-out (unseen) identities."""
    names = sorted(names)
    held = names[every - 1 :: every] or names[-1:]
    return held if len(held) < len(names) else held[:-1]
