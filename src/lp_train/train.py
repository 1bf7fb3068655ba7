"""``lp-train``: the one training entry point for every stage (paper Sec. 3.1 stage 1, Sec. 3.2 stage 2).

Generic by construction: ``train(cfg)`` instantiates whatever the config selects — ``cfg.module`` (a
LightningModule; its networks and losses injected by Hydra's recursive instantiation), ``cfg.data`` (a
LightningDataModule), ``cfg.trainer``, ``cfg.logger.*`` and ``cfg.callbacks.*`` — and fits. A stage is an
``experiment=`` file::

    lp-train experiment=stage1_tiny                                   # CPU, synthetic faces, minutes
    lp-train experiment=stage1_paper trainer=ddp trainer.num_nodes=4   # 4 nodes x 8 GPUs
    python -m lp_train.train experiment=stage1_tiny trainer.max_steps=50 hydra.run.dir=runs/demo

Run directory (``paths.output_dir`` = Hydra's run dir)::

    checkpoints/step{N:08d}.ckpt, checkpoints/last.ckpt   Lightning checkpoints (atomic; last = newest state)
    model.pt                                              exported weights (``lp_train.checkpoint`` model file,
                                                          the EMA if enabled) — input of lp-eval / lp-animate
    wandb/, csv/metrics.csv, images/                       logs and image grids
    runinfo.json(l), .hydra/                               what produced the run

Init modes: scratch (default); fine-tune from official or own weights (``module.init_weights=PATH``); resume
(``resume=auto``: the run dir's newest checkpoint if any — what a requeued SLURM job needs; ``resume=PATH``;
``resume=null`` never).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from lp_train import runinfo
from lp_train.checkpoint import save_model
from lp_train.conf import CONF_DIR
from lp_train.lit.checkpointing import StepCheckpoint, find_resume_checkpoint
from lp_train.lit.resume import ResumableDataLoader
from lp_train.runinfo import sweep_group

log = logging.getLogger(__name__)


class ResumableTrainLoader:
    """Replaces a datamodule's ``train_dataloader``: the same loader, as a ``ResumableDataLoader`` (exact data
    position on resume). A picklable top-level callable, so ``ddp_spawn`` can ship the datamodule to its ranks."""

    def __init__(self, datamodule: L.LightningDataModule, seed: int):
        self.datamodule, self.seed = datamodule, seed

    def __call__(self) -> Any:
        return ResumableDataLoader.wrap(type(self.datamodule).train_dataloader(self.datamodule), self.seed)


def make_resumable(datamodule: L.LightningDataModule, seed: int) -> None:
    """Route the datamodule's train loader through ``ResumableDataLoader.wrap``."""
    datamodule.train_dataloader = ResumableTrainLoader(datamodule, seed)


def resume_path(resume: str | None, output_dir: Path) -> str | None:
    """``auto`` -> newest checkpoint in ``output_dir`` (or None); a path -> itself (must exist); None -> None."""
    if resume in (None, "", "null", False):
        return None
    if resume == "auto":
        found = find_resume_checkpoint(output_dir)
        if found is not None:
            log.info("resume=auto: resuming from %s", found)
        return None if found is None else str(found)
    if not Path(resume).is_file():
        raise FileNotFoundError(f"resume={resume}: no such checkpoint file (use resume=auto or a .ckpt path)")
    return str(resume)


def _instantiate_group(group: DictConfig | None) -> list:
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def _hyperparameters(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """The resolved config plus the run record (git commit, packages, SLURM ids) written by ``runinfo.capture``."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams["run"] = runinfo.wandb_summary(runinfo.capture(cfg, output_dir))
    return hparams


def _finish_wandb(exit_code: int) -> None:
    """Close this process's wandb run (flushes the offline run; lets the next ``train`` call start a new one)."""
    import sys

    wandb = sys.modules.get("wandb")
    if wandb is not None and wandb.run is not None:
        wandb.finish(exit_code=exit_code)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.module`` on ``cfg.data`` with ``cfg.trainer``; returns trainer, module and the written paths."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    # plain dicts/lists (not DictConfig) reach the objects, so their saved hyper-parameters load with weights_only
    datamodule = instantiate(cfg.data, _convert_="all")
    make_resumable(datamodule, cfg.seed)
    module = instantiate(cfg.module, _convert_="all")
    if group := sweep_group():  # members of one Hydra multirun share a wandb group
        os.environ.setdefault("WANDB_RUN_GROUP", group)
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=_instantiate_group(cfg.get("callbacks")), logger=loggers)
    hparams = _hyperparameters(cfg, output_dir)
    for lg in loggers:
        lg.log_hyperparams(hparams)
    ckpt = resume_path(cfg.get("resume"), output_dir)
    try:
        # our checkpoints hold only tensors and plain types: load them without unpickling code
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        result: dict[str, Any] = {"trainer": trainer, "module": module, "output_dir": output_dir}
        last = output_dir / "checkpoints" / "last.ckpt"
        saved = [cb.saved_step for cb in trainer.callbacks if isinstance(cb, StepCheckpoint)]
        if trainer.global_step not in saved:  # e.g. stopped by max_epochs: the loop state is "epoch done"
            trainer.save_checkpoint(last, weights_only=False)
        result["checkpoint"] = last
    except BaseException:
        _finish_wandb(exit_code=1)
        raise
    _finish_wandb(exit_code=0)
    eval_model = getattr(module, "eval_model", None)
    if cfg.get("export_model", True) and eval_model is not None:
        model_path = output_dir / "model.pt"
        if trainer.is_global_zero:
            save_model(eval_model(), model_path, OmegaConf.to_container(cfg.model, resolve=True))
            log.info("exported %s (step %d)", model_path, trainer.global_step)
        result["model"] = model_path
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
def main(cfg: DictConfig) -> None:
    """``lp-train``: parse the Hydra config and call ``train``."""
    os.environ.setdefault("WANDB_SILENT", "true")
    result = train(cfg)
    print(f"lp-train: step {result['trainer'].global_step}, checkpoint {result['checkpoint']}")


if __name__ == "__main__":
    main()
