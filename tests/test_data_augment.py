"""lp_train.data.augment: warps move landmarks with the pixels, flips remap, colour jitter matches torchvision."""

from __future__ import annotations

import kornia.geometry.linalg as KL
import numpy as np
import pytest
import torch
import torchvision.transforms.v2.functional as TF

from lp_train.data import augment as A
from lp_train.face import landmarks as lm

pytestmark = pytest.mark.usefixtures("lp_data_one_thread")


def _centroid(img: torch.Tensor) -> np.ndarray:
    ys, xs = np.nonzero(img.numpy() > 0)
    w = img.numpy()[ys, xs]
    return np.array([(xs * w).sum() / w.sum() + 0.5, (ys * w).sum() / w.sum() + 0.5])


def test_warp_moves_a_pixel_where_its_landmark_goes():
    size, rng = 96, np.random.default_rng(0)
    cfg = A.AugmentConfig(warp_rotation=30.0, warp_translate=0.1, warp_perspective=0.08)
    homographies = torch.from_numpy(np.stack([A.random_warp(rng, size, cfg) for _ in range(5)])).float()
    img = torch.zeros(5, 3, size, size)
    img[:, :, 40, 50] = 1.0  # pixel (x=50, y=40) -> normalised centre (50.5, 40.5) / size
    out = A.warp_images(img, homographies)
    for i in range(5):
        moved = A.warp_landmarks(np.array([[50.5, 40.5]]) / size, homographies[i].numpy(), size)[0] * size
        assert np.abs(_centroid(out[i, 0]) - moved).max() < 0.6
        ref = KL.transform_points(homographies[i].double()[None], torch.tensor([[[50.0, 40.0]]], dtype=torch.float64))
        np.testing.assert_allclose(moved, ref[0, 0].numpy() + 0.5, atol=1e-3)  # == kornia's transform_points


def test_identity_and_flip_homographies():
    size, img = 64, torch.rand(2, 3, 64, 64)
    cfg = A.AugmentConfig(warp_scale=(1.0, 1.0), warp_rotation=0.0, warp_translate=0.0, warp_perspective=0.0)
    np.testing.assert_allclose(A.random_warp(np.random.default_rng(0), size, cfg), np.eye(3), atol=1e-9)
    assert A.warp_images(img, torch.eye(3).expand(2, 3, 3)) is img  # identity: no resampling
    flip = torch.from_numpy(A.flip_matrix(size)).float().expand(2, 3, 3)
    torch.testing.assert_close(A.warp_images(img, flip), img.flip(-1), atol=1e-4, rtol=0)  # the flip is exact


def test_augment_pair_flip_remaps_and_keeps_pairs_consistent():
    pts = np.random.default_rng(1).random((lm.NUM_LANDMARKS, 2)).astype(np.float32)
    cfg = A.AugmentConfig(hflip_prob=1.0)
    warps, (s, d), color = A.augment_pair(np.random.default_rng(0), [pts, pts], 64, cfg, image_pair=False)
    np.testing.assert_allclose(warps[0], A.flip_matrix(64), atol=1e-6)
    np.testing.assert_allclose(warps[1], warps[0])  # video pair: both frames flipped alike
    np.testing.assert_allclose(s, lm.flip_landmarks(pts), atol=1e-5)  # homography flip + index remap
    np.testing.assert_array_equal(color[0], color[1])  # shared colour jitter
    warps, (s, d), color = A.augment_pair(np.random.default_rng(0), [pts, pts], 64, cfg, True, shared_color=False)
    assert not np.allclose(warps[0], warps[1]) and not np.allclose(s, d) and not np.allclose(color[0], color[1])


def test_color_jitter_matches_torchvision_and_keeps_gray():
    img = torch.rand(3, 32, 32) * 0.6 + 0.2  # no clamping inside torchvision's chain
    b, c, s = 1.1, 0.85, 1.2
    ref = TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(img, b), c), s)
    torch.testing.assert_close(A.color_jitter(img, (b, c, s, 0.0)), ref.clamp(0, 1), atol=2e-3, rtol=0)
    gray = torch.full((3, 8, 8), 0.4)
    torch.testing.assert_close(A.color_jitter(gray, (1.0, 1.0, 1.0, 0.05)), gray, atol=1e-6, rtol=0)
    red = torch.zeros(3, 4, 4)
    red[0] = 0.8
    shifted = A.color_jitter(red, (1.0, 1.0, 1.0, 0.1))
    luma = torch.tensor([0.299, 0.587, 0.114]) @ shifted.mean((1, 2))
    assert shifted[1:].mean() > 0.05 and abs(float(luma) - 0.8 * 0.299) < 0.1  # hue moved, luma about kept
    torch.testing.assert_close(A.color_jitter(img, A.NO_JITTER), img, atol=1e-6, rtol=0)
    params = torch.tensor([[b, c, s, 0.03], [0.9, 1.1, 0.8, -0.02]])
    both = A.color_jitter(torch.stack([img, img]), params)  # batched: one colour map per image
    for i in range(2):
        torch.testing.assert_close(both[i], A.color_jitter(img, params[i]), atol=1e-6, rtol=0)
