"""Face-landmark conventions of lp-train: mediapipe's 478-point face mesh (468 mesh points + 2×5 iris points).

This module is the one table of landmark indices in the code base; detection (``lp_train.face.detect``), the crop
(``lp_train.face.crop``), curation, losses, metrics and the landmark teacher all take their indices from here.

LivePortrait (paper Sec. 3.2 "landmark-guided implicit keypoints optimization", Sec. 3.3 stitching and eyes/lip
retargeting) needs, from 2D face landmarks: the 10 guide landmarks of the Wing loss L_guide (3 per eye, 4 on the
mouth), eye- and lip-open ratios (the stage-2 retargeting conditions), face/eye/lip regions (the cascaded
perceptual/GAN losses and the stage-2 "outside the region" L1 losses) and pseudo head-pose labels (L_H, and APD
in evaluation). The official code uses a 203-point model; we define everything on the mediapipe mesh that our
curation stores in the shards (``lp_train.data.shard_format``), with the indices below.

Conventions
-----------
- Landmarks are ``(..., 478, 2)`` arrays, x right / y down, normalised to [0, 1] in crop coordinates.
- "Left"/"right" are the *subject's* sides, as in mediapipe (``FACEMESH_LEFT_EYE`` = subject's left eye, which
  appears on the right of the image). Outputs ordered [left, right] follow this naming.
- Indices (mediapipe face mesh): right eye contour starts at the outer corner 33 (inner corner 133, upper lid
  159, lower lid 145), left eye at the outer corner 263 (inner 362, upper 386, lower 374); iris centres 468
  (right) and 473 (left), each followed by 4 iris-contour points; mouth corners 61 / 291, inner lips 13 (upper)
  / 14 (lower); nose tip 1; forehead top 10; chin 152.
- Horizontal flip: mirror x (x -> 1 - x) and re-index with ``FLIP_PERMUTATION`` (an involution). The 468 mesh
  entries are the exact mirror matching of mediapipe's canonical face model (``canonical_face_model.obj`` in the
  mediapipe repository, Apache-2.0; the model is exactly symmetric, 28 points lie on the midline); the iris
  entries (468<->473, 469<->476, 470<->475, 471<->474, 472<->477) were measured by running the face mesh on a
  portrait and on its mirror image. Both facts are re-checked in ``tests/test_data_landmarks.py``.
- Head pose: LivePortrait's convention (``lp_train.keypoints``): R = Rz(roll)·Ry(yaw)·Rx(pitch) in a right-handed
  frame with x right, y down, z away from the camera. With it, positive pitch moves the nose down (looking
  down), positive yaw moves the nose to the image left (the subject turns to their right), positive roll turns
  the face clockwise in the image. ``head_pose_from_landmarks`` fits a weak-perspective (scaled orthographic)
  projection of mediapipe's canonical 3D face to the 2D landmarks, on the 33 rigid, weighted points mediapipe's
  own face-geometry module uses for its Procrustes fit (``geometry_pipeline_metadata_landmarks.pbtxt``).
"""

from __future__ import annotations

import numpy as np
import torch

NUM_LANDMARKS = 478
NUM_MESH = 468

RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)  # contour, outer corner first
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
RIGHT_IRIS = (468, 469, 470, 471, 472)  # centre, then 4 iris-contour points
LEFT_IRIS = (473, 474, 475, 476, 477)
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152, 148, 176,
             149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)  # fmt: skip

# Eye-open ratio = mean vertical lid distance over the 3 (upper, lower) pairs / corner-to-corner width.
RIGHT_EYE_CORNERS = (33, 133)
RIGHT_EYE_LIDS = ((160, 144), (159, 145), (158, 153))
LEFT_EYE_CORNERS = (263, 362)
LEFT_EYE_LIDS = ((387, 373), (386, 374), (385, 380))
# Lip-open ratio = mean inner-lip vertical distance over 3 pairs / mouth width (outer corners).
MOUTH_CORNERS = (61, 291)
INNER_LIP_PAIRS = ((82, 87), (13, 14), (312, 317))

# Single named points. Mouth corners above are (subject's right, subject's left).
RIGHT_IRIS_CENTER = RIGHT_IRIS[0]
LEFT_IRIS_CENTER = LEFT_IRIS[0]
INNER_LIP_UPPER, INNER_LIP_LOWER = 13, 14
INNER_LIP_CORNERS = (78, 308)
OUTER_LIP_UPPER, OUTER_LIP_LOWER = 0, 17
NOSE_TIP, FOREHEAD, CHIN = 1, 10, 152

# mediapipe face mesh -> 68-point iBUG / dlib layout (jaw 0-16, brows 17-26, nose 27-35, eyes 36-47, mouth 48-67).
FACE_MESH_68 = (
    127, 234, 93, 132, 58, 172, 136, 150, 152, 379, 365, 397, 288, 361, 323, 454, 356,  # jaw
    70, 63, 105, 66, 107, 336, 296, 334, 293, 300,  # eyebrows
    168, 197, 5, 4, 75, 97, 2, 326, 305,  # nose
    33, 160, 158, 133, 153, 144, 362, 385, 387, 263, 373, 380,  # eyes
    61, 39, 37, 0, 267, 269, 291, 405, 314, 17, 84, 181,  # outer lip
    78, 82, 13, 312, 308, 317, 14, 87,  # inner lip
)  # fmt: skip

# The 10 guide landmarks of stage 1's L_guide: per eye upper lid, lower lid, iris centre (blink + gaze);
# mouth: upper / lower inner lip, left / right corner.
GUIDE_LANDMARKS = (386, 374, 473, 159, 145, 468, 13, 14, 291, 61)

REGIONS = ("face", "eyes", "lips")
REGION_MARGINS = (0.05, 0.25, 0.25)  # box growth on each side, as a fraction of the box's longer side

FLIP_PERMUTATION = (
    0, 1, 2, 248, 4, 5, 6, 249, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 250, 251, 252, 253, 254, 255, 256,
    257, 258, 259, 260, 261, 262, 263, 264, 265, 266, 267, 268, 269, 270, 271, 272, 273, 274, 275, 276, 277, 278,
    279, 280, 281, 282, 283, 284, 285, 286, 287, 288, 289, 290, 291, 292, 293, 294, 295, 296, 297, 298, 299, 300,
    301, 302, 303, 304, 305, 306, 307, 308, 309, 310, 311, 312, 313, 314, 315, 316, 317, 318, 319, 320, 321, 322,
    323, 94, 324, 325, 326, 327, 328, 329, 330, 331, 332, 333, 334, 335, 336, 337, 338, 339, 340, 341, 342, 343,
    344, 345, 346, 347, 348, 349, 350, 351, 352, 353, 354, 355, 356, 357, 358, 359, 360, 361, 362, 363, 364, 365,
    366, 367, 368, 369, 370, 371, 372, 373, 374, 375, 376, 377, 378, 379, 151, 152, 380, 381, 382, 383, 384, 385,
    386, 387, 388, 389, 390, 164, 391, 392, 393, 168, 394, 395, 396, 397, 398, 399, 175, 400, 401, 402, 403, 404,
    405, 406, 407, 408, 409, 410, 411, 412, 413, 414, 415, 416, 417, 418, 195, 419, 197, 420, 199, 200, 421, 422,
    423, 424, 425, 426, 427, 428, 429, 430, 431, 432, 433, 434, 435, 436, 437, 438, 439, 440, 441, 442, 443, 444,
    445, 446, 447, 448, 449, 450, 451, 452, 453, 454, 455, 456, 457, 458, 459, 460, 461, 462, 463, 464, 465, 466,
    467, 3, 7, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44,
    45, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 66, 67, 68, 69, 70, 71, 72,
    73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 83, 84, 85, 86, 87, 88, 89, 90, 91, 92, 93, 95, 96, 97, 98, 99, 100,
    101, 102, 103, 104, 105, 106, 107, 108, 109, 110, 111, 112, 113, 114, 115, 116, 117, 118, 119, 120, 121, 122,
    123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 133, 134, 135, 136, 137, 138, 139, 140, 141, 142, 143, 144,
    145, 146, 147, 148, 149, 150, 153, 154, 155, 156, 157, 158, 159, 160, 161, 162, 163, 165, 166, 167, 169, 170,
    171, 172, 173, 174, 176, 177, 178, 179, 180, 181, 182, 183, 184, 185, 186, 187, 188, 189, 190, 191, 192, 193,
    194, 196, 198, 201, 202, 203, 204, 205, 206, 207, 208, 209, 210, 211, 212, 213, 214, 215, 216, 217, 218, 219,
    220, 221, 222, 223, 224, 225, 226, 227, 228, 229, 230, 231, 232, 233, 234, 235, 236, 237, 238, 239, 240, 241,
    242, 243, 244, 245, 246, 247, 473, 476, 475, 474, 477, 468, 471, 470, 469, 472,
)  # fmt: skip

# mediapipe's Procrustes basis: (landmark index, weight, canonical x, y, z) in the canonical model's frame
# (x right in the image, y up, z towards the camera; centimetre-like units).
POSE_BASIS = (
    (4, 0.070910, 0.000000, -0.463170, 7.586580), (6, 0.032100, 0.000000, 2.473255, 5.788627),
    (10, 0.008447, 0.000000, 8.261778, 4.481535), (33, 0.058724, -4.445859, 2.663991, 3.173422),
    (54, 0.007667, -6.279331, 6.615427, 1.425850), (67, 0.009078, -3.523964, 8.005976, 3.729163),
    (117, 0.009792, -5.258659, 0.945811, 2.974312), (119, 0.014565, -3.300681, 0.861641, 3.872784),
    (121, 0.018591, -1.820731, 1.467954, 4.224124), (127, 0.005198, -7.743095, 2.364999, -2.005167),
    (129, 0.120625, -1.785794, -0.978284, 4.850470), (132, 0.005560, -7.270895, -2.890917, -2.252455),
    (133, 0.053286, -1.856432, 2.585245, 3.757904), (136, 0.066890, -5.085276, -7.178590, 0.714711),
    (143, 0.014817, -6.407571, 2.236021, 1.560843), (147, 0.014263, -6.234883, -1.944430, 1.663542),
    (198, 0.025462, -1.246815, 0.230297, 5.681036), (205, 0.047252, -3.832928, -1.537326, 4.137731),
    (263, 0.058724, 4.445859, 2.663991, 3.173422), (284, 0.007667, 6.279331, 6.615427, 1.425850),
    (297, 0.009078, 3.523964, 8.005976, 3.729163), (346, 0.009792, 5.258659, 0.945811, 2.974312),
    (348, 0.014565, 3.300681, 0.861641, 3.872784), (350, 0.018591, 1.820731, 1.467954, 4.224124),
    (356, 0.005198, 7.743095, 2.364999, -2.005167), (358, 0.120625, 1.785794, -0.978284, 4.850470),
    (361, 0.005560, 7.270895, -2.890917, -2.252455), (362, 0.053286, 1.856432, 2.585245, 3.757904),
    (365, 0.066890, 5.085276, -7.178590, 0.714711), (372, 0.014817, 6.407571, 2.236021, 1.560843),
    (376, 0.014263, 6.234883, -1.944430, 1.663542), (420, 0.025462, 1.246815, 0.230297, 5.681036),
    (425, 0.047252, 3.832928, -1.537326, 4.137731),
)  # fmt: skip

# mediapipe's 2D mesh of a face looking straight into the camera fits the (upright) canonical model with about
# +9° pitch (median over the frontal frames of the shared test clips d0/d6/d10/d12 and the 19 test portraits:
# 7.6° and 10.3°). The canonical model is tilted by this much so that a camera-facing face reads pitch ≈ 0.
CANONICAL_PITCH_DEG = 9.0

Array = np.ndarray | torch.Tensor


def _check(lmk: Array) -> None:
    if lmk.shape[-2:] != (NUM_LANDMARKS, 2):
        raise ValueError(f"landmarks must be (..., {NUM_LANDMARKS}, 2), got {tuple(lmk.shape)}")


def _stack(xs: list, like: Array) -> Array:
    return torch.stack(xs, dim=-1) if isinstance(like, torch.Tensor) else np.stack(xs, axis=-1)


def _dist(lmk: Array, i: int, j: int) -> Array:
    d = lmk[..., i, :] - lmk[..., j, :]
    return ((d**2).sum(-1) + 1e-12) ** 0.5  # eps keeps the torch gradient finite at d = 0


def _open_ratio(lmk: Array, corners: tuple[int, int], pairs: tuple[tuple[int, int], ...]) -> Array:
    vertical = sum(_dist(lmk, a, b) for a, b in pairs) / len(pairs)
    return vertical / (_dist(lmk, *corners) + 1e-6)


def eye_open_ratio(lmk: Array) -> Array:
    """Eye-open ratios [left, right] (vertical lid distance / eye width), numpy or differentiable torch.

    Args:
        lmk: ``(..., 478, 2)`` landmarks (any isotropic scale).

    Returns:
        ``(..., 2)`` of the same array type: about 0.25-0.35 for an open eye, < 0.1 for a closed one.
    """
    _check(lmk)
    left = _open_ratio(lmk, LEFT_EYE_CORNERS, LEFT_EYE_LIDS)
    right = _open_ratio(lmk, RIGHT_EYE_CORNERS, RIGHT_EYE_LIDS)
    return _stack([left, right], lmk)


def lip_open_ratio(lmk: Array) -> Array:
    """Lip-open ratio (inner-lip vertical distance / mouth width) as ``(..., 1)``, numpy or differentiable torch."""
    _check(lmk)
    return _stack([_open_ratio(lmk, MOUTH_CORNERS, INNER_LIP_PAIRS)], lmk)


def flip_landmarks(lmk: Array) -> Array:
    """Landmarks of the horizontally mirrored image: x -> 1 - x and left/right indices swapped."""
    _check(lmk)
    perm = list(FLIP_PERMUTATION)
    out = lmk[..., perm, :]
    out = out.clone() if isinstance(out, torch.Tensor) else out.copy()
    out[..., 0] = 1.0 - out[..., 0]
    return out


def _box(pts: Array, margin: float) -> list:
    if isinstance(pts, torch.Tensor):
        lo, hi = pts.amin(-2), pts.amax(-2)
        size = (hi - lo).amax(-1)
    else:
        lo, hi = pts.min(-2), pts.max(-2)
        size = (hi - lo).max(-1)
    pad = margin * size
    return [lo[..., 0] - pad, lo[..., 1] - pad, hi[..., 0] + pad, hi[..., 1] + pad]


def region_boxes(lmk: Array, margins: tuple[float, float, float] = REGION_MARGINS) -> Array:
    """Boxes ``(..., 3, 4)`` = (x0, y0, x1, y1) of [face, eyes, lips], clipped to [0, 1].

    Face: the 468 mesh points; eyes: both eye contours and irises; lips: the outer lip contour. Each box grows by
    ``margin`` × its longer side on every side.
    """
    _check(lmk)
    groups = (list(range(NUM_MESH)), list(LEFT_EYE + RIGHT_EYE + LEFT_IRIS + RIGHT_IRIS), list(LIPS_OUTER))
    rows = [_stack(_box(lmk[..., idx, :], m), lmk) for idx, m in zip(groups, margins, strict=True)]
    if isinstance(lmk, torch.Tensor):
        return torch.stack(rows, dim=-2).clamp(0.0, 1.0)
    return np.clip(np.stack(rows, axis=-2), 0.0, 1.0)


def boxes_to_masks(boxes: Array, size: int) -> Array:
    """Rasterise normalised boxes ``(..., R, 4)`` into {0, 1} masks ``(..., R, size, size)`` (pixel centres inside)."""
    if boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be (..., 4), got {tuple(boxes.shape)}")
    if isinstance(boxes, torch.Tensor):
        c = (torch.arange(size, device=boxes.device, dtype=boxes.dtype) + 0.5) / size
    else:
        c = (np.arange(size, dtype=boxes.dtype) + 0.5) / size
    x0, y0, x1, y1 = (boxes[..., k, None] for k in range(4))
    inside_x = (c >= x0) & (c < x1)  # (..., R, W)
    inside_y = (c >= y0) & (c < y1)  # (..., R, H)
    mask = inside_y[..., :, None] & inside_x[..., None, :]  # (..., R, H, W)
    return mask.to(boxes.dtype) if isinstance(mask, torch.Tensor) else mask.astype(boxes.dtype)


def _canonical_lp_frame() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pose-basis indices, normalised weights and 3D points in LivePortrait's frame, zero pitch calibrated."""
    basis = np.asarray(POSE_BASIS, dtype=np.float64)
    idx, w = basis[:, 0].astype(int), basis[:, 1]
    pts = basis[:, 2:5] * np.array(
        [1.0, -1.0, -1.0]
    )  # canonical (x right, y up, z to camera) -> x right, y down, z away
    a = np.radians(CANONICAL_PITCH_DEG)
    rx = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    return idx, w / w.sum(), pts @ rx.T


def euler_from_rotation(r: np.ndarray) -> np.ndarray:
    """``(..., 3, 3)`` R = Rz(roll)·Ry(yaw)·Rx(pitch) -> ``(..., 3)`` (pitch, yaw, roll) in degrees."""
    yaw = np.arcsin(np.clip(-r[..., 2, 0], -1.0, 1.0))
    pitch = np.arctan2(r[..., 2, 1], r[..., 2, 2])
    roll = np.arctan2(r[..., 1, 0], r[..., 0, 0])
    return np.degrees(np.stack([pitch, yaw, roll], axis=-1))


def fit_weak_perspective(lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Fit p ≈ s · (R X)[:2] + t of the canonical face X to 2D landmarks (weighted least squares, then the
    nearest scaled rotation by SVD; the third row of R is the cross product, so det R = +1).

    Args:
        lmk: ``(..., 478, 2)`` or ``(..., 468, 2)`` landmarks.

    Returns:
        R ``(..., 3, 3)``, s ``(...,)``, t ``(..., 2)``.
    """
    if lmk.shape[-1] != 2 or lmk.shape[-2] < NUM_MESH:
        raise ValueError(f"landmarks must be (..., >= {NUM_MESH}, 2), got {tuple(lmk.shape)}")
    idx, w, x = _canonical_lp_frame()
    p = np.asarray(lmk, dtype=np.float64)[..., idx, :]  # (..., N, 2)
    xc = x - (w[:, None] * x).sum(0)
    pm = (w[:, None] * p).sum(-2, keepdims=True)
    pc = p - pm
    a = (xc * w[:, None]).T @ xc  # (3, 3)
    m = np.swapaxes(pc, -1, -2) @ (w[:, None] * xc) @ np.linalg.inv(a)  # (..., 2, 3) ≈ s R[:2]
    u, sv, vt = np.linalg.svd(m, full_matrices=False)
    r12 = u @ vt  # (..., 2, 3), orthonormal rows
    r3 = np.cross(r12[..., 0, :], r12[..., 1, :])
    rot = np.concatenate([r12, r3[..., None, :]], axis=-2)
    return rot, sv.mean(-1), pm[..., 0, :]


def head_pose_from_landmarks(lmk: Array) -> Array:
    """Pseudo head pose (pitch, yaw, roll) in degrees, LivePortrait's convention (see the module docstring).

    Args:
        lmk: ``(..., 478, 2)`` normalised landmarks, numpy or torch (torch input is not differentiated).

    Returns:
        ``(..., 3)`` float32 of the input's array type.
    """
    if isinstance(lmk, torch.Tensor):
        out = head_pose_from_landmarks(lmk.detach().cpu().double().numpy())
        return torch.from_numpy(out).to(lmk.device)
    rot, _, _ = fit_weak_perspective(lmk)
    return euler_from_rotation(rot).astype(np.float32)
