"""``lp-train`` end to end on CPU: logs (wandb offline run dir + CSV), checkpoints and export, exact resume,
preemption signals, atomic checkpoint writes, resume=auto."""

from __future__ import annotations

import csv
import logging
import os
import signal

import lightning as L
import pytest
import torch
from train_helpers import compose_train

from lp_train.checkpoint import load_model_weights
from lp_train.lit.checkpointing import AtomicCheckpointIO, find_resume_checkpoint
from lp_train.train import resume_path, train


def _csv_rows(run_dir) -> list[dict]:
    """Rows of every (re)start's CSV log of a run, in order."""
    rows = []
    for path in sorted((run_dir / "csv").glob("version_*/metrics.csv"), key=lambda p: int(p.parent.name[8:])):
        with open(path) as f:
            rows += list(csv.DictReader(f))
    return rows


def test_fit_writes_wandb_offline_csv_images_checkpoint_and_model(tmp_path, monkeypatch, caplog):
    """Two steps with validation; also: global_step counts generator steps, the discriminator starts at
    d_start_step, the EMA moves, and channels_last is applied (Conv3d weights too: channels_last_3d)."""
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    cfg = compose_train(
        tmp_path, "trainer.max_steps=2", "module.d_start_step=1", "module.ema_decay=0.5", "module.channels_last=true",
        "trainer.log_every_n_steps=1", "module.image_every=1",
        "trainer.limit_val_batches=1", "trainer.val_check_interval=2", wandb=True,
    )  # fmt: skip
    with caplog.at_level(logging.INFO, logger="lp_train.lit.stage1"):
        result = train(cfg)
    trainer, module = result["trainer"], result["module"]
    assert trainer.global_step == 2 and "channels_last=True" in caplog.text
    conv3d = module.model.warping_module.dense_motion_network.hourglass.encoder.down_blocks[0].conv.weight
    assert conv3d.dim() == 5 and conv3d.is_contiguous(memory_format=torch.channels_last_3d)
    steps = [{int(st["step"]) for st in opt.state.values()} for opt in trainer.optimizers]
    assert steps == [{2}, {1}]  # G stepped twice; D once (from d_start_step=1), without advancing global_step
    ema = module.model_ema.module.state_dict()
    assert any(not torch.equal(ema[k], v) for k, v in module.model.state_dict().items() if v.is_floating_point())
    # wandb offline run directory with scalars and an image grid
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wandb").iterdir())
    data = next(runs[0].glob("run-*.wandb")).read_bytes()
    for key in (b"train/g/perceptual_full", b"train/d/global", b"train/grad_norm/g", b"train/perf/pairs_per_s"):
        assert key in data, key
    assert list(runs[0].glob("files/media/images/train/images_*.png")), "no image grid in the wandb run"
    # CSV log with every term, the D/G balance, grad norms, LR, throughput and validation
    rows = _csv_rows(tmp_path)
    columns = set(rows[0])
    expected = {"train/g/total", "train/g/guide", "train/g/equivariance", "train/g/head_pose", "train/g/identity",
                "train/g/fm_lip", "train/d/real_face", "train/d/fake_face", "train/grad_norm/motion_extractor",
                "train/lr/g", "train/perf/step_time_s", "val/l1", "val/l1_copy_source", "val/psnr"}  # fmt: skip
    assert expected <= columns, expected - columns
    assert sorted((tmp_path / "images").glob("train_images_*.png"))
    # checkpoint and exported model (loads strictly into a fresh tiny model)
    ckpt = torch.load(result["checkpoint"], weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 2 and "exact_resume" in ckpt
    assert not any(k.startswith(("perceptual.", "identity.")) for k in ckpt["state_dict"])
    model = result["module"].model
    load_model_weights(model, result["model"])
    assert (tmp_path / "runinfo.json").is_file()


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


class _SignalAt(L.Callback):
    def __init__(self, step: int, sig: int):
        self.step, self.sig = step, sig

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.sig)


def test_exact_resume_matches_an_uninterrupted_run(tmp_path):
    """Preempt at step 2 (SIGUSR1, mid-epoch), resume to step 4 (across an epoch end: 3 batches per epoch):
    identical weights, optimiser states, EMA, scheduler, data and logged losses to an uninterrupted 4-step run."""
    step_lr = "{_target_: torch.optim.lr_scheduler.StepLR, _partial_: true, step_size: 2, gamma: 0.5}"
    common = ["data.train_length=6", "module.ema_decay=0.9", "trainer.log_every_n_steps=1",
              f"+module.scheduler_g={step_lr}", "trainer.deterministic=true",
              "callbacks.model_checkpoint.every_n_train_steps=2"]  # fmt: skip
    full = train(compose_train(tmp_path / "full", "trainer.max_steps=4", *common))
    # the partial run is preempted: SIGUSR1 during step 2 -> checkpoint after it, clean stop
    probe = f"+callbacks.signal={{_target_: {__name__}._SignalAt, step: 1, sig: {int(signal.SIGUSR1)}}}"
    part = train(compose_train(tmp_path / "part", "trainer.max_steps=4", probe, *common))
    assert part["trainer"].global_step == 2
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL  # handlers restored after fit
    ckpt = torch.load(tmp_path / "part" / "checkpoints" / "last.ckpt", weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 2 and ckpt["loops"]["fit_loop"]["epoch_progress"]["current"]["completed"] == 0
    resumed = train(compose_train(tmp_path / "part", "trainer.max_steps=4", "resume=auto", *common))
    assert resumed["trainer"].global_step == 4
    ckpts = sorted(p.name for p in (tmp_path / "part" / "checkpoints").glob("*.ckpt"))
    assert ckpts == ["last.ckpt", "step00000002.ckpt", "step00000004.ckpt"]
    a, b = _state(full["module"]), _state(resumed["module"])
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert diff == [], f"{len(diff)} tensors differ, e.g. {diff[:5]}"
    for opt_a, opt_b in zip(full["trainer"].optimizers, resumed["trainer"].optimizers, strict=True):
        sa, sb = opt_a.state_dict(), opt_b.state_dict()
        for i in sa["state"]:
            for k in sa["state"][i]:
                assert torch.equal(sa["state"][i][k], sb["state"][i][k])
    assert full["trainer"].optimizers[0].param_groups[0]["lr"] == resumed["trainer"].optimizers[0].param_groups[0]["lr"]
    assert full["trainer"].optimizers[0].param_groups[0]["lr"] == pytest.approx(2e-4 * 0.25)  # StepLR stepped 4x
    rows_full = {r["step"]: r["train/g/total"] for r in _csv_rows(tmp_path / "full") if r.get("train/g/total")}
    rows_res = {r["step"]: r["train/g/total"] for r in _csv_rows(tmp_path / "part") if r.get("train/g/total")}
    assert len(rows_full) == 4 and len(rows_res) == 4 and rows_res == rows_full


def test_atomic_checkpoint_io_never_leaves_a_partial_file(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "c" / "last.ckpt"
    io.save_checkpoint({"step": 1}, path)

    def boom(obj, f, *a, **k):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(OSError, match="disk full"):
        io.save_checkpoint({"step": 2}, path)
    monkeypatch.undo()
    assert torch.load(path, weights_only=True) == {"step": 1}
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]


def test_resume_path_rules(tmp_path):
    """auto without checkpoints -> None; null -> None; a missing explicit file -> a clear error. (Which checkpoint
    auto picks: tests/test_run_control.py.)"""
    assert find_resume_checkpoint(tmp_path) is None and resume_path("auto", tmp_path) is None
    assert resume_path(None, tmp_path) is None
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        resume_path(str(tmp_path / "missing.ckpt"), tmp_path)


def test_a_few_steps_on_real_face_shards(tmp_path, lp_data_face_shards, lp_data_one_thread):
    """Fast counterpart of the slow learning run: 5 steps of the tiny stage 1 on shards of the real faces in
    ../shared (WebDataset loader, mixed clips and portraits), with a validation pass on the same shards: every step
    is logged with finite losses, the validation compares with the copy-the-source baseline, the run checkpoints."""
    shards = f"{lp_data_face_shards[0].parent}/*.tar"
    cfg = compose_train(
        tmp_path, "experiment=stage1_tiny", "data=tiny", f"data.train_shards={shards}", f"data.val_shards={shards}",
        "trainer.max_steps=5", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=1",
        "trainer.val_check_interval=5", "trainer.enable_progress_bar=false", "module.image_every=0", fast=False,
    )  # fmt: skip
    result = train(cfg)
    assert result["trainer"].global_step == 5
    rows = _csv_rows(tmp_path)
    losses = [float(r["train/g/total"]) for r in rows if r.get("train/g/total")]
    assert len(losses) == 5 and all(map(torch.isfinite, torch.tensor(losses)))
    val = [r for r in rows if r.get("val/l1")]
    assert len(val) == 1 and 0 < float(val[0]["val/l1_copy_source"]) < 1 and 0 < float(val[0]["val/l1"]) < 1
    ckpt = torch.load(result["checkpoint"], weights_only=True, map_location="cpu")
    assert ckpt["global_step"] == 5
