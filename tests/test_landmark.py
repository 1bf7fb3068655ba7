"""The differentiable landmark regressor of stage 2 (issue 7): protocol, ratio coverage, distillation, export."""

from __future__ import annotations

import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader
from train_helpers import module_settings

from lp_train.data.synthetic import SyntheticPairs
from lp_train.face import landmarks as lm
from lp_train.lit.landmark import LandmarkModule, export_state, landmark_examples, landmark_metrics
from lp_train.teachers.landmark_regressor import (
    DEFAULT_INDICES,
    RATIO_INDICES,
    LandmarkRegressor,
    predict_mesh,
    scatter_to_mesh,
)
from lp_train.weights import load_into

pytestmark = pytest.mark.usefixtures("lp_data_one_thread")  # tiny networks: far faster on one thread


def small(**kw) -> LandmarkRegressor:
    return LandmarkRegressor(input_size=64, widths=(8, 16, 32, 32, 32), decoder_width=16, **kw)


@pytest.fixture(scope="module")
def pairs():
    return SyntheticPairs(length=256, size=64, p_image=0.3, seed=11)


def test_protocol_shapes_and_gradients():
    net = small().eval()
    img = torch.rand(2, 3, 128, 128, requires_grad=True)  # resized to 64 inside
    pts = net(img)
    assert pts.shape == (2, len(DEFAULT_INDICES), 2)
    mesh = predict_mesh(net, img)
    assert mesh.shape == (2, 478, 2)
    assert torch.equal(mesh[:, list(DEFAULT_INDICES)], pts)
    lm.eye_open_ratio(mesh).sum().backward()
    assert img.grad is not None and img.grad.abs().sum() > 0  # differentiable w.r.t. the image
    with pytest.raises(ValueError, match="indices"):
        LandmarkRegressor(indices=[0, 0, 1])
    with pytest.raises(ValueError, match="divisible"):
        LandmarkRegressor(input_size=100)


def test_full_mesh_models_need_no_indices_and_others_must_say():
    class FullMesh(torch.nn.Module):
        def forward(self, image):
            return image.mean((1, 2, 3))[:, None, None].expand(-1, 478, 2)

    class Partial(torch.nn.Module):
        def forward(self, image):
            return torch.zeros(image.shape[0], 10, 2)

    assert predict_mesh(FullMesh(), torch.rand(1, 3, 8, 8)).shape == (1, 478, 2)
    with pytest.raises(ValueError, match="indices"):
        predict_mesh(Partial(), torch.rand(1, 3, 8, 8))


def test_default_points_cover_the_ratio_definitions(pairs):
    """Ratios from the regressor's subset of points equal the ratios of the full mesh (same indices)."""
    assert set(RATIO_INDICES) <= set(DEFAULT_INDICES)
    full = torch.stack([pairs[i]["source_landmarks"] for i in range(4)])
    idx = torch.tensor(DEFAULT_INDICES)
    sub = scatter_to_mesh(full[:, idx], idx)
    assert torch.allclose(lm.eye_open_ratio(sub), lm.eye_open_ratio(full))
    assert torch.allclose(lm.lip_open_ratio(sub), lm.lip_open_ratio(full))


def test_weights_for_other_points_are_refused(tmp_path):
    export_state(small(), tmp_path / "a.pt")
    other = small(indices=list(reversed(DEFAULT_INDICES)))
    with pytest.raises(ValueError, match="configured for"):
        load_into(other, "landmark", str(tmp_path / "a.pt"))


def held_out_accuracy(module: LandmarkModule, batch: dict) -> tuple[dict, dict, torch.Tensor]:
    """Mean NME / ratio errors of the student and of the mean-shape baseline on one batch; and the images."""
    module.eval()
    with torch.no_grad():
        images, target = landmark_examples(batch, module.net.indices)
        got = landmark_metrics(module.net(images), target, module.net.indices)
        base = landmark_metrics(module.mean_shape.expand_as(target), target, module.net.indices)
    return {k: v.mean().item() for k, v in got.items()}, {k: v.mean().item() for k, v in base.items()}, images


def test_distillation_learns_on_synthetic_faces(pairs, tmp_path):
    """The distillation step through Lightning: the loss falls, held-out faces beat the mean shape, the student is
    exported and plugs in through the weights registry (``weights.landmark``)."""
    torch.manual_seed(0)
    settings = module_settings("landmark", loss_weights={"ratios": 0.1}, export_path=str(tmp_path / "l.pt"))
    module = LandmarkModule(small(), functools.partial(torch.optim.Adam, lr=3e-3), **settings)
    losses = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    train = DataLoader(pairs, batch_size=8, shuffle=True, collate_fn=SyntheticPairs.collate)
    trainer = L.Trainer(max_steps=300, accelerator="cpu", logger=False, enable_checkpointing=False,
                        callbacks=[Record()], enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, train)
    assert sum(losses[-10:]) < 0.75 * sum(losses[:10]), losses
    held_out = SyntheticPairs(length=16, size=64, seed=12)  # other faces, poses and expressions
    got, base, images = held_out_accuracy(module, SyntheticPairs.collate([held_out[i] for i in range(16)]))
    assert got["nme"] < 0.7 * base["nme"] and got["lip_ratio_ae"] < base["lip_ratio_ae"], (got, base)
    assert (tmp_path / "l.pt").is_file()  # exported at the end of fit
    fresh = small().eval()
    load_into(fresh, "landmark", str(tmp_path / "l.pt"))
    with torch.no_grad():
        assert torch.allclose(fresh(images), module.net(images))
