"""lp_train.face.landmarks: mediapipe index conventions, flip permutation, eye/lip ratios, regions, head pose."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from lp_train.face import landmarks as lm
from lp_train.keypoints import rotation_matrix

PERM = np.asarray(lm.FLIP_PERMUTATION)


@pytest.fixture(scope="module")
def mesh():
    mp = pytest.importorskip("mediapipe")
    with mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True, max_num_faces=1) as fm:

        def run(rgb: np.ndarray) -> np.ndarray:
            res = fm.process(np.ascontiguousarray(rgb)).multi_face_landmarks
            assert res, "no face found"
            return np.array([[p.x, p.y] for p in res[0].landmark], dtype=np.float32)

        yield run


def _image(faces_dir, name: str) -> np.ndarray:
    """A portrait as a square RGB image (centre crop), so normalised x and y have the same scale."""
    bgr = cv2.imread(str(faces_dir / "images" / name))
    h, w = bgr.shape[:2]
    s = min(h, w)
    bgr = bgr[(h - s) // 2 : (h - s) // 2 + s, (w - s) // 2 : (w - s) // 2 + s]
    return cv2.cvtColor(cv2.resize(bgr, (512, 512), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)


def test_index_tables_match_mediapipe():
    fm = pytest.importorskip("mediapipe").solutions.face_mesh
    pts = lambda conns: {i for e in conns for i in e}  # noqa: E731
    assert set(lm.LEFT_EYE) == pts(fm.FACEMESH_LEFT_EYE) and set(lm.RIGHT_EYE) == pts(fm.FACEMESH_RIGHT_EYE)
    assert set(lm.LEFT_IRIS[1:]) == pts(fm.FACEMESH_LEFT_IRIS) and set(lm.RIGHT_IRIS[1:]) == pts(fm.FACEMESH_RIGHT_IRIS)
    assert set(lm.LIPS_OUTER + lm.LIPS_INNER) == pts(fm.FACEMESH_LIPS)
    assert set(lm.FACE_OVAL) == pts(fm.FACEMESH_FACE_OVAL)
    for contour in (lm.LEFT_EYE, lm.RIGHT_EYE, lm.LIPS_OUTER, lm.LIPS_INNER, lm.FACE_OVAL):  # consecutive = edges
        edges = {frozenset(e) for e in fm.FACEMESH_TESSELATION} | {frozenset(e) for e in fm.FACEMESH_CONTOURS}
        assert all(frozenset((a, b)) in edges for a, b in zip(contour, contour[1:] + contour[:1], strict=True))


def test_flip_permutation_is_an_involution_that_swaps_sides():
    assert sorted(PERM) == list(range(lm.NUM_LANDMARKS))
    assert (PERM[PERM] == np.arange(lm.NUM_LANDMARKS)).all()
    assert [PERM[i] for i in lm.RIGHT_EYE] == list(lm.LEFT_EYE)  # contour order is mirrored point by point
    assert [PERM[i] for i in lm.RIGHT_IRIS] == [473, 476, 475, 474, 477]  # right<->left in the image
    assert set(PERM[list(lm.LIPS_OUTER)]) == set(lm.LIPS_OUTER) and set(PERM[list(lm.FACE_OVAL)]) == set(lm.FACE_OVAL)
    assert PERM[1] == 1 and PERM[152] == 152 and PERM[61] == 291
    for (a, b), (c, d) in zip(lm.RIGHT_EYE_LIDS, lm.LEFT_EYE_LIDS, strict=True):
        assert (PERM[a], PERM[b]) == (c, d)
    assert sorted(PERM[list(lm.GUIDE_LANDMARKS)]) == sorted(lm.GUIDE_LANDMARKS)
    basis = {int(r[0]): np.array(r[2:]) for r in lm.POSE_BASIS}  # canonical model is mirror-symmetric
    for i, p in basis.items():
        np.testing.assert_allclose(basis[PERM[i]], p * [-1, 1, 1], atol=1e-6)


def test_flip_landmarks_numpy_torch_and_twice_is_identity():
    x = np.random.default_rng(0).random((2, lm.NUM_LANDMARKS, 2)).astype(np.float32)
    f = lm.flip_landmarks(x)
    np.testing.assert_allclose(f[:, 263], np.stack([1 - x[:, 33, 0], x[:, 33, 1]], -1))
    np.testing.assert_allclose(lm.flip_landmarks(f), x, atol=1e-7)
    np.testing.assert_allclose(lm.flip_landmarks(torch.from_numpy(x)).numpy(), f)
    np.testing.assert_allclose(lm.eye_open_ratio(f), lm.eye_open_ratio(x)[:, ::-1], rtol=1e-5)


def test_flip_matches_mediapipe_on_a_mirrored_photo(lp_data_faces_dir, mesh):
    img = _image(lp_data_faces_dir, "s1.jpg")
    a, b = mesh(img), mesh(img[:, ::-1])
    err = np.abs(lm.flip_landmarks(a) - b).max(-1)  # normalised units
    assert np.median(err) < 0.004 and err[list(lm.LEFT_EYE + lm.RIGHT_EYE + lm.LEFT_IRIS + lm.RIGHT_IRIS)].max() < 0.01
    assert np.median(np.abs(a - b).max(-1)) > 0.02  # without the flip the points would not match


def test_ratios_numpy_torch_agree_and_are_differentiable():
    x = np.random.default_rng(1).random((3, lm.NUM_LANDMARKS, 2)).astype(np.float32)
    t = torch.from_numpy(x).double().requires_grad_()
    eye, lip = lm.eye_open_ratio(t), lm.lip_open_ratio(t)
    assert eye.shape == (3, 2) and lip.shape == (3, 1)
    np.testing.assert_allclose(eye.detach().numpy(), lm.eye_open_ratio(x), rtol=1e-4)
    np.testing.assert_allclose(lip.detach().numpy(), lm.lip_open_ratio(x), rtol=1e-4)
    (eye.sum() + lip.sum()).backward()
    assert torch.isfinite(t.grad).all() and t.grad[:, list(lm.LEFT_EYE_CORNERS)].abs().sum() > 0
    with pytest.raises(ValueError, match="478"):
        lm.eye_open_ratio(np.zeros((468, 2)))


def test_ratios_follow_eye_and_mouth_opening():
    from lp_train.data.synthetic import SyntheticPairs, face_points

    ds, r = SyntheticPairs(), np.random.default_rng(0)
    frame = ds.random_frame(r)
    closed = face_points(ds.identity_style(0), {**frame, "left_open": 0.0, "right_open": 1.0, "mouth_open": 0.0})
    opened = face_points(ds.identity_style(0), {**frame, "left_open": 1.0, "right_open": 0.0, "mouth_open": 1.0})
    (lc, rc), (lo, ro) = lm.eye_open_ratio(closed), lm.eye_open_ratio(opened)
    assert lc < 0.08 < 0.2 < lo and ro < 0.08 < 0.2 < rc
    assert lm.lip_open_ratio(closed)[0] < 0.05 < 0.3 < lm.lip_open_ratio(opened)[0]


def test_region_boxes_and_masks():
    from lp_train.data.synthetic import SyntheticPairs, face_points

    ds = SyntheticPairs()
    pts = face_points(ds.identity_style(0), ds.random_frame(np.random.default_rng(3)))
    boxes = lm.region_boxes(pts)
    assert boxes.shape == (3, 4) and (boxes[:, 2:] > boxes[:, :2]).all()
    for box, idx in zip(boxes, (range(468), lm.LEFT_EYE + lm.RIGHT_EYE, lm.LIPS_OUTER), strict=True):
        p = pts[list(idx)]
        assert (p >= box[:2]).all() and (p <= box[2:]).all()
    face, eyes, lips = boxes
    assert (eyes[:2] >= face[:2]).all() and (lips[2:] <= face[2:]).all() and eyes[3] < lips[1]  # eyes above lips
    masks = lm.boxes_to_masks(boxes, 128)
    np.testing.assert_allclose(
        masks.sum((1, 2)) / 128**2, (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), atol=0.03
    )
    np.testing.assert_array_equal(lm.boxes_to_masks(torch.from_numpy(boxes), 128).numpy(), masks)
    assert lm.region_boxes(torch.from_numpy(pts)).shape == (3, 4)


@pytest.mark.parametrize("angles", [(10.0, -25.0, 7.0), (-15.0, 30.0, -12.0), (0.0, 0.0, 0.0), (25.0, 5.0, 20.0)])
def test_head_pose_recovers_projected_canonical_face(angles):
    idx, _, pts = lm._canonical_lp_frame()
    rot = rotation_matrix(*(torch.tensor([a]) for a in angles))[0].T.double().numpy()  # R = Rz Ry Rx
    full = np.full((lm.NUM_LANDMARKS, 2), 0.5)
    full[idx] = 0.025 * (pts @ rot.T)[:, :2] + [0.48, 0.53]
    np.testing.assert_allclose(lm.head_pose_from_landmarks(full), angles, atol=0.05)
    batch = np.stack([full, lm.flip_landmarks(full)])
    pose = lm.head_pose_from_landmarks(torch.from_numpy(batch))
    np.testing.assert_allclose(pose[1].numpy(), [angles[0], -angles[1], -angles[2]], atol=0.05)  # mirror: -yaw, -roll


def test_head_pose_on_real_photos(lp_data_faces_dir, mesh):
    frontal, right, left = (mesh(_image(lp_data_faces_dir, n)) for n in ("s0.jpg", "d12.jpg", "s8.jpg"))
    p0, p1, p2 = (lm.head_pose_from_landmarks(x) for x in (frontal, right, left))
    np.testing.assert_array_equal(p0, lm.head_pose_from_landmarks(frontal.copy()))  # same frame, same pose
    assert abs(p0[1]) < 8 and abs(p0[2]) < 8
    assert p1[1] < -15 and p2[1] > 15  # d12 turns to the image right (-yaw), s8 to the image left (+yaw)
    assert p1[0] < -5  # d12 looks up: negative pitch
    pf = lm.head_pose_from_landmarks(lm.flip_landmarks(right))
    np.testing.assert_allclose(pf, p1 * [1, -1, -1], atol=1e-3)
