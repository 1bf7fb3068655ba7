"""FID (issue 5, Must show 1-2): our Fréchet distance vs pytorch-fid's ``calculate_frechet_distance`` (<= 1e-3) on
random and real-image features, our Inception features vs pytorch-fid's own InceptionV3 on the same weights file,
reference-statistics caching, DDP-style state reduction, and sanity (same set ~ 0, degraded set worse)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from pytorch_fid.fid_score import calculate_frechet_distance

from lp_train.metrics.fid import FID, frechet_distance, reference_stats, stats_from_features
from lp_train.metrics.inception import FIDInception, fid_inception_v3

FACES = Path(__file__).resolve().parents[1] / "../shared/data/faces"


def real_images(size: int = 128) -> torch.Tensor:
    files = sorted((FACES / "images").glob("*.jpg"))
    if len(files) < 10:
        pytest.skip(f"real test faces not found at {FACES.resolve()}")
    imgs = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA)
            for f in files]  # fmt: skip
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def inception_file(tmp_path_factory) -> Path:
    """A (seeded random) FID-Inception state dict under pytorch-fid's file name in a torch-hub cache folder."""
    home = tmp_path_factory.mktemp("torch_home")
    path = home / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
    path.parent.mkdir(parents=True)
    torch.save(fid_inception_v3(None).state_dict(), path)
    return path


@pytest.mark.parametrize("dims,n", [(64, 500), (128, 300)])
def test_frechet_distance_agrees_with_pytorch_fid_random(dims, n):
    rng = np.random.default_rng(dims)
    x = rng.normal(size=(n, dims))
    y = rng.normal(size=(n, dims)) @ (np.eye(dims) + 0.1 * rng.normal(size=(dims, dims))) + 0.3
    m1, s1 = stats_from_features(x)
    m2, s2 = stats_from_features(y)
    assert abs(frechet_distance(m1, s1, m2, s2) - calculate_frechet_distance(m1, s1, m2, s2)) <= 1e-3
    assert abs(frechet_distance(m1, s1, m1, s1)) <= 1e-6


def test_inception_features_match_pytorch_fid_and_fid_agrees_on_real_images(inception_file, monkeypatch):
    """Same weights file: pytorch-fid's InceptionV3 (loading it from its torch-hub cache, no download) and ours give
    the same features; the FD of real-image features agrees with pytorch-fid's."""
    from pytorch_fid.inception import InceptionV3

    monkeypatch.setenv("TORCH_HOME", str(inception_file.parents[2]))
    ref = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[64]]).eval()
    ours = FIDInception(str(inception_file), dims=64)
    imgs = real_images()
    with torch.no_grad():
        expected = torch.nn.functional.adaptive_avg_pool2d(ref(imgs)[0], 1).flatten(1)
    feats = ours(imgs)
    torch.testing.assert_close(feats, expected, atol=1e-5, rtol=1e-5)
    assert ours.info()["calibrated"] is True
    # more samples than dims: real images plus flips / crops of them
    crops = torch.nn.functional.interpolate(imgs[:, :, 8:-8, 8:-8], size=imgs.shape[-2:], mode="bilinear")
    aug = torch.cat([imgs, imgs.flip(3), crops, imgs.flip(2)])
    other = torchvision.transforms.functional.gaussian_blur(aug, [7, 7], [3.0, 3.0])
    f1, f2 = ours(aug).double().numpy(), ours(other).double().numpy()
    m1, s1 = stats_from_features(f1)
    m2, s2 = stats_from_features(f2)
    assert abs(frechet_distance(m1, s1, m2, s2) - calculate_frechet_distance(m1, s1, m2, s2)) <= 1e-3


def test_fid_metric_sanity_reduction_and_cache(tmp_path):
    fid = FID(weights="random", dims=64)
    imgs = real_images(96)
    blurred = [torchvision.transforms.functional.gaussian_blur(imgs, [k, k], [k / 3, k / 3]) for k in (3, 9)]
    feats = fid.features(imgs)
    vals = []
    for deg in [imgs, *blurred]:
        fid.reset()
        fid.update_features(feats, real=True)
        fid.update(deg)
        vals.append(fid.compute().item())
    assert abs(vals[0]) < 1e-6 and vals[0] < vals[1] < vals[2]
    assert fid.info()["calibrated"] is False  # random weights are never calibrated
    # two "ranks" with half the generated frames each: summed states = single pass
    real = fid.features(blurred[1])
    r0, r1 = FID(weights="random", dims=64), FID(weights="random", dims=64)
    for r, part, rpart in ((r0, feats[:10], real[:7]), (r1, feats[10:], real[7:])):
        r.update_features(part)
        r.update_features(rpart, real=True)
    r0.merge_state(r1)
    single = FID(weights="random", dims=64)
    single.update_features(feats)
    single.update_features(real, real=True)
    assert single.compute().item() > 1e-3
    assert r0.compute().item() == pytest.approx(single.compute().item(), rel=1e-5)
    # reference statistics: computed once, then read from the .npz cache
    calls = []

    def batches():
        calls.append(1)
        yield imgs

    mu, sigma, n = reference_stats("faces-96", batches, fid.extractor, tmp_path)
    mu2, sigma2, n2 = reference_stats("faces-96", batches, fid.extractor, tmp_path)
    assert len(calls) == 1 and n == n2 == len(imgs) and len(list(tmp_path.glob("fid-ref-*.npz"))) == 1
    np.testing.assert_allclose(mu, mu2)
    fid.reset()
    fid.update_features(feats)
    fid.set_reference(mu, sigma, n, "faces")
    assert abs(fid.compute().item()) < 1e-6 and fid.info()["settings"]["reference"] == "faces"


def test_fid_errors():
    fid = FID(weights="random", dims=64)
    with pytest.raises(ValueError, match="need at least 2"):
        fid.compute()
    with pytest.raises(ValueError, match="dims must be one of"):
        FIDInception("random", dims=100)
    with pytest.raises(ValueError, match=r"\(B, 64\)"):
        fid.update_features(torch.zeros(2, 3))
