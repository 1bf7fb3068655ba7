"""Shared helpers of the stage-1 / lp-train tests: composing ``conf/train.yaml`` for a tiny CPU run, and a probe
callback that the DDP test injects into ``lp-train`` subprocesses (``+callbacks.probe=...``, PYTHONPATH=tests)."""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"

# A tiny stage-1 run that fits the 2-core CI budget: batch 2, no wandb, no progress bar, no validation.
FAST = [
    "experiment=stage1_tiny",
    "data.batch_size=2",
    "data.train_length=8",
    "data.val_length=2",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    "trainer.limit_val_batches=0",
    "module.image_every=0",
]


def compose_train(output_dir: Path | str, *overrides: str, fast: bool = True, wandb: bool = False) -> DictConfig:
    """``conf/train.yaml`` composed like ``lp-train`` would, with ``paths.output_dir`` set (no Hydra runtime);
    ``fast`` applies ``FAST``; wandb is dropped unless asked for (its service process costs seconds)."""
    extra = [*(FAST if fast else []), *([] if wandb else ["~logger.wandb"])]
    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=[*extra, f"paths.output_dir={output_dir}", *overrides])


class ProbeRankState(L.Callback):
    """Writes ``{out_dir}/rank{r}.pt`` = generator/discriminator weights and the first logged losses per rank."""

    def __init__(self, out_dir: str):
        self.out_dir = Path(out_dir)
        self.losses: list[float] = []
        self.start: dict[str, torch.Tensor] = {}

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        loss = trainer.callback_metrics.get("train/g/total")
        if loss is not None:
            self.losses.append(float(loss))

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu().clone() for k, v in pl_module.state_dict().items()}
        torch.save({"state": state, "start": self.start, "losses": self.losses, "world_size": trainer.world_size,
                    "step": trainer.global_step}, self.out_dir / f"rank{trainer.global_rank}.pt")  # fmt: skip


def module_settings(name: str, **overrides) -> dict:
    """The literal settings of ``conf/module/<name>.yaml`` (its one home; the module classes keep no defaults),
    without Hydra keys and interpolated (injected) entries, updated with ``overrides``. ``loss_weights`` overrides
    are merged into the configured weights."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF / "module" / f"{name}.yaml")
    out = {
        k: OmegaConf.to_container(v) if OmegaConf.is_config(v) else v
        for k, v in node.items_ex(resolve=False)
        if not str(k).startswith("_") and not (isinstance(v, str) and "${" in v) and not OmegaConf.is_missing(node, k)
    }
    out = {k: v for k, v in out.items() if not (isinstance(v, dict) and "_target_" in v)}  # optimiser etc.: injected
    if "loss_weights" in overrides:
        overrides["loss_weights"] = {**out.get("loss_weights", {}), **overrides["loss_weights"]}
    return {**out, **overrides}


def data_settings(name: str, **overrides) -> dict:
    """The settings of ``conf/data/<name>.yaml`` (the data modules keep no defaults), without Hydra keys, updated
    with ``overrides``: for tests that build a data module directly."""
    from omegaconf import OmegaConf

    node = OmegaConf.load(CONF / "data" / f"{name}.yaml")
    out = {k: v for k, v in OmegaConf.to_container(node).items() if not str(k).startswith("_") and k != "defaults"}
    return {**out, **overrides}
