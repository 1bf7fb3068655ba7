"""Image-side stage-1 losses on hand-computable cases: region crops, cascaded perceptual, GAN + feature matching,
face identity; and the third-party networks behind them (VGG19 slices, ArcFace IResNet, Hopenet)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from lp_train.losses import (
    CascadedPerceptualLoss,
    FaceIdentityLoss,
    MultiScalePerceptualLoss,
    VGG19Features,
    arcface,
    cosine_distance,
    crop_boxes,
    discriminator_loss,
    feature_matching_loss,
    generator_loss,
    pixel_l1,
    region_crop,
)
from lp_train.losses.head_pose import PoseTeacher
from lp_train.losses.perceptual import VGG19_RELU
from lp_train.losses.regions import square_boxes
from lp_train.teachers.arcface import IResNet
from lp_train.teachers.hopenet import Hopenet


class Identity(nn.Module):
    def forward(self, x):
        return [x]


def test_crop_boxes_of_a_ramp_is_exact():
    img = torch.arange(8.0).view(1, 1, 1, 8).expand(1, 1, 8, 8).clone()  # value = x pixel index
    crop = crop_boxes(img, torch.tensor([[0.25, 0.0, 0.75, 1.0]]), size=4, square=False)
    # 4 bins over pixels [2, 6): centres 2.5 .. 5.5 in continuous coordinates = pixel indices 2 .. 5
    assert torch.allclose(crop[0, 0, 0], torch.tensor([2.0, 3.0, 4.0, 5.0]))
    assert torch.allclose(square_boxes(torch.tensor([0.2, 0.4, 0.6, 0.5])), torch.tensor([0.2, 0.25, 0.6, 0.65]))


def test_region_crop_is_differentiable_and_validates_boxes():
    img = torch.rand(2, 3, 32, 32, requires_grad=True)
    boxes = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.2, 0.3, 0.8, 0.4], [0.3, 0.6, 0.7, 0.8]]).expand(2, 3, 4)
    crop = region_crop(img, boxes, "lips", 8)
    assert crop.shape == (2, 3, 8, 8)
    crop.sum().backward()
    assert img.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="face, eyes, lips"):
        region_crop(img, boxes[:, :2], "face", 8)
    with pytest.raises(KeyError):
        region_crop(img, boxes, "nose", 8)


def test_pixel_l1_hand_value_and_gradient():
    pred = torch.tensor([[0.0, 1.0], [0.5, 0.25]], requires_grad=True)
    target = torch.tensor([[1.0, 1.0], [0.0, 0.5]], requires_grad=True)
    loss = pixel_l1(pred, target)
    assert loss.item() == pytest.approx((1 + 0 + 0.5 + 0.25) / 4)
    loss.backward()
    assert torch.allclose(pred.grad, torch.tensor([[-1.0, 0.0], [1.0, -1.0]]) / 4) and target.grad is None
    with pytest.raises(ValueError, match="differ"):
        pixel_l1(pred, target[:1])


def test_multiscale_perceptual_hand_value_and_gradient():
    pred = torch.full((1, 3, 8, 8), 0.25, requires_grad=True)
    target = torch.full((1, 3, 8, 8), 0.75, requires_grad=True)
    loss = MultiScalePerceptualLoss(Identity(), scales=(1.0, 0.5), layer_weights=[2.0])(pred, target)
    assert loss.item() == pytest.approx(2 * (2.0 * 0.5))  # two scales, weight 2, |0.25 - 0.75|
    loss.backward()
    assert target.grad is None  # target features carry no gradient
    # d/dpred: scale 1 -> -2 / N; scale 0.5 (area-like antialiased mean) adds the same total
    assert pred.grad.sum().item() == pytest.approx(-4.0, rel=1e-4)


def test_cascaded_perceptual_adds_region_views():
    pred, target = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    boxes = torch.tensor([[0.1, 0.1, 0.9, 0.9], [0.2, 0.3, 0.8, 0.4], [0.3, 0.6, 0.7, 0.8]]).expand(2, 3, 4)
    out = CascadedPerceptualLoss(MultiScalePerceptualLoss(Identity(), scales=[1.0]), {"face": 16, "lips": 8})(
        pred, target, boxes
    )
    assert set(out) == {"full", "face", "lips"}
    assert out["full"].item() == pytest.approx((pred - target).abs().mean().item(), rel=1e-5)
    lip = (region_crop(pred, boxes, "lips", 8) - region_crop(target, boxes, "lips", 8)).abs().mean()
    assert out["lips"].item() == pytest.approx(lip.item(), rel=1e-5)


@pytest.fixture(scope="module")
def vgg():
    return VGG19Features("random", layers=("relu1_1", "relu2_1", "relu3_1"))


def test_vgg19_features_cut_at_relus(vgg):
    feats = vgg(torch.rand(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [64, 128, 256]
    assert [f.shape[-1] for f in feats] == [32, 16, 8]
    assert all(isinstance(vgg.features[i], nn.ReLU) for i in vgg.ends)
    assert len(vgg.features) == VGG19_RELU["relu3_1"] + 1
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training
    assert vgg.info.calibrated is False


def test_vgg19_perceptual_zero_on_equal_images_and_grad_on_pred(vgg):
    loss_fn = MultiScalePerceptualLoss(vgg, scales=(1.0, 0.5))
    x = torch.rand(1, 3, 32, 32)
    assert loss_fn(x, x).item() == 0.0
    pred = torch.rand(1, 3, 32, 32, requires_grad=True)
    loss_fn(pred, x).backward()
    assert pred.grad.abs().sum() > 0


def test_vgg19_loads_the_torchvision_file_through_the_registry(tmp_path, vgg):
    from torchvision.models.vgg import cfgs, make_layers

    ref = make_layers(cfgs["E"])
    for p in ref.parameters():
        p.data.normal_()
    sd = {f"features.{k}": v for k, v in ref.state_dict().items()}
    sd["classifier.0.weight"] = torch.zeros(1)  # the full torchvision file also holds the classifier: ignored
    path = tmp_path / "vgg19-dcbb9e9d.pth"
    torch.save(sd, path)
    loaded = VGG19Features(str(path), layers=("relu1_1", "relu2_1"))
    assert loaded.info.calibrated
    x = torch.rand(1, 3, 16, 16)
    norm = (x - loaded.mean) / loaded.std
    assert torch.allclose(loaded(x)[1], ref[: VGG19_RELU["relu2_1"] + 1](norm), atol=1e-5)
    del sd["features.0.weight"]
    torch.save(sd, path)
    with pytest.raises(Exception, match="missing keys"):
        VGG19Features(str(path), layers=("relu1_1",))


def test_vgg19_rejects_unknown_layers():
    with pytest.raises(ValueError, match="unknown VGG19 layers"):
        VGG19Features("random", layers=("relu9_9",))


def _out(values: list[float], feats: list[list[float]] | None = None):
    feats = feats or [[0.0]] * len(values)
    return [
        (torch.full((2, 1, 3, 3), v, requires_grad=True), [torch.full((2, 4, 3, 3), f, requires_grad=True) for f in fs])
        for v, fs in zip(values, feats, strict=True)
    ]


@pytest.mark.parametrize(
    ("kind", "d_value", "g_value"),
    [
        ("hinge", 1.0, 0.5),  # relu(1 - 0.5) + relu(1 - 0.5); -(-0.5)
        ("lsgan", 0.5, 2.25),  # (1 - 0.5)^2 + 0.25; (1 + 0.5)^2
        ("nonsaturating", 2 * math.log1p(math.exp(-0.5)), math.log1p(math.exp(0.5))),
    ],
)
def test_gan_losses_hand_values(kind, d_value, g_value):
    real, fake = _out([0.5]), _out([-0.5])
    assert discriminator_loss(real, fake, kind).item() == pytest.approx(d_value, rel=1e-6)
    assert generator_loss(fake, kind).item() == pytest.approx(g_value, rel=1e-6)


def test_gan_losses_average_scales_and_have_the_right_gradients():
    real, fake = _out([2.0, 0.0]), _out([-2.0, 0.0])
    # hinge D: scale 1 saturated (0), scale 2: 1 + 1 -> mean over scales 1.0
    assert discriminator_loss(real, fake).item() == pytest.approx(1.0)
    g = generator_loss(fake)
    g.backward()
    n = fake[0][0].numel()
    assert torch.allclose(fake[0][0].grad, torch.full_like(fake[0][0], -1.0 / n / 2))
    with pytest.raises(ValueError, match="unknown GAN loss"):
        generator_loss(fake, "wgan")


def test_feature_matching_hand_value_and_detached_real():
    real = _out([0.0], feats=[[1.0, 2.0]])
    fake = _out([0.0], feats=[[0.5, 2.5]])
    fm = feature_matching_loss(real, fake)
    assert fm.item() == pytest.approx(0.5 + 0.5)
    fm.backward()
    assert real[0][1][0].grad is None
    # d/dfake |real - fake| with fake < real: -1 / N
    assert torch.allclose(fake[0][1][0].grad, torch.full_like(fake[0][1][0], -1.0 / fake[0][1][0].numel()))


class MeanColour(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


def test_face_identity_hand_value_and_gradient_only_on_prediction():
    red = torch.zeros(1, 3, 16, 16)
    red[:, 0] = 1.0
    green = torch.zeros(1, 3, 16, 16)
    green[:, 1] = 1.0
    box = torch.tensor([[0.0, 0.0, 1.0, 1.0]])
    loss_fn = FaceIdentityLoss(MeanColour(), input_size=8)
    assert loss_fn(red, red, box).item() == pytest.approx(0.0, abs=1e-6)
    pred = (red * 0.5 + green * 0.5).requires_grad_()
    target = green.clone().requires_grad_()
    loss = loss_fn(pred, target, box)
    assert loss.item() == pytest.approx(1 - 1 / math.sqrt(2), rel=1e-5)  # cos 45 degrees
    loss.backward()
    assert pred.grad.abs().sum() > 0 and target.grad is None
    assert cosine_distance(torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])).item() == pytest.approx(1.0)


def test_arcface_iresnet_names_shapes_and_registry_round_trip(tmp_path):
    net = IResNet((1, 1, 1, 1), widths=(8, 8, 16, 16), num_features=32, input_size=32).eval()
    keys = set(net.state_dict())
    for k in ("conv1.weight", "bn1.running_mean", "prelu.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight",
              "layer1.0.prelu.weight", "layer1.0.downsample.0.weight", "layer1.0.downsample.1.weight",
              "layer4.0.bn3.weight", "bn2.weight", "fc.weight", "features.weight", "features.running_var"):  # fmt: skip
        assert k in keys, k
    x = torch.rand(2, 3, 32, 32)
    assert net(x).shape == (2, 32)
    small = IResNet((2, 2, 2, 2), widths=(8, 8, 16, 16), num_features=32, input_size=32).eval()
    path = tmp_path / "arcface_small.pth"
    torch.save(small.state_dict(), path)
    loaded = arcface(str(path), arch="r18", widths=(8, 8, 16, 16), num_features=32, input_size=32).eval()
    assert loaded.weights_info.calibrated
    assert torch.equal(loaded(x), small(x))
    with pytest.raises(RuntimeError, match="Missing key"):  # r34 has more blocks: strict load refuses the file
        arcface(str(path), arch="r34", widths=(8, 8, 16, 16), num_features=32, input_size=32)


def test_arcface_r100_layout():
    net = IResNet()
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == [3, 13, 30, 3]
    assert net.fc.in_features == 512 * 7 * 7
    with pytest.raises(ValueError, match="expects"):
        net(torch.rand(1, 3, 64, 64))


def test_hopenet_keys_and_pose_teacher_mapping():
    net = Hopenet(layers=(1, 1, 1, 1), bottleneck=False)
    keys = set(net.state_dict())
    assert {"conv1.weight", "layer4.0.conv1.weight", "fc_yaw.weight", "fc_pitch.bias", "fc_finetune.weight"} <= keys
    teacher = PoseTeacher("random", layers=(1, 1, 1, 1), bottleneck=False, input_size=32, signs=(1.0, -1.0, 1.0))
    img = torch.rand(2, 3, 64, 64)
    boxes = torch.tensor([[0.1, 0.1, 0.9, 0.9]]).expand(2, 4)
    pose = teacher(img, boxes)
    assert pose.shape == (2, 3) and not pose.requires_grad
    from lp_train.losses.regions import crop_boxes as cb

    ypr = teacher.net.degrees(cb(img, boxes, 32))
    assert torch.allclose(pose, torch.stack([ypr[:, 1], -ypr[:, 0], ypr[:, 2]], 1), atol=1e-5)
    teacher.train()
    assert not teacher.net.training
