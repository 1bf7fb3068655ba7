"""lp_train.face.detect (mediapipe, offline) and lp_train.face.crop (the LivePortrait crop) on real faces."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data

from lp_train.face.crop import (
    crop_affine,
    crop_from_landmarks,
    crop_params_from_landmarks,
    invert_affine,
    smooth_crop_params,
    transform_points,
    warp_crop,
)
from lp_train.face.detect import FaceDetector, check_rgb
from lp_train.face.landmarks import (
    FACE_MESH_68,
    LEFT_EYE_CORNERS,
    LEFT_IRIS_CENTER,
    MOUTH_CORNERS,
    RIGHT_EYE_CORNERS,
    RIGHT_IRIS_CENTER,
)

FACES = Path(__file__).resolve().parents[1] / "../shared/data/faces"


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skimage.data.astronaut()


@pytest.fixture(scope="module")
def detector():
    with FaceDetector(min_confidence=0.5, max_faces=2) as det:
        yield det


def _eye_mouth(lmk: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    right = lmk[list(RIGHT_EYE_CORNERS)].mean(0)
    left = lmk[list(LEFT_EYE_CORNERS)].mean(0)
    mouth = lmk[list(MOUTH_CORNERS)].mean(0)
    return right, left, mouth


def test_detects_real_face_with_478_landmarks(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    f = faces[0]
    assert f.landmarks.shape == (478, 2) and f.landmarks.dtype == np.float32
    assert 0.5 < f.score <= 1.0
    assert 80 < f.size < 200  # the astronaut's face is ~105 px in the 512² photo
    x0, y0, x1, y1 = f.box
    inner = f.landmarks[list(FACE_MESH_68)[17:]]  # brows, nose, eyes, mouth lie inside the detector box (+10%)
    pad = 0.1 * f.size
    assert (inner[:, 0] > x0 - pad).all() and (inner[:, 0] < x1 + pad).all()
    assert (inner[:, 1] > y0 - pad).all() and (inner[:, 1] < y1 + pad).all()
    right, left, mouth = _eye_mouth(f.landmarks)
    assert right[0] < left[0]  # subject's right eye on the image left
    assert max(right[1], left[1]) < mouth[1]  # eyes above the mouth
    # iris centres lie between the corners of their eye
    for iris, (outer, inner) in ((RIGHT_IRIS_CENTER, RIGHT_EYE_CORNERS), (LEFT_IRIS_CENTER, LEFT_EYE_CORNERS)):
        xs = sorted([f.landmarks[outer, 0], f.landmarks[inner, 0]])
        assert xs[0] < f.landmarks[iris, 0] < xs[1]


def test_no_face_and_bad_input(detector):
    assert detector.detect(np.full((128, 128, 3), 127, np.uint8)) == []
    with pytest.raises(ValueError, match="RGB"):
        check_rgb(np.zeros((64, 64), np.uint8))
    with pytest.raises(ValueError, match="H, W > 0"):
        detector.detect(np.zeros((0, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        detector.detect(np.zeros((64, 64, 3), np.float32))
    with pytest.raises(ValueError, match="RGB"):
        detector.detect(np.zeros((64, 64, 4), np.uint8))


def test_close_up_face_confirmed_by_short_range_model(detector, astronaut):
    close = cv2.resize(astronaut[40:220, 150:310], (512, 576))  # face fills the frame: full-range BlazeFace misses it
    faces = detector.detect(close)
    assert len(faces) == 1 and faces[0].score > 0.5


def test_two_people_are_both_reported(detector, astronaut):
    pair = np.concatenate([astronaut[:, 96:416], astronaut[:, 96:416]], axis=1)
    assert len(detector.detect_all(pair)) == 2


def test_video_mode_tracks_and_closes(astronaut):
    det = FaceDetector(video=True)
    sizes = []
    for dx in range(0, 10, 2):
        frame = np.ascontiguousarray(np.roll(astronaut, dx, axis=1))
        faces = det.detect(frame)
        sizes.append(faces[0].landmarks[:, 0].mean())
    assert np.allclose(np.diff(sizes), 2.0, atol=1.0)  # landmarks follow the 2 px shifts
    det.reset()
    det.close()
    with pytest.raises(RuntimeError, match="closed"):
        det.detect(astronaut)


# --- crop -------------------------------------------------------------------------------------------------------
def test_crop_geometry_matches_liveportrait(detector, astronaut):
    lmk = detector.detect(astronaut)[0].landmarks
    crop, m = crop_from_landmarks(astronaut, lmk, dsize=512)
    assert crop.shape == (512, 512, 3) and crop.dtype == np.uint8
    cx, cy, size, angle = crop_params_from_landmarks(lmk)
    pts = lmk[list(FACE_MESH_68)]
    extent = (pts.max(0) - pts.min(0)).max()
    assert size == pytest.approx(2.3 * extent, rel=0.05)  # square side 2.3 x the landmark extent (roll ~ 0)
    # centre: the middle of the landmarks moved up by 0.125 of the side
    mid = (pts.max(0) + pts.min(0)) / 2
    assert cx == pytest.approx(mid[0], abs=0.02 * size)
    assert cy == pytest.approx(mid[1] - 0.125 * size, abs=0.02 * size)
    inside = transform_points(lmk, m)
    assert (inside > 0).all() and (inside < 512).all()
    # the face's centre sits in the lower-middle of the crop
    assert 200 < inside[:, 1].mean() < 340 and 216 < inside[:, 0].mean() < 296


def test_crop_removes_roll(detector, astronaut):
    h, w = astronaut.shape[:2]
    rot = cv2.getRotationMatrix2D((w / 2, h / 2), 25, 1.0)
    rotated = cv2.warpAffine(astronaut, rot, (w, h))
    lmk = detector.detect(rotated)[0].landmarks
    crop, m = crop_from_landmarks(rotated, lmk, dsize=256)
    c = transform_points(lmk, m)
    right, left, mouth = _eye_mouth(c)
    eye_angle = np.degrees(np.arctan2(left[1] - right[1], left[0] - right[0]))
    assert abs(eye_angle) < 4.0  # eye line horizontal after the crop (it was ~25 deg in the rotated photo)
    assert mouth[1] > right[1] + 20
    assert np.degrees(crop_params_from_landmarks(lmk)[3]) == pytest.approx(-25, abs=4)
    # and the crop of the rotated photo looks like the crop of the upright one
    upright, _ = crop_from_landmarks(astronaut, detector.detect(astronaut)[0].landmarks, dsize=256)
    err = np.abs(crop[64:192, 64:192].astype(float) - upright[64:192, 64:192].astype(float)).mean()
    assert err < 25


def test_affine_helpers_roundtrip_and_match_warp():
    params = np.array([200.0, 150.0, 180.0, np.radians(17.0)])
    m = crop_affine(params, 256)
    pts = np.random.default_rng(0).uniform(0, 400, (50, 2))
    back = transform_points(transform_points(pts, m), invert_affine(m))
    np.testing.assert_allclose(back, pts, atol=1e-9)
    # a bright dot in the source lands where transform_points says
    img = np.zeros((400, 400, 3), np.uint8)
    cv2.circle(img, (230, 170), 4, (255, 255, 255), -1)
    crop = warp_crop(img, m, 256)
    ys, xs = np.nonzero(crop[..., 0] > 128)
    expect = transform_points(np.array([[230.0, 170.0]]), m)[0]
    assert abs(xs.mean() - expect[0]) < 1.0 and abs(ys.mean() - expect[1]) < 1.0
    # the centre of the crop params maps to the crop centre
    np.testing.assert_allclose(transform_points(params[None, :2], m)[0], [128, 128], atol=1e-9)


def test_strong_downscale_is_antialiased():
    rng = np.random.default_rng(0)
    noise = (rng.uniform(0, 1, (1024, 1024, 3)) * 255).astype(np.uint8)
    m = crop_affine(np.array([512.0, 512.0, 1024.0, 0.0]), 128)
    assert warp_crop(noise, m, 128).std() < 0.5 * noise.std()  # area-averaged, not aliased samples


def test_smoothing_removes_jitter_keeps_motion():
    t = np.arange(100)
    rng = np.random.default_rng(0)
    clean = np.stack([200 + 0.5 * t, 150 + 20 * np.sin(t / 15), 180 + 0 * t, 0.1 * np.sin(t / 20)], 1)
    noisy = clean + rng.normal(0, [2.0, 2.0, 3.0, 0.02], clean.shape)
    smooth = smooth_crop_params(noisy, sigma=3.0)
    jitter = lambda p: np.abs(np.diff(p[:, :2], 2, axis=0)).mean()  # noqa: E731
    assert jitter(smooth) < 0.15 * jitter(noisy)
    assert np.abs(smooth[10:-10] - clean[10:-10]).max(0)[0] < 2.5  # follows the real motion
    np.testing.assert_allclose(smooth_crop_params(noisy, 0), noisy)
    # angles across the +-pi wrap are unwrapped, not averaged to 0
    wrap = np.tile([0.0, 0.0, 100.0, np.pi - 0.01], (10, 1))
    wrap[5:, 3] = -np.pi + 0.01
    assert np.abs(np.cos(smooth_crop_params(wrap, 2.0)[:, 3]) + 1).max() < 1e-3


@pytest.mark.skipif(not (FACES / "images/s0.jpg").is_file(), reason="needs ../shared/data/faces (real portraits)")
def test_real_portraits_detect_and_crop(detector):
    from PIL import Image

    for name in ("s0.jpg", "d12.jpg", "s8.jpg"):
        rgb = np.asarray(Image.open(FACES / "images" / name).convert("RGB"))
        faces = detector.detect(rgb)
        assert faces and faces[0].score > 0.5, name
        crop, m = crop_from_landmarks(rgb, faces[0].landmarks, dsize=256)
        c = transform_points(faces[0].landmarks, m)
        right, left, mouth = _eye_mouth(c)
        assert (c > 0).all() and (c < 256).all()
        assert max(right[1], left[1]) < mouth[1]


def test_depth_is_reported_with_the_landmarks(detector, astronaut):
    f = detector.detect(astronaut)[0]
    assert f.depth.shape == (478,) and f.depth.dtype == np.float32
    assert f.depth[1] < f.depth[234] and f.depth[1] < f.depth[454]  # the nose tip is closer than the face's sides
