"""Config tests: every experiment composes, and its data, networks and trainer instantiate; tiny
experiments build their full LightningModule too. Every trainer config constructs. Typos in ``_target_`` fail here,
not on the cluster."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from train_helpers import CONF, compose_train

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
TRAINERS = sorted(p.stem for p in (CONF / "trainer").glob("*.yaml") if p.stem != "default")
HAS_GPU = torch.cuda.is_available()


def test_the_stage1_experiments_exist():
    assert {"stage1_tiny", "stage1_paper"} <= set(EXPERIMENTS)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_experiment_composes_and_instantiates(experiment, tmp_path):
    overrides = [f"experiment={experiment}", "weights=random", "weights.pose_teacher=null"]
    if not HAS_GPU:
        overrides += ["trainer.accelerator=cpu", "trainer.devices=1"]
    cfg = compose_train(tmp_path, *overrides, fast=False)
    assert cfg.name
    datamodule = instantiate(cfg.data, _convert_="all")
    assert isinstance(datamodule, L.LightningDataModule)
    trainer = instantiate(cfg.trainer, logger=False, enable_checkpointing=False)
    assert isinstance(trainer, L.Trainer)
    for node in cfg.callbacks.values():
        assert isinstance(instantiate(node), L.Callback)
    needs_input = OmegaConf.missing_keys(cfg.module)  # e.g. stage 2's base checkpoint (given on the command line)
    small = "tiny" in experiment or experiment.endswith("_cpu")  # CPU-size experiments build whole
    if small and not needs_input:
        module = instantiate(cfg.module, _convert_="all")
        assert isinstance(module, L.LightningModule)
    elif cfg.get("model") is not None:  # paper-size experiments: the networks (the losses need weight files)
        model = instantiate(cfg.model)
        if not small:
            assert sum(p.numel() for p in model.parameters()) > 100e6  # the official sizes
        if cfg.get("discriminator") is not None:
            assert set(instantiate(cfg.discriminator)) == {"global", "face", "lip"}


@pytest.mark.parametrize("name", TRAINERS)
def test_trainer_config_constructs(name, tmp_path):
    overrides = [f"trainer={name}"]
    if name == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is an optional extra (pip install 'lp-train[deepspeed]'); not installed here")
    if name != "cpu" and not HAS_GPU:  # constructs on CPU; Lightning's DeepSpeedStrategy only *runs* on CUDA
        overrides += ["trainer.accelerator=cpu", "trainer.precision=32-true"]
    cfg = compose_train(tmp_path, *overrides)
    trainer = instantiate(cfg.trainer, logger=False)
    assert trainer.max_steps == cfg.trainer.max_steps
    plugins = [type(p).__name__ for p in [trainer.strategy.checkpoint_io]]
    assert plugins == ["AtomicCheckpointIO"]
    if name == "ddp":
        assert trainer.strategy._ddp_kwargs["find_unused_parameters"] is True


def test_config_tree_mirrors_the_training_code():
    for group in ("module", "loss", "trainer", "logger", "callbacks", "paths", "experiment", "debug", "data", "model"):
        assert (CONF / group).is_dir(), group
    assert (CONF / "train.yaml").is_file()
    assert Path(CONF / "trainer" / "cpu.yaml").is_file()  # the tiny CPU variant of the trainer group
