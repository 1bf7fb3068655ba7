"""AED / APD / MAE / CSIM on real faces (issue 5, Must show 2 + the estimator validation): the same frame gives 0,
a turned head changes APD, a smile changes AED, eyes looking elsewhere change MAE, identities separate in CSIM;
frames without a face are counted as missing; the SMIRK-style adapter and the ArcFace layout work."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from lp_train.metrics.aed import ExpressionDistance
from lp_train.metrics.apd import PoseDistance
from lp_train.metrics.csim import CSIM, cosine_similarity
from lp_train.metrics.face_params import FaceParamEstimator, FaceParams, MediapipeFaceParams, ModuleFaceParams
from lp_train.metrics.identity import ArcFaceEmbedder, DlibFaceEmbedder
from lp_train.metrics.mae import GazeAngularError, angular_error_deg
from lp_train.teachers.arcface import IRESNET_LAYERS, IResNet

FACES = Path(__file__).resolve().parents[1] / "../shared/data/faces"


def frames(video: str, indices: list[int], size: int = 256) -> torch.Tensor:
    """Selected frames of a shared clip as (N, 3, size, size) in [0, 1]."""
    path = FACES / "videos" / f"{video}.mp4"
    if not path.is_file():
        pytest.skip(f"real test clips not found at {FACES.resolve()}")
    cap, out, i = cv2.VideoCapture(str(path)), {}, 0
    while i <= max(indices):
        ok, f = cap.read()
        if not ok:
            break
        if i in indices:
            out[i] = cv2.resize(cv2.cvtColor(f, cv2.COLOR_BGR2RGB), (size, size), interpolation=cv2.INTER_AREA)
        i += 1
    return torch.from_numpy(np.stack([out[j] for j in indices])).permute(0, 3, 1, 2).float() / 255


@pytest.fixture(scope="module")
def estimator() -> MediapipeFaceParams:
    return MediapipeFaceParams()


@pytest.fixture(scope="module")
def clips(estimator):
    # d0: 0 neutral, 10 neutral, 20 eyes to the image right, 30 smile + eyes left; d3: 0 frontal, 260 head turned
    d0 = frames("d0", [0, 10, 20, 30])
    d3 = frames("d3", [0, 260])
    return {"d0": (d0, estimator(d0)), "d3": (d3, estimator(d3))}


def _pair(p: FaceParams, i: int, j: int) -> tuple[FaceParams, FaceParams]:
    return p.index([i]), p.index([j])


def test_estimator_protocol_and_same_frame_zero(clips, estimator):
    assert isinstance(estimator, FaceParamEstimator)
    _, p = clips["d0"]
    assert p.found.all() and p.pose.shape == (4, 3) and p.gaze.shape == (4, 3)
    for metric in (ExpressionDistance(estimator), PoseDistance(estimator), GazeAngularError(estimator)):
        metric.update(p, p)
        assert metric.compute().item() == pytest.approx(0.0, abs=1e-6)
        assert metric.info()["calibrated"] and "mediapipe" in metric.info()["implementation"]


def test_turned_head_changes_apd(clips):
    _, p = clips["d3"]
    apd = PoseDistance().score(*_pair(p, 1, 0)).item()
    yaw = (p.pose[1, 1] - p.pose[0, 1]).abs().item()
    assert yaw > 15 and apd > 8  # degrees; the head turns ~25° in yaw
    _, q = clips["d0"]  # a still head: small APD
    assert PoseDistance().score(*_pair(q, 1, 0)).item() < 2


def test_smile_changes_aed(clips):
    _, p = clips["d0"]
    neutral = ExpressionDistance().score(*_pair(p, 1, 0)).item()
    smile = ExpressionDistance().score(*_pair(p, 3, 0)).item()
    assert smile > 3 * neutral and smile > 0.1


def test_gaze_changes_mae(clips):
    _, p = clips["d0"]
    still = GazeAngularError().score(*_pair(p, 1, 0)).item()
    right_vs_left = GazeAngularError().score(*_pair(p, 2, 3)).item()
    assert right_vs_left > 20 and right_vs_left > 2 * still
    assert p.gaze[2, 0] > 0.2 > -0.2 > p.gaze[3, 0]  # x: looking to the image right, then left


def test_no_face_is_missing_not_zero(clips, estimator):
    imgs, p = clips["d0"]
    noise = estimator(torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)))
    assert not noise.found.any() and torch.isnan(noise.expression).all()
    m = ExpressionDistance(estimator)
    m.update(p.index([0, 0]), FaceParams(torch.cat([noise.found, p.found[1:2]]),
                                         torch.cat([noise.expression, p.expression[1:2]]),
                                         torch.cat([noise.pose, p.pose[1:2]]), None))  # fmt: skip
    assert int(m.count) == 1 and int(m.missing) == 1 and m.compute().item() > 0


def test_angular_error_hand_cases():
    a = torch.tensor([[0.0, 0, 1], [0, 0, 1], [1, 0, 0]])
    b = torch.tensor([[0.0, 0, 1], [1, 0, 1], [0, 1, 0]])
    torch.testing.assert_close(angular_error_deg(a, b), torch.tensor([0.0, 45.0, 90.0], dtype=torch.float64))


class FakeSmirk(nn.Module):
    """Stands in for a user's SMIRK encoder: returns SMIRK's output keys."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(3, 56)

    def forward(self, x):
        h = self.lin(x.mean((2, 3)))
        return {"expression_params": h[:, :50], "jaw_params": h[:, 50:53], "pose_params": h[:, 53:56]}


def test_module_adapter_for_external_estimators(tmp_path):
    net = FakeSmirk()
    torch.save(net.state_dict(), tmp_path / "smirk.pt")
    est = ModuleFaceParams(FakeSmirk(), str(tmp_path / "smirk.pt"), ["expression_params", "jaw_params"],
                           ["pose_params"], input_size=32)  # fmt: skip
    x = torch.rand(2, 3, 64, 64)
    p = est(x)
    assert isinstance(est, FaceParamEstimator) and p.expression.shape == (2, 53) and p.pose.shape == (2, 3)
    assert ExpressionDistance(est).score(p, p).abs().max().item() == 0
    assert est.info()["calibrated"] and "FakeSmirk" in est.info()["implementation"]
    with pytest.raises(KeyError, match="lacks"):
        ModuleFaceParams(FakeSmirk(), "random", ["nope"], ["pose_params"])(x)


def test_csim_dlib_separates_identities():
    emb = DlibFaceEmbedder()
    a, b = frames("d0", [0, 30]), frames("d3", [0, 260])
    ea, eb = emb(a), emb(b)
    m = CSIM(emb)
    m.update(ea, ea)
    assert m.compute().item() == pytest.approx(1.0, abs=1e-9)
    same = min(cosine_similarity(ea[:1], ea[1:]).item(), cosine_similarity(eb[:1], eb[1:]).item())
    other = cosine_similarity(ea, eb).max().item()
    assert same > 0.9 and other < same - 0.08  # dlib cosines: ~0.94-0.97 same person, ~0.83 different
    info = m.info()
    assert info["calibrated"] and "dlib" in info["implementation"] and "0/4" in info["settings"]["no_face_fallback"]


def test_arcface_layout_and_uncalibrated():
    net = IResNet(IRESNET_LAYERS["r100"])
    sd = net.state_dict()
    assert sum(p.numel() for p in net.parameters()) == 65_156_160  # insightface arcface_torch iresnet100
    assert sd["fc.weight"].shape == (512, 512 * 7 * 7) and "layer1.0.downsample.1.running_mean" in sd
    assert (
        "features.running_var" in sd
        and len([k for k in sd if k.startswith("layer3.") and k.endswith("prelu.weight")]) == 30
    )
    emb = ArcFaceEmbedder("random", arch="r18")
    e = emb(frames("d0", [0]))
    assert e.shape == (1, 512) and emb.info()["calibrated"] is False
