"""The LivePortrait face crop: a square, roll-free crop around face landmarks (pure numpy / OpenCV).

LivePortrait (Guo et al. 2024, Sec. 4.1 "Dataset curation" and the official ``src/utils/crop.py``) crops every
frame to a square of ``scale = 2.3`` times the landmark extent, moved up by ``vy_ratio = -0.125`` of the crop side
along the face's vertical axis, with the roll removed, then resizes it (512² stored, 256² network input).

As in the official ``parse_rect_from_landmark``: the face's vertical axis ``uy`` points from the midpoint of the
eyes to the mouth centre, ``ux`` is perpendicular to it (so the eye line becomes horizontal in the crop); the
landmarks are rotated into that frame, their bounding box gives the centre and (squared) size. We use the 68-point
subset of the mediapipe mesh (``FACE_MESH_68``: jaw, brows, nose, eyes, lips — no forehead), which matches the
extent of the 68/106/203-point models the official crop was tuned for.

Crop parameters per frame are an array ``[cx, cy, size, angle]`` (source pixels, radians; ``angle`` is the roll
that the crop removes). ``crop_affine`` turns them into a 2x3 matrix ``M`` mapping source pixels to crop pixels
(``[u, v]ᵀ = M @ [x, y, 1]ᵀ``); ``invert_affine`` gives crop -> source for pasting back. ``smooth_crop_params``
removes frame-to-frame jitter over a clip.
"""

from __future__ import annotations

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter1d

from lp_train.face.landmarks import (
    FACE_MESH_68,
    INNER_LIP_LOWER,
    INNER_LIP_UPPER,
    LEFT_EYE_CORNERS,
    MOUTH_CORNERS,
    NUM_LANDMARKS,
    RIGHT_EYE_CORNERS,
)

SCALE = 2.3
VX_RATIO = 0.0
VY_RATIO = -0.125

_EYE_POINTS = (*RIGHT_EYE_CORNERS, *LEFT_EYE_CORNERS)  # outer, inner of each eye
_MOUTH_POINTS = (MOUTH_CORNERS[1], MOUTH_CORNERS[0], INNER_LIP_UPPER, INNER_LIP_LOWER)


def _axis_points(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(eye midpoint, mouth centre) of a 478-point mesh or a 68-point set."""
    n = landmarks.shape[0]
    if n >= NUM_LANDMARKS - 10:  # 468 or 478 mesh points
        return landmarks[list(_EYE_POINTS)].mean(0), landmarks[list(_MOUTH_POINTS)].mean(0)
    if n == 68:
        return landmarks[36:48].mean(0), landmarks[48:68].mean(0)
    raise ValueError(f"expected 478/468 mediapipe or 68 iBUG landmarks, got {n} points")


def crop_params_from_landmarks(
    landmarks: np.ndarray, scale: float = SCALE, vx_ratio: float = VX_RATIO, vy_ratio: float = VY_RATIO
) -> np.ndarray:
    """Crop parameters ``[cx, cy, size, angle]`` (float64) from one face's landmarks.

    Args:
        landmarks: (478, 2) mediapipe mesh (or (68, 2) iBUG) points in source pixels.
        scale: crop side / landmark extent (LivePortrait: 2.3).
        vx_ratio, vy_ratio: shift of the centre along the face axes, in units of the crop side (LivePortrait:
            0 and -0.125, i.e. up by 1/8 of the side).
    """
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.ndim != 2 or landmarks.shape[1] != 2:
        raise ValueError(f"expected (N, 2) landmarks, got {landmarks.shape}")
    eyes, mouth = _axis_points(landmarks)
    pts = landmarks[list(FACE_MESH_68)] if landmarks.shape[0] >= NUM_LANDMARKS - 10 else landmarks
    uy = mouth - eyes
    norm = np.linalg.norm(uy)
    uy = uy / norm if norm > 1e-3 else np.array([0.0, 1.0])
    ux = np.array([uy[1], -uy[0]])
    rot = np.stack([ux, uy])  # rows: face axes in source coordinates
    center0 = pts.mean(0)
    rpts = (pts - center0) @ rot.T
    lo, hi = rpts.min(0), rpts.max(0)
    size = float((hi - lo).max()) * scale
    mid = (lo + hi) / 2
    center = center0 + ux * mid[0] + uy * mid[1] + ux * (vx_ratio * size) + uy * (vy_ratio * size)
    angle = float(np.arctan2(ux[1], ux[0]))
    return np.array([center[0], center[1], size, angle], dtype=np.float64)


def crop_affine(params: np.ndarray, dsize: int) -> np.ndarray:
    """2x3 float64 affine mapping source pixels to crop pixels for ``[cx, cy, size, angle]``."""
    cx, cy, size, angle = (float(v) for v in params)
    if size <= 0:
        raise ValueError(f"crop size must be > 0, got {size}")
    s = dsize / size
    c, si = np.cos(angle), np.sin(angle)
    a = s * np.array([[c, si], [-si, c]])  # rows: ux, uy scaled
    b = np.array([dsize / 2.0, dsize / 2.0]) - a @ np.array([cx, cy])
    return np.concatenate([a, b[:, None]], axis=1)


def invert_affine(affine: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine (crop pixels -> source pixels for a crop affine)."""
    affine = np.asarray(affine, dtype=np.float64)
    a_inv = np.linalg.inv(affine[:, :2])
    return np.concatenate([a_inv, (-a_inv @ affine[:, 2])[:, None]], axis=1)


def transform_points(points: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to (..., 2) points; returns the same dtype as ``points`` (float)."""
    points = np.asarray(points)
    affine = np.asarray(affine, dtype=np.float64)
    out = points.astype(np.float64) @ affine[:, :2].T + affine[:, 2]
    return out.astype(points.dtype if np.issubdtype(points.dtype, np.floating) else np.float64)


def warp_crop(
    rgb: np.ndarray, affine: np.ndarray, dsize: int, border_value: int = 0, interpolation: int = cv2.INTER_AREA
) -> np.ndarray:
    """Cut the (dsize, dsize) crop given by ``affine`` out of ``rgb`` (outside the image: ``border_value``).

    ``INTER_AREA`` is not supported by ``warpAffine``; for strong downscaling we first shrink the source with
    ``cv2.resize(INTER_AREA)`` (anti-aliasing) and warp with bilinear interpolation.
    """
    affine = np.asarray(affine, dtype=np.float64)
    scale = float(np.sqrt(abs(np.linalg.det(affine[:, :2]))))  # crop pixels per source pixel
    if interpolation == cv2.INTER_AREA and scale < 0.5:
        f = min(1.0, 2.0 * scale)  # leave a 2x margin for the bilinear warp
        small = cv2.resize(rgb, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        pre = np.array([[small.shape[1] / rgb.shape[1], 0, 0], [0, small.shape[0] / rgb.shape[0], 0]])
        affine = affine @ np.vstack([invert_affine(pre), [0, 0, 1]])
        rgb = small
    flags = cv2.INTER_LINEAR if interpolation == cv2.INTER_AREA else interpolation
    return cv2.warpAffine(
        rgb, affine, (dsize, dsize), flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=(border_value,) * 3
    )


def crop_from_landmarks(
    rgb: np.ndarray,
    landmarks: np.ndarray,
    dsize: int = 512,
    scale: float = SCALE,
    vx_ratio: float = VX_RATIO,
    vy_ratio: float = VY_RATIO,
) -> tuple[np.ndarray, np.ndarray]:
    """LivePortrait crop of one image.

    Args:
        rgb: (H, W, 3) uint8 image.
        landmarks: (478, 2) (or (68, 2)) landmarks of the face in source pixels.
        dsize: output side (512 in shards, 256 for the networks).

    Returns:
        ``(crop, affine)``: (dsize, dsize, 3) uint8 crop and the 2x3 source -> crop affine.
    """
    affine = crop_affine(crop_params_from_landmarks(landmarks, scale, vx_ratio, vy_ratio), dsize)
    return warp_crop(rgb, affine, dsize), affine


def smooth_crop_params(params: np.ndarray, sigma: float) -> np.ndarray:
    """Temporal Gaussian smoothing of per-frame crop parameters over one clip (removes crop jitter).

    Centre and angle are smoothed linearly (angle after unwrapping), the size in log space.

    Args:
        params: (T, 4) ``[cx, cy, size, angle]`` per frame.
        sigma: Gaussian standard deviation in frames; 0 returns a copy.
    """
    params = np.asarray(params, dtype=np.float64)
    if params.ndim != 2 or params.shape[1] != 4:
        raise ValueError(f"expected (T, 4) crop params, got {params.shape}")
    if sigma <= 0 or len(params) < 2:
        return params.copy()
    out = np.empty_like(params)
    out[:, 0:2] = gaussian_filter1d(params[:, 0:2], sigma, axis=0, mode="nearest")
    out[:, 2] = np.exp(gaussian_filter1d(np.log(params[:, 2]), sigma, mode="nearest"))
    out[:, 3] = gaussian_filter1d(np.unwrap(params[:, 3]), sigma, mode="nearest")
    return out
