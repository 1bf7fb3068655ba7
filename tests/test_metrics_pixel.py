"""PSNR / SSIM / L1 / LPIPS (issue 5, Must show 1-2): agreement with skimage and the lpips package on random and
real images, sanity values for identical inputs, monotonic degradation, DDP-style state reduction."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torchvision
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lp_train.metrics.l1 import L1
from lp_train.metrics.lpips import LPIPS
from lp_train.metrics.psnr import PSNR
from lp_train.metrics.ssim import SSIM

FACES = Path(__file__).resolve().parents[1] / "../shared/data/faces"


def real_images(n: int = 4, size: int = 256) -> torch.Tensor:
    files = sorted((FACES / "images").glob("*.jpg"))[:n]
    if len(files) < n:
        pytest.skip(f"real test faces not found at {FACES.resolve()}")
    imgs = [cv2.resize(cv2.cvtColor(cv2.imread(str(f)), cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA)
            for f in files]  # fmt: skip
    return torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255


def _hwc(x: torch.Tensor) -> np.ndarray:
    return x.permute(1, 2, 0).double().numpy()


def _degrade(x: torch.Tensor, kind: str, level: int) -> torch.Tensor:
    if level == 0:
        return x.clone()
    if kind == "blur":
        k = 2 * level + 1
        return torchvision.transforms.functional.gaussian_blur(x, [k, k], [level, level])
    return torch.roll(x, shifts=(level, level), dims=(2, 3))


@pytest.mark.parametrize("source", ["random", "real"])
def test_psnr_ssim_agree_with_skimage(source):
    torch.manual_seed(0)
    if source == "random":
        a = torch.rand(3, 3, 48, 64)
        b = (a + 0.08 * torch.randn_like(a)).clamp(0, 1)
    else:
        a = real_images(3)
        b = _degrade(a, "blur", 2)
    ssim, psnr = SSIM().score(b, a), PSNR().score(b, a)
    for i in range(a.shape[0]):
        ref_ssim = structural_similarity(_hwc(a[i]), _hwc(b[i]), gaussian_weights=True, sigma=1.5,
                                         use_sample_covariance=False, data_range=1, channel_axis=-1)  # fmt: skip
        ref_psnr = peak_signal_noise_ratio(_hwc(a[i]), _hwc(b[i]), data_range=1)
        assert abs(ssim[i].item() - ref_ssim) <= 1e-4
        assert abs(psnr[i].item() - ref_psnr) <= 1e-4


def test_ssim_window_is_pinned():
    info = SSIM().info()["settings"]
    assert info["window"] == "gaussian 11x11" and info["sigma"] == 1.5 and info["per_channel"]


def test_identical_inputs_sanity():
    x = real_images(2)
    assert torch.isinf(PSNR().score(x, x)).all()
    capped = PSNR(cap_db=100.0)
    capped.update(x, x)
    assert capped.compute().item() == 100.0 and capped.info()["settings"]["cap_db"] == 100.0
    torch.testing.assert_close(SSIM().score(x, x), torch.ones(2, dtype=torch.float64))
    assert L1().score(x, x).abs().max().item() == 0.0


@pytest.mark.parametrize("kind", ["blur", "shift"])
def test_degradation_is_monotonic(kind):
    x = real_images(2)
    levels = [_degrade(x, kind, lv) for lv in (1, 2, 4)]
    psnr = [PSNR().score(y, x).mean().item() for y in levels]
    ssim = [SSIM().score(y, x).mean().item() for y in levels]
    l1 = [L1().score(y, x).mean().item() for y in levels]
    assert psnr[0] > psnr[1] > psnr[2]
    assert ssim[0] > ssim[1] > ssim[2]
    assert l1[0] < l1[1] < l1[2]


def test_state_reduction_equals_single_pass():
    """Two 'ranks' each see half the frames; summing their states (what DDP does) gives the single-pass mean."""
    torch.manual_seed(1)
    a, b = torch.rand(6, 3, 32, 32), torch.rand(6, 3, 32, 32)
    full, r0, r1 = SSIM(), SSIM(), SSIM()
    full.update(a, b)
    r0.update(a[:4], b[:4])
    r1.update(a[4:], b[4:])
    r0.merge_state(r1)  # torchmetrics' reduction of the "sum" states, as sync() does across ranks
    torch.testing.assert_close(r0.compute(), full.compute())
    assert full.compute().item() == pytest.approx(SSIM().score(a, b).mean().item(), abs=1e-12)


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        PSNR().score(torch.rand(3, 8, 8), torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="differ in shape"):
        L1().score(torch.rand(1, 3, 8, 8), torch.rand(1, 3, 9, 8))


@pytest.fixture(scope="module")
def alexnet_file(tmp_path_factory) -> Path:
    """A random torchvision AlexNet state dict, stored where torchvision's own loader looks (TORCH_HOME cache)."""
    home = tmp_path_factory.mktemp("torch_home")
    path = home / "hub" / "checkpoints" / "alexnet-owt-7be5be79.pth"
    path.parent.mkdir(parents=True)
    torch.manual_seed(123)
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), path)
    return path


@pytest.mark.parametrize("source", ["random", "real"])
def test_lpips_agrees_with_the_lpips_package(alexnet_file, monkeypatch, source):
    """Reference: the stock ``lpips.LPIPS(net='alex')`` whose torchvision backbone loads the same file from the
    torch-hub cache (no download happens: the file is there). Ours: backbone from the weights registry."""
    import lpips

    monkeypatch.setenv("TORCH_HOME", str(alexnet_file.parents[2]))
    ref = lpips.LPIPS(net="alex", verbose=False)
    ours = LPIPS(net="alex", weights=str(alexnet_file))
    torch.manual_seed(0)
    a = torch.rand(3, 3, 64, 64) if source == "random" else real_images(3, 128)
    b = torch.rand_like(a) if source == "random" else _degrade(a, "blur", 2)
    with torch.no_grad():
        expected = ref(a * 2 - 1, b * 2 - 1).flatten().double()
    torch.testing.assert_close(ours.score(b, a), expected, atol=1e-6, rtol=1e-5)
    info = ours.info()
    assert info["calibrated"] and "alexnet" in info["weights"] and "alex.pth" in info["weights"]


def test_lpips_sanity_and_uncalibrated_flag(alexnet_file):
    m = LPIPS(weights=str(alexnet_file))
    x = real_images(2, 128)
    assert m.score(x, x).abs().max().item() < 1e-7
    d = [m.score(_degrade(x, "blur", lv), x).mean().item() for lv in (1, 2, 4)]
    assert d[0] < d[1] < d[2]
    assert LPIPS(weights="random").info()["calibrated"] is False


def test_lpips_missing_weights_file_is_a_clear_error(tmp_path):
    from lp_train.weights import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="weights.alexnet"):
        LPIPS(weights=str(tmp_path / "nope.pth"))
    with pytest.raises(ValueError, match="net must be one of"):
        LPIPS(net="squeeze", weights="random")


def test_psnr_formula_hand_case():
    a = torch.zeros(1, 3, 4, 4)
    b = torch.full((1, 3, 4, 4), 0.1)
    assert PSNR().score(b, a).item() == pytest.approx(10 * math.log10(1 / 0.01))
