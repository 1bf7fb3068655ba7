"""Network contracts (issue: foundation): exact parameter counts, forward shapes, gradients, bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lp_train.models.appearance_encoder import AppearanceFeatureExtractor
from lp_train.models.discriminator import MultiScaleDiscriminator
from lp_train.models.motion_extractor import MotionExtractor
from lp_train.models.spade_generator import SPADEDecoder
from lp_train.models.stitching import StitchingRetargeting
from lp_train.models.warping import WarpingNetwork

CONF = Path(__file__).resolve().parents[1] / "conf"


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def build(name: str):
    with initialize_config_dir(config_dir=str(CONF / "model"), version_base="1.3"):
        return instantiate(compose(config_name=name))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build("tiny")


def test_official_parameter_counts_match_the_release():
    """Parameter counts measured from the official code at the released config."""
    stitch = StitchingRetargeting()
    assert n_params(AppearanceFeatureExtractor()) == 836_224
    assert n_params(MotionExtractor()) == 28_118_728
    assert n_params(WarpingNetwork()) == 45_529_829
    assert n_params(SPADEDecoder()) == 55_365_388
    assert n_params(stitch.stitching) == 45_249
    assert n_params(stitch.lip) == 37_311
    assert n_params(stitch.eye) == 144_703


def test_official_config_builds_the_same_counts():
    net = build("official")
    counts = {name: n_params(m) for name, m in net.named_children()}
    assert counts == {
        "appearance_feature_extractor": 836_224,
        "motion_extractor": 28_118_728,
        "warping_module": 45_529_829,
        "spade_generator": 55_365_388,
        "stitching_retargeting_module": 45_249 + 37_311 + 144_703,
    }


def test_official_forward_shapes_at_256():
    """F 32x16x64x64, M heads, W 256x64x64 + deformation + occlusion, G 3x512x512 in [0, 1]."""
    torch.manual_seed(0)
    f, m, w, g = AppearanceFeatureExtractor(), MotionExtractor(), WarpingNetwork(), SPADEDecoder()
    for net in (f, m, w, g):
        net.eval()
    x = torch.rand(1, 3, 256, 256)
    with torch.no_grad():
        f_s = f(x)
        assert f_s.shape == (1, 32, 16, 64, 64)
        raw = m(x)
        assert {k: tuple(v.shape) for k, v in raw.items()} == {
            "kp": (1, 63),
            "exp": (1, 63),
            "pitch": (1, 66),
            "yaw": (1, 66),
            "roll": (1, 66),
            "t": (1, 3),
            "scale": (1, 1),
        }
        kp = torch.rand(1, 21, 3) * 2 - 1
        out = w(f_s, kp_source=kp, kp_driving=kp + 0.05)
        assert out["out"].shape == (1, 256, 64, 64)
        assert out["deformation"].shape == (1, 16, 64, 64, 3)
        assert out["occlusion_map"].shape == (1, 1, 64, 64)
        assert out["mask"].shape == (1, 22, 16, 64, 64)
        torch.testing.assert_close(out["mask"].sum(1), torch.ones(1, 16, 64, 64))
        img = g(out["out"])
    assert img.shape == (1, 3, 512, 512)
    assert 0 <= img.min() and img.max() <= 1
    assert torch.isfinite(img).all()


def test_identity_motion_gives_identity_flow(tiny):
    """With x_d == x_s every sparse motion is the identity grid, so the dense flow is the identity."""
    tiny.eval()
    f_s = torch.randn(1, 4, 16, 16, 16)
    kp = torch.rand(1, 21, 3) * 1.6 - 0.8
    with torch.no_grad():
        out = tiny.warping_module(f_s, kp_source=kp, kp_driving=kp)
    from lp_train.models.blocks import make_coordinate_grid

    grid = make_coordinate_grid((16, 16, 16), f_s)
    torch.testing.assert_close(out["deformation"][0], grid, atol=1e-5, rtol=0)


def test_tiny_full_chain_shapes_and_every_parameter_gets_a_gradient(tiny):
    tiny.train()
    tiny.zero_grad()
    s, d = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    out = tiny(s, d)
    assert out["image"].shape == (2, 3, 128, 128)
    assert out["f_s"].shape == (2, 4, 16, 16, 16)
    assert out["x_s"].shape == out["x_d"].shape == (2, 21, 3)
    assert out["warped"].shape == (2, 32, 16, 16)
    loss = out["image"].mean() + out["x_d"].abs().mean() + out["drv"].pitch_logits.mean()
    loss = loss + out["drv"].yaw_logits.mean() + out["drv"].roll_logits.mean()
    # stage-2 heads get their gradients from stage-2 losses; exercise them here so DDP never sees unused params
    heads = tiny.stitching_retargeting_module
    for p in heads.parameters():
        torch.nn.init.normal_(p, std=0.1)
    x = out["x_s"].flatten(1).detach()
    loss = loss + heads.stitching(torch.cat([x, x], 1)).sum()
    loss = loss + heads.lip(torch.cat([x, x[:, :2]], 1)).sum() + heads.eye(torch.cat([x, x[:, :3]], 1)).sum()
    loss.backward()
    no_grad = [n for n, p in tiny.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert no_grad == []
    zero = [n for n, p in tiny.named_parameters() if p.grad.abs().sum() == 0]
    # GRN gamma/beta start at zero, so their inputs' grads are zero only for other params; the GRN params
    # themselves must still receive non-zero gradients.
    assert zero == [], zero


def test_discriminator_returns_logits_and_features():
    disc = MultiScaleDiscriminator(scales=2, block_expansion=8, num_blocks=3, max_features=32)
    outs = disc(torch.rand(2, 3, 64, 64))
    assert len(outs) == 2
    logits, feats = outs[0]
    assert logits.shape[:2] == (2, 1) and len(feats) == 3
    assert outs[1][0].shape[-1] < logits.shape[-1]  # coarser scale
    assert any("weight_orig" in k for k in disc.state_dict())  # spectral norm


def test_zero_init_heads_are_exact_no_ops():
    heads = StitchingRetargeting(zero_init=True)
    x = torch.randn(3, 126)
    assert torch.equal(heads.stitching(x), torch.zeros(3, 65))
    assert torch.equal(heads.lip(torch.randn(3, 65)), torch.zeros(3, 63))
    assert torch.equal(heads.eye(torch.randn(3, 66)), torch.zeros(3, 63))
    # ... and they can learn: one SGD step makes Δ depend on the input (an all-zero MLP never would)
    opt = torch.optim.SGD(heads.stitching.parameters(), lr=0.1)
    (heads.stitching(x) - 1).pow(2).mean().backward()
    opt.step()
    a, b = heads.stitching(x[:1]), heads.stitching(x[1:2])
    assert not torch.allclose(a, b)


@pytest.mark.parametrize(
    "bad, match",
    [
        (torch.rand(1, 1, 64, 64), "expected shape"),  # wrong channels
        (torch.rand(1, 3, 80, 80), "expected shape"),  # wrong size
        (torch.rand(3, 64, 64), "expected shape"),  # no batch axis
        (torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.uint8), "float"),  # wrong dtype
    ],
)
def test_bad_images_are_rejected_with_a_clear_error(tiny, bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        tiny(bad, bad)


def test_bad_keypoints_are_rejected(tiny):
    f_s = torch.randn(1, 4, 16, 16, 16)
    with pytest.raises(ValueError, match="kp_driving"):
        tiny.warping_module(f_s, kp_source=torch.zeros(1, 21, 3), kp_driving=torch.zeros(1, 20, 3))
    with pytest.raises(ValueError, match=r"\(B, 126\)"):
        tiny.stitching_retargeting_module.stitching(torch.zeros(1, 125))
