"""``lp-train``: the one training entry point for every stage (paper Sec. 3.1 stage 1, Sec. 3.2 stage 2).

Generic by construction: ``train(cfg)`` instantiates whatever the config selects — ``cfg.module`` (a
LightningModule; its networks and losses injected by Hydra's recursive instantiation), ``cfg.data`` (a
LightningDataModule), ``cfg.trainer``, ``cfg.logger.*`` and ``cfg.callbacks.*`` — and fits. A stage is an
``experiment=`` file::

    lp-train experiment=stage1_tiny                                   # CPU, synthetic faces, minutes
    lp-train experiment=stage1_paper trainer=ddp trainer.num_nodes=4   # 4 nodes x 8 GPUs
    python -m lp_train.train experiment=stage1_tiny trainer.max_steps=50 name=demo

Run directory (``paths.output_dir`` = Hydra's run dir): ``runs/<name>`` (``LP_RUNS_DIR`` moves ``runs/``; ``name``
comes from the experiment file and is overridable; a sweep member: ``runs/<name>/multirun/<n>``). The folder is a
function of the name only, so running the same command again *resumes* that run (``resume=auto``): use a new
``name=`` for a new run, ``resume=null`` to start from step 0 in the same folder. ::

    checkpoints/step{N:08d}.ckpt, checkpoints/last.ckpt   Lightning checkpoints (atomic; last = newest state)
    model.pt                                              exported weights (``lp_train.checkpoint`` model file,
                                                          the EMA if enabled) — input of lp-eval / lp-animate
    wandb/, csv/metrics.csv, images/                       logs and image grids
    runinfo.json(l), .hydra/                               what produced the run
    wandb_run_id                                          the wandb run id, kept across restarts and requeues

Init modes: scratch (default); fine-tune from official or own weights (``module.init_weights=PATH``); resume
(``resume=auto``: the run dir's checkpoint with the highest global step, read from the files — what a requeued
SLURM job or a re-run command needs; an unreadable newest file is reported and skipped; ``resume=PATH``;
``resume=null`` never). The rule and its outcome are printed at start.

Exit status: 0 when the run reached ``trainer.max_steps`` (``model.pt`` written); ``128 + N`` when signal N (SIGTERM
15, SIGUSR1 10, SIGUSR2 12) stopped it earlier — the checkpoint is written, ``model.pt`` is not, so
``lp-train ... && lp-eval ...`` does not evaluate an unfinished run; 2 for a user error (one line on stderr,
``--debug`` for the traceback). A submitit sweep member preempted with its requeue signal checkpoints, is requeued
by submitit and resumes; a job that SLURM itself requeues (``scontrol requeue``) resumes whatever the exit status.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.utilities import rank_zero_only
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig, OmegaConf, open_dict

from lp_train import runinfo
from lp_train.checkpoint import save_model
from lp_train.cli_errors import report_user_errors, run_cli
from lp_train.conf import CONF_DIR
from lp_train.fileio import atomic_write_text
from lp_train.lit.checkpointing import StepCheckpoint, checkpoint_step, find_resume_checkpoint
from lp_train.lit.resume import ResumableDataLoader
from lp_train.runinfo import sweep_group

log = logging.getLogger(__name__)
WANDB_ID_FILE = "wandb_run_id"


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
    """``auto`` -> the highest-step readable checkpoint in ``output_dir`` (or None); a path -> itself (must exist);
    None -> None."""
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


def _announce(cfg: DictConfig, output_dir: Path, ckpt: str | None) -> None:
    """Print the run folder and the resume rule with its outcome (rank 0): what a re-run of this command will do."""
    if rank_zero_only.rank != 0:
        return
    start = f"resuming from {ckpt} (step {checkpoint_step(ckpt)})" if ckpt else "starting at step 0"
    rule = "the same name resumes from the highest-step checkpoint; name=<new>: new run; resume=null: from step 0"
    print(f"lp-train: run dir {output_dir}; resume={cfg.get('resume')}: {start} ({rule})", flush=True)


def wandb_run_id(output_dir: Path) -> str | None:
    """The wandb run id of this run folder: read from ``<run dir>/wandb_run_id``, else ``WANDB_RUN_ID``, else new;
    written there by rank 0, so every restart, requeue or re-run of the run logs to the same wandb run."""
    path = output_dir / WANDB_ID_FILE
    if path.is_file() and (stored := path.read_text().strip()):
        return stored
    if rank_zero_only.rank != 0:
        return None
    run_id = os.environ.get("WANDB_RUN_ID") or secrets.token_hex(4)
    atomic_write_text(path, run_id + "\n")
    return run_id


def _configure_wandb(cfg: DictConfig, output_dir: Path) -> None:
    """``logger.wandb.offline: null`` follows ``WANDB_MODE`` (offline unless it says online; ``disabled`` is left to
    wandb); ``logger.wandb.id: null`` becomes the run folder's id (``wandb_run_id``)."""
    node = OmegaConf.select(cfg, "logger.wandb")
    if node is None:
        return
    with open_dict(node):
        if node.get("offline") is None:
            node.offline = os.environ.get("WANDB_MODE", "offline") in ("offline", "dryrun")
        if node.get("id") is None:
            node.id = wandb_run_id(output_dir)


def _instantiate_group(group: DictConfig | None) -> list:
    return [instantiate(node) for node in (group or {}).values() if node is not None]


def _hyperparameters(cfg: DictConfig, output_dir: Path) -> dict[str, Any]:
    """The resolved config plus the run record (git commit, packages, SLURM ids) written by ``runinfo.capture``."""
    hparams = OmegaConf.to_container(cfg, resolve=True)
    hparams["run"] = runinfo.wandb_summary(runinfo.capture(cfg, output_dir))
    return hparams


def _finish_wandb(exit_code: int) -> None:
    """Close this process's wandb run (flushes the offline run; lets the next ``train`` call start a new one).

    Never raises: under SLURM's SIGTERM (requeue, preemption) wandb's service process may already be dead; the
    checkpoint and the CSV log are written by then and must not be turned into a crash by the logger."""
    wandb = sys.modules.get("wandb")
    if wandb is None or wandb.run is None:
        return
    try:
        wandb.finish(exit_code=exit_code)
    except Exception as e:  # noqa: BLE001 - any failure of the logger's shutdown
        log.warning("wandb shutdown failed (%s: %s); the checkpoint and csv/ are complete", type(e).__name__, e)
        try:  # drop the dead service connection now, or wandb's exit hook prints the same error again
            wandb.teardown(exit_code=exit_code)
        except Exception:  # noqa: BLE001, S110 - already reported above
            pass


def _signal_stop(trainer: L.Trainer) -> int | None:
    """The signal that stopped the run before ``trainer.max_steps`` (None: the run finished)."""
    received = [cb.received for cb in trainer.callbacks if isinstance(cb, StepCheckpoint) and cb.received]
    if not received:
        return None
    if 0 < trainer.max_steps <= trainer.global_step:
        return None  # the signal arrived during the final step: the run is complete
    return int(received[0])


def train(cfg: DictConfig) -> dict[str, Any]:
    """Fit ``cfg.module`` on ``cfg.data`` with ``cfg.trainer``; returns trainer, module, the written paths and
    ``stopped_by`` (the signal number that stopped the run early, else None; then no ``model.pt`` is written)."""
    output_dir = Path(cfg.paths.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    L.seed_everything(cfg.seed, workers=True)
    if cfg.get("matmul_precision"):
        torch.set_float32_matmul_precision(cfg.matmul_precision)
    ckpt = resume_path(cfg.get("resume"), output_dir)
    _announce(cfg, output_dir, ckpt)
    # plain dicts/lists (not DictConfig) reach the objects, so their saved hyper-parameters load with weights_only
    datamodule = instantiate(cfg.data, _convert_="all")
    make_resumable(datamodule, cfg.seed)
    module = instantiate(cfg.module, _convert_="all")
    if group := sweep_group():  # members of one Hydra multirun share a wandb group
        os.environ.setdefault("WANDB_RUN_GROUP", group)
    _configure_wandb(cfg, output_dir)
    loggers = _instantiate_group(cfg.get("logger"))
    trainer: L.Trainer = instantiate(cfg.trainer, callbacks=_instantiate_group(cfg.get("callbacks")), logger=loggers)
    hparams = _hyperparameters(cfg, output_dir)
    for lg in loggers:
        lg.log_hyperparams(hparams)
    try:
        try:
            # our checkpoints hold only tensors and plain types: load them without unpickling code
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt, weights_only=True)
        except SIGTERMException:
            # Lightning ends a SIGTERM'd fit by raising SystemExit(None) (exit status 0) after the step; our
            # StepCheckpoint has written that step by then: report it as a signal stop below instead
            if not any(isinstance(cb, StepCheckpoint) and cb.received for cb in trainer.callbacks):
                raise
        result: dict[str, Any] = {"trainer": trainer, "module": module, "output_dir": output_dir}
        last = output_dir / "checkpoints" / "last.ckpt"
        saved = [cb.saved_step for cb in trainer.callbacks if isinstance(cb, StepCheckpoint)]
        if trainer.global_step not in saved:  # e.g. stopped by max_epochs: the loop state is "epoch done"
            trainer.save_checkpoint(last, weights_only=False)
        result["checkpoint"] = last
    except BaseException:
        _finish_wandb(exit_code=1)
        raise
    result["stopped_by"] = stopped = _signal_stop(trainer)
    _finish_wandb(exit_code=0 if stopped is None else 128 + stopped)
    if stopped is not None:
        log.warning("stopped by signal %d at step %d of %d: checkpoint %s written, no model.pt", stopped,
                    trainer.global_step, trainer.max_steps, result["checkpoint"])  # fmt: skip
        for cb in trainer.callbacks:  # a submitit sweep member: now let submitit requeue it (it exits the process)
            if isinstance(cb, StepCheckpoint):
                cb.run_deferred_handlers()
        return result
    eval_model = getattr(module, "eval_model", None)
    if cfg.get("export_model", True) and eval_model is not None:
        model_path = output_dir / "model.pt"
        if trainer.is_global_zero:
            save_model(eval_model(), model_path, OmegaConf.to_container(cfg.model, resolve=True))
            log.info("exported %s (step %d)", model_path, trainer.global_step)
        result["model"] = model_path
    return result


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="train")
@report_user_errors("lp-train")
def hydra_main(cfg: DictConfig) -> None:
    """The Hydra task (also what a launcher runs for each sweep member): ``train`` and its exit status."""
    os.environ.setdefault("WANDB_SILENT", "true")
    result = train(cfg)
    step = result["trainer"].global_step
    if result["stopped_by"] is not None:
        code = 128 + result["stopped_by"]
        print(f"lp-train: stopped by signal {result['stopped_by']} at step {step} (checkpoint "
              f"{result['checkpoint']}); exit {code}: rerun the same command to resume", file=sys.stderr)  # fmt: skip
        raise SystemExit(code)
    print(f"lp-train: step {step}, checkpoint {result['checkpoint']}")


def main() -> None:
    """``lp-train``: Hydra command line; user errors -> one line, exit 2 (``--debug`` for the traceback)."""
    run_cli("lp-train", hydra_main)


if __name__ == "__main__":
    main()
