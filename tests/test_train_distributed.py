"""Distributed stage 1 on CPU: ``lp-train`` with DDP over 2 processes (gloo) keeps both ranks' weights identical
after a step on different data; the DeepSpeed ZeRO-2 section of ``conf/trainer/deepspeed.yaml`` runs through the
DeepSpeed engine (Lightning's DeepSpeedStrategy itself needs CUDA)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import torch
from train_helpers import ROOT, compose_train

from lp_train.lit.stage1 import FROZEN_PREFIXES


def test_ddp_two_cpu_processes_keep_weights_in_sync(tmp_path):
    probe = tmp_path / "probe"
    cmd = [
        sys.executable, "-m", "lp_train.train", "experiment=stage1_tiny", "trainer=ddp", "trainer.accelerator=cpu",
        "trainer.devices=2", "trainer.precision=32-true", "trainer.max_steps=1", "trainer.limit_val_batches=0",
        "trainer.enable_progress_bar=false", "~logger.wandb", "data.batch_size=2", "data.train_length=8",
        "module.image_every=0", "export_model=false", f"hydra.run.dir={tmp_path / 'run'}",
        f"+callbacks.probe={{_target_: train_helpers.ProbeRankState, out_dir: '{probe}'}}",
    ]  # fmt: skip
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")]),
               WANDB_MODE="offline", OMP_NUM_THREADS="1", MASTER_PORT=str(29500 + os.getpid() % 1000))  # fmt: skip
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [torch.load(probe / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [1, 1]
    # the ranks saw different pairs (different losses) ...
    assert ranks[0]["losses"] != ranks[1]["losses"]
    # ... yet every trained parameter is identical after the step (gradients were all-reduced)
    a, b = ranks[0]["state"], ranks[1]["state"]
    trained = [
        k
        for k in a
        if k.startswith(("model.", "discriminators."))
        and "running_" not in k
        and "num_batches_tracked" not in k
        and not k.startswith(FROZEN_PREFIXES)
        and "stitching_retargeting_module" not in k
    ]  # fmt: skip  (stage 2's heads are frozen in stage 1)
    assert len(trained) > 100
    differ = [k for k in trained if not torch.equal(a[k], b[k])]
    assert differ == [], differ[:5]
    start = ranks[0]["start"]
    # and the step changed them (a fresh D's output-conv bias gets an exactly-zero hinge gradient; its 1-channel
    # spectral-norm u stays ±1)
    unchanged = [k for k in trained if torch.equal(start[k], a[k]) and not re.search(r"discs\.\d+\.conv\.", k)]
    assert unchanged == [], unchanged[:5]
    assert (tmp_path / "run" / "checkpoints" / "last.ckpt").is_file()


@pytest.mark.slow  # importing deepspeed alone costs ~30 s of CPU
@pytest.mark.skipif(importlib.util.find_spec("deepspeed") is None, reason="deepspeed (optional extra) not installed")
def test_deepspeed_zero2_config_trains_the_generator_on_cpu(tmp_path, monkeypatch):
    """The ZeRO-2 options of conf/trainer/deepspeed.yaml, given to the DeepSpeed engine directly (CPU, gloo, one
    rank): one optimiser step of the tiny generator on the stage-1 perceptual loss changes its weights."""
    import deepspeed

    for k, v in {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29621", "RANK": "0", "LOCAL_RANK": "0",
                 "WORLD_SIZE": "1"}.items():  # fmt: skip
        monkeypatch.setenv(k, v)
    cfg = compose_train(tmp_path, "trainer=deepspeed")
    zero = {k: cfg.trainer.strategy[k] for k in ("allgather_bucket_size", "reduce_bucket_size", "overlap_comm",
                                                  "contiguous_gradients")}  # fmt: skip
    ds_config = {
        "train_micro_batch_size_per_gpu": 2,
        "zero_optimization": {"stage": cfg.trainer.strategy.stage, **zero},
        "optimizer": {"type": "Adam", "params": {"lr": 2e-4, "betas": [0.5, 0.999], "torch_adam": True}},
    }
    from hydra.utils import instantiate

    model = instantiate(cfg.model)
    deepspeed.init_distributed(dist_backend="gloo")
    engine, *_ = deepspeed.initialize(model=model, model_parameters=model.parameters(), config=ds_config)
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    src, drv = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 64, 64)
    loss = (engine(src, drv)["image"] - torch.rand(2, 3, 128, 128)).abs().mean()
    engine.backward(loss)
    engine.step()
    changed = [k for k, v in model.named_parameters() if v.requires_grad and not torch.equal(v, before[k])]
    assert len(changed) > 50
