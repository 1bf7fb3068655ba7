"""Stage1Module at tiny size on CPU: the gradient contract (every parameter of F, M, W, G and of every
discriminator is reached by the stage loss, S is not), the two optimisation phases, the non-finite guard, EMA,
fine-tune init and the pose-teacher path."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from train_helpers import compose_train

from lp_train.checkpoint import save_model
from lp_train.data.synthetic import SyntheticPairs
from lp_train.lit.ema import EMA
from lp_train.lit.nonfinite import NonFiniteError, NonFiniteGuard
from lp_train.lit.stage1 import GENERATOR_NETS, Stage1Module
from lp_train.losses import discriminator_loss, generator_terms


@pytest.fixture(scope="module")
def batch():
    return SyntheticPairs.collate([SyntheticPairs(4, size=64, seed=3)[i] for i in range(2)])


def _module(tmp_path, *overrides) -> Stage1Module:
    cfg = compose_train(tmp_path, *overrides)
    return instantiate(cfg.module)


def test_every_parameter_gets_a_gradient_from_the_stage_loss(tmp_path, batch):
    torch.manual_seed(0)
    module = _module(tmp_path)
    out = module.model(batch["source"], batch["driving"])
    assert out["image"].shape == (2, 3, 128, 128) and torch.isfinite(out["image"]).all()
    terms = module.loss.generator_losses(module.model, batch, out, module.discriminators)
    assert set(terms) == {k for k, w in module.loss.weights.items() if w and not k.startswith("d_")}
    assert all(torch.isfinite(v) and v.ndim == 0 for v in terms.values())
    module.loss.total(terms).backward()
    for net in GENERATOR_NETS:
        missing = [n for n, p in getattr(module.model, net).named_parameters() if p.grad is None or not p.grad.any()]
        assert missing == [], f"{net}: no gradient for {missing[:5]}"
    heads = module.model.stitching_retargeting_module
    assert all(not p.requires_grad and p.grad is None for p in heads.parameters())  # stage 2's heads stay frozen
    frozen = [*module.loss.perceptual.parameters(), *module.loss.identity.parameters()]
    assert all(p.grad is None for p in frozen)
    # discriminator phase: every D parameter is reached by the D loss
    module.discriminators.zero_grad(set_to_none=True)
    total = 0
    for name, disc in module.discriminators.items():
        fake_in, real_in = module.loss.gan_inputs(
            name, out["image"].detach(), batch["driving_hr"], batch["driving_boxes"]
        )
        total = total + discriminator_loss(disc(real_in), disc(fake_in))
    total.backward()
    # (a fresh D's last bias can get an exactly-zero hinge gradient: real and fake terms cancel; reached all the same)
    missing = [n for n, p in module.discriminators.named_parameters() if p.grad is None]
    assert missing == []
    assert all(p.grad.any() for n, p in module.discriminators.named_parameters() if "weight" in n)


def test_loss_weights_are_validated(tmp_path):
    with pytest.raises(Exception, match="unknown loss weights"):
        _module(tmp_path, "+loss.weights.perceptual_nose=1.0")
    terms = generator_terms({"global": None, "face": None, "lip": None})
    assert "gan_lip" in terms and "fm_face" in terms and "guide" in terms


def test_pose_teacher_replaces_landmark_labels(tmp_path, batch):
    module = _module(tmp_path, "weights.pose_teacher=random")
    assert module.loss.pose_teacher is not None
    target = module.loss.pose_targets(batch, "driving")
    assert target.shape == (2, 3) and not torch.equal(target, batch["driving_pose"])
    assert torch.equal(_module(tmp_path).loss.pose_targets(batch, "driving"), batch["driving_pose"])


def test_fine_tune_init_loads_weights(tmp_path):
    src = _module(tmp_path).model
    for p in src.parameters():
        p.data.normal_()
    path = tmp_path / "start.pt"
    save_model(src, path)
    module = _module(tmp_path, f"module.init_weights={path}")
    for (k, a), b in zip(src.state_dict().items(), module.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_ema_update_formula():
    net = torch.nn.Linear(2, 1)
    ema = EMA(net, decay=0.75)
    start = ema.module.weight.detach().clone()
    with torch.no_grad():
        net.weight.add_(1.0)
    ema.update(net)
    assert torch.allclose(ema.module.weight, 0.75 * start + 0.25 * net.weight)
    assert not ema.module.weight.requires_grad and not ema.training
    with pytest.raises(ValueError):
        EMA(net, decay=1.0)


def test_nonfinite_guard_counts_and_stops():
    guard = NonFiniteGuard(max_consecutive=2)
    guard.record(False, "generator", 0)
    guard.record(True, "generator", 1)
    guard.record(False, "generator", 2)
    assert (guard.consecutive, guard.total) == (1, 2)
    with pytest.raises(NonFiniteError, match="2 consecutive non-finite.*generator at step 3"):
        guard.record(False, "generator", 3)


def test_fit_skips_nonfinite_steps_then_stops_with_a_clear_error(tmp_path, batch, monkeypatch):
    module = _module(tmp_path, "module.max_nonfinite=3")
    before = {k: v.detach().clone() for k, v in module.model.named_parameters()}
    real = module.loss.generator_losses

    def poisoned(*args, **kwargs):
        terms = real(*args, **kwargs)
        terms["guide"] = terms["guide"] * float("nan")
        return terms

    monkeypatch.setattr(module.loss, "generator_losses", poisoned)
    loader = torch.utils.data.DataLoader([batch] * 8, batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=5, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    with pytest.raises(NonFiniteError, match="3 consecutive"):
        trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 0 and module.guard.total == 3
    for k, v in module.model.named_parameters():  # (BatchNorm running statistics do move in the forward passes)
        assert torch.equal(v, before[k]), f"{k} changed although every step was skipped"


def test_one_step_under_bf16_autocast(tmp_path, batch):
    """trainer.precision=bf16-mixed runs the whole stage-1 step (the paper config's precision; CPU autocast here)."""
    module = _module(tmp_path)
    loader = torch.utils.data.DataLoader([batch] * 2, batch_size=None)
    trainer = L.Trainer(accelerator="cpu", precision="bf16-mixed", max_steps=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    trainer.fit(module, train_dataloaders=loader)
    assert trainer.global_step == 1 and module.guard.total == 0
    assert all(p.dtype == torch.float32 for p in module.model.parameters())  # autocast, fp32 master weights


def test_cpu_recipe_trains_without_discriminators_and_follows_its_cosine_schedule(tmp_path, batch):
    """experiment=stage1_cpu: no discriminators, one optimiser, zero GAN weights accepted (a nonzero one is not),
    the generator's lr decays on the cosine schedule, and the pixel loss falls on a repeated batch."""
    module = _module(tmp_path, "experiment=stage1_cpu", "trainer.max_steps=6")
    assert len(module.discriminators) == 0 and module.loss.weights["l1"] > 0
    assert not any(k.startswith(("gan_", "fm_", "d_")) for k in module.loss.weights)
    loader = torch.utils.data.DataLoader([batch] * 6, batch_size=None)
    trainer = L.Trainer(accelerator="cpu", max_steps=6, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False)  # fmt: skip
    seen = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, *args):
            seen.append((pl_module._logs["train/g/l1"].item(), trainer.optimizers[0].param_groups[0]["lr"]))

    trainer.callbacks.append(Record())
    trainer.fit(module, train_dataloaders=loader)
    assert len(trainer.optimizers) == 1 and trainer.global_step == 6
    lrs = [lr for _, lr in seen]
    assert lrs[0] < 1e-3 and lrs[-1] == pytest.approx(1e-5)
    assert all(a > b for a, b in zip(lrs[:-1], lrs[1:], strict=True))
    assert seen[-1][0] < seen[0][0]
    with pytest.raises(Exception, match="unknown loss weights"):
        _module(tmp_path, "experiment=stage1_cpu", "loss.weights.gan_face=1.0")
