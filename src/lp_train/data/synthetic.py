"""Procedurally drawn face pairs with exactly the real loader's batch contract (``lp_train.data.batch``), for
smoke tests of stage 1 / stage 2 (paper Sec. 3.1-3.3) without any data on disk.

Each identity is a face (skin/background/iris/lip colours, face proportions); each frame draws it under a random
head pose (pitch/yaw/roll), eye openness per eye and mouth openness. The 478 landmarks follow mediapipe's index
conventions (``lp_train.face.landmarks``): the 33 rigid pose-basis points are projections of mediapipe's canonical face,
eye/iris/lip/face-oval contours sit on the drawn shapes, the rest of the mesh lies inside the face mirror-
symmetrically. So regions, eye/lip ratios and pseudo pose computed from the landmarks agree with the pixels.
Pairs follow the real loader: with probability ``p_image`` an image pair (a frame + a random warp of itself),
otherwise a "video" pair (two poses/expressions of one identity, or of two identities with probability
``cross_identity_prob``), then the same flip / colour augmentation.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from lp_train.data.augment import AugmentConfig, augment_pair
from lp_train.data.batch import collate_pairs, compact_pair
from lp_train.face import landmarks as lm


def _contour(centre, half_w, half_h, n, theta0, direction, z_slope=0.0) -> np.ndarray:
    """n points on an ellipse in the x/y plane (LivePortrait frame: y down) starting at angle theta0."""
    t = theta0 + direction * 2 * np.pi * np.arange(n) / n
    dx, dy = half_w * np.cos(t), half_h * np.sin(t)
    return np.stack([centre[0] + dx, centre[1] + dy, centre[2] + z_slope * dx], axis=1)


def _template() -> np.ndarray:
    """(478, 3) mirror-symmetric 3D template in LivePortrait's frame (x right, y down, z away), canonical units,
    before the zero-pitch calibration of ``lp_train.face.landmarks``."""
    rng = np.random.default_rng(0)
    pts = np.zeros((lm.NUM_LANDMARKS, 3))
    perm = np.asarray(lm.FLIP_PERMUTATION)
    for i in range(lm.NUM_MESH):  # filler: random points inside the face, mirrored pairs
        if perm[i] >= i:
            x = 0.0 if perm[i] == i else rng.uniform(0.5, 5.5)
            pts[i] = (-x, rng.uniform(-6.5, 5.5), -4.0)
            pts[perm[i]] = (x, pts[i, 1], -4.0)
    pts[list(lm.FACE_OVAL)] = _contour((0.0, 0.57, 0.0), 7.6, 8.8, 36, -np.pi / 2, 1)
    basis = np.asarray(lm.POSE_BASIS)
    rigid = [i for i, idx in enumerate(basis[:, 0].astype(int)) if idx not in lm.FACE_OVAL]
    pts[basis[rigid, 0].astype(int)] = basis[rigid, 2:5] * np.array([1.0, -1.0, -1.0])
    return pts


_TEMPLATE = _template()
_EYE_CENTRE = {"right": (-3.151, -2.625, -3.466), "left": (3.151, -2.625, -3.466)}  # mid of canonical corners
_CALIB = np.radians(lm.CANONICAL_PITCH_DEG)
_CALIB_RX = np.array([[1, 0, 0], [0, np.cos(_CALIB), -np.sin(_CALIB)], [0, np.sin(_CALIB), np.cos(_CALIB)]])


def face_points(identity: dict, frame: dict) -> np.ndarray:
    """(478, 2) normalised landmarks of one identity under one frame's pose and expression."""
    pts = _TEMPLATE.copy()
    for side, contour, iris, sign in (
        ("right", lm.RIGHT_EYE, lm.RIGHT_IRIS, -1),
        ("left", lm.LEFT_EYE, lm.LEFT_IRIS, 1),
    ):
        c, h = _EYE_CENTRE[side], 0.45 * frame[f"{side}_open"] + 0.03
        theta0 = 0.0 if sign > 0 else np.pi  # contour starts at the outer corner, lower lid first
        pts[list(contour)] = _contour(c, 1.295, h, 16, theta0, sign, z_slope=0.23 * sign)
        r = 0.45  # iris: centre, then right, up, left, down in the image (as mediapipe orders them)
        pts[list(iris)] = [
            c,
            (c[0] + r, c[1], c[2]),
            (c[0], c[1] - r, c[2]),
            (c[0] - r, c[1], c[2]),
            (c[0], c[1] + r, c[2]),
        ]
    mouth, open_ = (0.0, 4.34, -4.28), frame["mouth_open"]
    pts[list(lm.LIPS_OUTER)] = _contour(mouth, 2.46, 0.7 + 0.8 * open_, 20, np.pi, -1)
    pts[list(lm.LIPS_INNER)] = _contour(mouth, 1.9, 0.02 + 0.8 * open_, 20, np.pi, -1)
    pts *= np.array([identity["width"], identity["height"], 1.0])
    rot = _rotation(*frame["pose"]) @ _CALIB_RX
    proj = (pts @ rot.T)[:, :2] * frame["scale"] + frame["centre"]
    return proj.astype(np.float32)


def _rotation(pitch: float, yaw: float, roll: float) -> np.ndarray:
    p, y, r = np.radians([pitch, yaw, roll])
    rx = np.array([[1, 0, 0], [0, np.cos(p), -np.sin(p)], [0, np.sin(p), np.cos(p)]])
    ry = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
    rz = np.array([[np.cos(r), -np.sin(r), 0], [np.sin(r), np.cos(r), 0], [0, 0, 1]])
    return rz @ ry @ rx


def draw_face(identity: dict, landmarks: np.ndarray, hr: int) -> torch.Tensor:
    """Render ``(3, hr, hr)`` float32 in [0, 1]: background, face oval, eyes with irises, lips, open mouth."""
    img = np.empty((hr, hr, 3), np.uint8)
    img[:] = identity["background"]
    pix = lambda idx: np.round(landmarks[list(idx)] * hr * 4 - 2).astype(np.int32)  # noqa: E731  (2 bits subpixel)
    draw = dict(lineType=cv2.LINE_AA, shift=2)
    cv2.fillPoly(img, [pix(lm.FACE_OVAL)], identity["skin"], **draw)
    for contour, iris in ((lm.RIGHT_EYE, lm.RIGHT_IRIS), (lm.LEFT_EYE, lm.LEFT_IRIS)):
        eye = np.zeros((hr, hr), np.uint8)
        cv2.fillPoly(eye, [pix(contour)], 255, **draw)
        white = img.copy()
        cv2.fillPoly(white, [pix(contour)], (245, 245, 240), **draw)
        centre, edge = landmarks[iris[0]] * hr, landmarks[iris[1]] * hr
        radius = max(1, int(round(np.linalg.norm(edge - centre))))
        cv2.circle(white, tuple(int(v) for v in np.round(centre)), radius, identity["iris"], -1, cv2.LINE_AA)
        img = np.where(eye[..., None] > 127, white, img)
    cv2.fillPoly(img, [pix(lm.LIPS_OUTER)], identity["lips"], **draw)
    cv2.fillPoly(img, [pix(lm.LIPS_INNER)], (40, 20, 25), **draw)
    return torch.from_numpy(img).permute(2, 0, 1).float().div(255.0)


class SyntheticPairs(Dataset):
    """A map-style dataset of synthetic (source, driving) pairs in the loader's compact form (uint8 frames);
    ``SyntheticPairs.collate`` (``collate_pairs``) makes contract batches of them.

    Item ``i`` depends only on ``(seed, i)``, so any sampler/worker layout gives the same pairs.
    """

    collate = staticmethod(collate_pairs)

    def __init__(
        self,
        length: int = 256,  # number of pairs
        size: int = 64,  # network input side S (targets are 2S)
        num_identities: int = 16,  # distinct synthetic faces
        p_image: float = 0.3,  # probability of an image pair (a frame + a warp of itself)
        cross_identity_prob: float = 0.0,  # probability that a video pair mixes two identities (stage 2)
        seed: int = 0,  # base seed
        augment: AugmentConfig | None = None,  # flip / colour / warp options (defaults if None)
    ) -> None:
        self.length, self.size, self.num_identities = length, size, num_identities
        self.p_image, self.cross_identity_prob, self.seed = p_image, cross_identity_prob, seed
        self.augment = augment if isinstance(augment, AugmentConfig) else AugmentConfig(**(augment or {}))

    def __len__(self) -> int:
        return self.length

    def identity_style(self, ident: int) -> dict:
        """Colours and face proportions of synthetic identity ``ident`` (fixed by ``seed``)."""
        r = np.random.default_rng([self.seed, 1_000_003, ident])
        colour = lambda lo, hi: tuple(int(v) for v in r.integers(lo, hi, size=3))  # noqa: E731
        return dict(
            skin=colour(120, 240),
            background=colour(0, 255),
            iris=colour(10, 120),
            lips=colour(120, 220),
            width=r.uniform(0.9, 1.1),
            height=r.uniform(0.9, 1.1),
        )

    def random_frame(self, r: np.random.Generator) -> dict:
        """A random head pose, eye/mouth opening, scale and centre drawn from ``r``."""
        return dict(
            pose=(r.uniform(-20, 20), r.uniform(-25, 25), r.uniform(-15, 15)),
            right_open=r.uniform(0.0, 1.0),
            left_open=r.uniform(0.0, 1.0),
            mouth_open=r.uniform(0.0, 1.0) ** 2,
            scale=r.uniform(0.028, 0.034),
            centre=r.uniform(0.45, 0.55, size=2),
        )

    def __getitem__(self, index: int) -> dict:
        if not 0 <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} synthetic pairs")
        r = np.random.default_rng([self.seed, index])
        hr = 2 * self.size
        src_id = int(r.integers(self.num_identities))
        is_image = bool(r.random() < self.p_image)
        cross = not is_image and r.random() < self.cross_identity_prob
        drv_id = (src_id + 1 + int(r.integers(self.num_identities - 1))) % self.num_identities if cross else src_id
        ident = self.identity_style(src_id)
        src_lmk = face_points(ident, self.random_frame(r))
        src = draw_face(ident, src_lmk, hr)
        if is_image:
            drv, drv_lmk = src, src_lmk
        else:
            drv_ident = self.identity_style(drv_id)
            drv_lmk = face_points(drv_ident, self.random_frame(r))
            drv = draw_face(drv_ident, drv_lmk, hr)
        warps, (src_lmk, drv_lmk), color = augment_pair(r, [src_lmk, drv_lmk], hr, self.augment, is_image, not cross)
        key = f"synthetic-{self.seed}-{index}:0|synthetic-{self.seed}-{index}:1"
        return compact_pair(src, drv, src_lmk, drv_lmk, warps, color, is_image, not cross, f"synthetic-{src_id}", key)
