"""Keypoint-side stage-1 losses on hand-computable cases: values and gradients (L_E, L_L, L_Δ, L_H, L_guide)."""

from __future__ import annotations

import math

import pytest
import torch

from lp_train.keypoints import parse_motion
from lp_train.losses import (
    DeformationPriorLoss,
    EquivarianceLoss,
    HeadPoseLoss,
    KeypointPriorLoss,
    LandmarkGuideLoss,
    RandomTPS,
    wing,
)
from lp_train.losses.guide import GUIDE_KEYPOINTS


def _translation(b: int, tx: float, ty: float) -> RandomTPS:
    theta = torch.tensor([[1.0, 0.0, tx], [0.0, 1.0, ty]]).expand(b, 2, 3).clone()
    return RandomTPS.from_params(theta)


def test_equivariance_zero_for_equivariant_keypoints_and_hand_value_otherwise():
    kp = torch.rand(2, 5, 3) * 2 - 1
    t = _translation(2, 0.1, -0.2)
    # keypoints of the warped frame sit at p' with T(p') = p, i.e. p' = p - (tx, ty)
    warped = kp.clone()
    warped[..., 0] -= 0.1
    warped[..., 1] += 0.2
    loss = EquivarianceLoss()
    assert loss(kp, warped, t).item() == pytest.approx(0.0, abs=1e-6)
    # a detector that ignores the warp: |p - T(p)| = (0.1, 0.2) -> mean 0.15
    kp = kp.requires_grad_()
    value = loss(kp, kp.detach(), t)
    assert value.item() == pytest.approx(0.15, abs=1e-6)
    value.backward()
    # d/dp |p - (p_fixed + t)|: sign(-t) / (B * K * 2)
    expected = torch.tensor([-1.0, 1.0]) / (2 * 5 * 2)
    assert torch.allclose(kp.grad[..., :2], expected.expand(2, 5, 2))
    assert torch.all(kp.grad[..., 2] == 0)


def test_equivariance_gradcheck_with_tps():
    g = torch.Generator().manual_seed(0)
    t = RandomTPS(2, sigma_affine=0.1, sigma_tps=0.01, points_tps=3, dtype=torch.float64, generator=g)
    kp = torch.rand(2, 4, 3, dtype=torch.float64, requires_grad=True)
    kw = torch.rand(2, 4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: EquivarianceLoss()(a, b, t), (kp, kw))


@pytest.mark.parametrize("tps", [False, True])
def test_transform_frame_moves_content_as_warp_coordinates_says(tps):
    """A blob at p in the frame appears at p' with T(p') = p in the warped frame."""
    g = torch.Generator().manual_seed(1)
    t = RandomTPS(1, sigma_affine=0.08, sigma_tps=0.01 if tps else 0, points_tps=5, generator=g)
    h = w = 65
    p = torch.tensor([0.2, -0.3])
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    frame = torch.exp(-((xs - p[0]) ** 2 + (ys - p[1]) ** 2) / (2 * 0.05**2))[None, None]
    warped = t.transform_frame(frame)[0, 0]
    wgt = warped / warped.sum()
    found = torch.stack([(wgt * xs).sum(), (wgt * ys).sum()])  # centroid p' of the warped blob
    back = t.warp_coordinates(found.view(1, 1, 2))[0, 0]
    assert torch.allclose(back, p, atol=2.0 / (w - 1)), (back, p)


def test_keypoint_prior_hand_value_and_gradient():
    kp = torch.tensor([[[0.0, 0.0, 0.33], [0.2, 0.0, 0.33], [5.0, 5.0, 0.33]]], requires_grad=True)
    loss = KeypointPriorLoss(distance_threshold=0.1, depth_target=0.33)(kp)
    # only the (0, 1) pair is closer than sqrt(0.1): ordered pairs count twice: 2 * (0.1 - 0.04)
    assert loss.item() == pytest.approx(0.12, abs=1e-6)
    loss.backward()
    # d/dx1 of 2 * (0.1 - (x1 - x0)^2) = -4 (x1 - x0) = -0.8; x0 gets +0.8
    assert kp.grad[0, 1, 0].item() == pytest.approx(-0.8, abs=1e-5)
    assert kp.grad[0, 0, 0].item() == pytest.approx(0.8, abs=1e-5)
    # depth term: |mean z - z_t|
    far = torch.tensor([[[0.0, 0.0, 0.0], [3.0, 0.0, 1.0]]])
    assert KeypointPriorLoss(0.1, 0.33)(far).item() == pytest.approx(abs(0.5 - 0.33), abs=1e-6)


def test_deformation_prior_is_mean_abs_with_sign_gradient():
    d1 = torch.tensor([[[0.5, -0.25, 0.0]]], requires_grad=True)
    d2 = torch.tensor([[[1.0, 1.0, -1.0]]], requires_grad=True)
    loss = DeformationPriorLoss()(d1, d2)
    assert loss.item() == pytest.approx((0.25 + 1.0) / 2)
    loss.backward()
    assert torch.allclose(d1.grad, torch.tensor([[[1.0, -1.0, 0.0]]]) / 6)
    assert torch.allclose(d2.grad, torch.tensor([[[1.0, 1.0, -1.0]]]) / 6)


def _motion(pitch_bin: int, b: int = 2) -> object:
    logits = torch.zeros(b, 66)
    logits[:, pitch_bin] = 50.0  # ~one-hot: degrees = 3 * bin - 97.5
    raw = {
        "kp": torch.zeros(b, 63),
        "exp": torch.zeros(b, 63),
        "pitch": logits.clone().requires_grad_(),
        "yaw": torch.zeros(b, 66, requires_grad=True),  # uniform: 3 * 32.5 - 97.5 = 0
        "roll": torch.zeros(b, 66, requires_grad=True),
        "t": torch.zeros(b, 3),
        "scale": torch.ones(b, 1),
    }
    return parse_motion(raw), raw


def test_head_pose_loss_hand_value_and_gradient():
    motion, raw = _motion(pitch_bin=40)  # pitch = 22.5 deg, yaw = roll = 0
    target = torch.tensor([[20.0, 3.0, -3.0]]).expand(2, 3)
    loss = HeadPoseLoss(l1_weight=1.0, ce_weight=0.0)(motion, target)
    expected = (2.5 + 3.0 + 3.0) / 3 * math.pi / 180
    assert loss.item() == pytest.approx(expected, rel=1e-4)
    loss.backward()
    # uniform yaw logits with yaw < target: the gradient raises the expected bin (pushes mass to higher bins)
    g = raw["yaw"].grad[0]
    assert g[-1] < 0 < g[0]
    # cross-entropy on uniform logits = ln(66)
    motion, _ = _motion(pitch_bin=40)
    ce_only = HeadPoseLoss(l1_weight=0.0, ce_weight=1.0)(motion, torch.zeros(2, 3))
    assert ce_only.item() == pytest.approx((50.0 * 0 + math.log(66) * 2 + _ce_onehot_wrong()) / 3, rel=1e-3)


def _ce_onehot_wrong() -> float:
    """CE of a logit-50 one-hot on bin 40 when the target bin is 33 (0 deg)."""
    logits = torch.zeros(1, 66)
    logits[0, 40] = 50.0
    return torch.nn.functional.cross_entropy(logits, torch.tensor([33])).item()


def test_head_pose_loss_rejects_bad_target():
    motion, _ = _motion(10)
    with pytest.raises(ValueError, match="pitch, yaw, roll"):
        HeadPoseLoss()(motion, torch.zeros(2, 2))


def test_wing_values_and_continuity():
    w, eps = 10.0, 2.0
    assert wing(torch.tensor(0.0), w, eps).item() == 0.0
    assert wing(torch.tensor(2.0), w, eps).item() == pytest.approx(10 * math.log(2), rel=1e-6)
    c = w - w * math.log(1 + w / eps)
    assert wing(torch.tensor(15.0), w, eps).item() == pytest.approx(15 - c, rel=1e-6)
    left, right = wing(torch.tensor(w - 1e-4), w, eps), wing(torch.tensor(w + 1e-4), w, eps)
    assert abs(left.item() - right.item()) < 1e-3


def test_guide_loss_hand_value_and_gradient():
    lmk = torch.full((1, 478, 2), 0.5)  # every landmark at the image centre = keypoint-grid (0, 0)
    kp = torch.zeros(1, 21, 3)
    kp[0, GUIDE_KEYPOINTS[0], 0] = 2.0 / 128  # 2 px right at pixel_scale 128
    kp.requires_grad_()
    loss = LandmarkGuideLoss()(kp, lmk)
    # one coordinate of 20 is off by 2 px: wing = 10 ln 2
    assert loss.item() == pytest.approx(10 * math.log(2) / 20, rel=1e-5)
    loss.backward()
    # d/dx of w ln(1 + |d|/eps) = w / (eps + |d|) * scale / N = 10 / 4 * 128 / 20
    assert kp.grad[0, GUIDE_KEYPOINTS[0], 0].item() == pytest.approx(10 / 4 * 128 / 20, rel=1e-4)
    untouched = [i for i in range(21) if i not in GUIDE_KEYPOINTS]
    assert torch.all(kp.grad[0, untouched] == 0)


def test_guide_loss_validates_indices():
    with pytest.raises(ValueError, match="distinct"):
        LandmarkGuideLoss(keypoint_indices=[0, 0], landmark_indices=[1, 2])
    with pytest.raises(ValueError, match="landmark indices"):
        LandmarkGuideLoss(keypoint_indices=[0, 1], landmark_indices=[1])
