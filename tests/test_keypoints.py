"""Keypoint math (LivePortrait's conventions, ``lp_train/keypoints.py``: 66 pose bins,
R = Rz·Ry·Rx used transposed, x = s(x_c Rᵀ + δ) + t with t_z = 0)."""

from __future__ import annotations

import math

import pytest
import torch

from lp_train import keypoints as K


def test_bins_to_degrees_hand_cases():
    one_hot = torch.full((3, 66), -1e4)
    for row, i in enumerate((0, 32, 65)):
        one_hot[row, i] = 1e4
    torch.testing.assert_close(K.headpose_bins_to_degrees(one_hot), torch.tensor([-97.5, -1.5, 97.5]))
    # uniform logits -> mean bin 32.5 -> 0 degrees
    torch.testing.assert_close(K.headpose_bins_to_degrees(torch.zeros(1, 66)), torch.zeros(1))
    assert K.degrees_to_bin(torch.tensor([-97.5, -1.5, 97.5])).tolist() == [0, 32, 65]
    with pytest.raises(ValueError, match="66"):
        K.headpose_bins_to_degrees(torch.zeros(1, 65))


def test_rotation_matrix_order_and_transpose():
    z = torch.zeros(1)
    # yaw 90 about y: R_y maps x -> -z; as a row vector x @ Rᵀ gives R x
    r = K.rotation_matrix(z, torch.tensor([90.0]), z)
    torch.testing.assert_close(torch.tensor([[1.0, 0, 0]]) @ r[0], torch.tensor([[0.0, 0, -1]]), atol=1e-6, rtol=0)
    # composition: R = Rz(roll) Ry(yaw) Rx(pitch)
    p, y, rl = torch.tensor([10.0]), torch.tensor([-25.0]), torch.tensor([40.0])
    full = K.rotation_matrix(p, y, rl)[0].T
    rx = K.rotation_matrix(p, z, z)[0].T
    ry = K.rotation_matrix(z, y, z)[0].T
    rz = K.rotation_matrix(z, z, rl)[0].T
    torch.testing.assert_close(full, rz @ ry @ rx)
    torch.testing.assert_close(full @ full.T, torch.eye(3), atol=1e-6, rtol=0)
    assert math.isclose(torch.linalg.det(full).item(), 1.0, abs_tol=1e-6)


def test_transform_keypoints_hand_case():
    kp = torch.tensor([[[0.1, 0.2, 0.3], [-0.4, 0.0, 0.5]]])
    rot = torch.eye(3)[None]
    exp = torch.full_like(kp, 0.01)
    x = K.transform_keypoints(kp, rot, exp, torch.tensor([[2.0]]), torch.tensor([[0.5, -0.5, 9.0]]))
    want = 2 * (kp + 0.01) + torch.tensor([0.5, -0.5, 0.0])  # t_z ignored
    torch.testing.assert_close(x, want)


def test_apply_stitching_offsets_and_shift():
    x_d = torch.zeros(1, 21, 3)
    delta = torch.zeros(1, 65)
    delta[0, :63] = torch.arange(63.0) / 100
    delta[0, 63:] = torch.tensor([1.0, 2.0])
    out = K.apply_stitching(x_d, delta)
    torch.testing.assert_close(out[0, :, 2], (torch.arange(63.0) / 100).view(21, 3)[:, 2])
    torch.testing.assert_close(out[0, :, 0], (torch.arange(63.0) / 100).view(21, 3)[:, 0] + 1)
    torch.testing.assert_close(out[0, :, 1], (torch.arange(63.0) / 100).view(21, 3)[:, 1] + 2)
    with pytest.raises(ValueError, match="65"):
        K.apply_stitching(x_d, torch.zeros(1, 63))
    assert K.stitching_input(x_d, x_d).shape == (1, 126)
    assert K.retarget_input(x_d, torch.zeros(1, 3)).shape == (1, 66)


def _info(b: int, seed: int) -> K.MotionInfo:
    g = torch.Generator().manual_seed(seed)
    raw = {
        "kp": torch.randn(b, 63, generator=g) * 0.3,
        "exp": torch.randn(b, 63, generator=g) * 0.05,
        "pitch": torch.randn(b, 66, generator=g),
        "yaw": torch.randn(b, 66, generator=g),
        "roll": torch.randn(b, 66, generator=g),
        "t": torch.randn(b, 3, generator=g) * 0.1,
        "scale": 1 + torch.rand(b, 1, generator=g),
    }
    return K.parse_motion(raw)


def test_relative_motion_identity_when_driver_does_not_move():
    src, drv = _info(2, 0), _info(2, 1)
    torch.testing.assert_close(K.relative_motion(src, drv, drv), K.keypoints_from_motion(src), atol=1e-6, rtol=0)


def test_motion_info_split_and_parse_errors():
    info = _info(4, 2)
    a, b = info.split(2)
    assert a.kp.shape == (2, 21, 3) and b.pitch.shape == (2,)
    torch.testing.assert_close(torch.cat([a.exp, b.exp]), info.exp)
    with pytest.raises(KeyError, match="scale"):
        K.parse_motion({k: v for k, v in vars(info).items() if k in ("kp", "exp")})
