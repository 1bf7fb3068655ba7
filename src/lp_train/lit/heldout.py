"""Held-out self-reenactment tracked during training: every ``every_n_steps`` the module's eval model animates fixed
held-out pairs (source frame -> driving frame of the same clip) and its L1 is compared with the copy-the-source
baseline (prediction = source frame), per clip and per group (e.g. ``seen`` identities' unseen clip segments and
``unseen`` identities). This is the "does it learn motion" number of issue 6: a model that does not move the face
cannot beat copy-the-source.

The pairs file (``lp_train.learning_check`` writes one) is a ``torch.save``d dict, loaded with ``weights_only=True``::

    {clip_name: {"group": str, "source": (N, 3, S, S) float [0, 1], "driving": (N, 3, S, S) float [0, 1]}}

Every rank evaluates (the same numbers; no collectives); global rank 0 logs ``heldout/l1``, ``heldout/l1_copy_source``
and ``heldout/<group>/{l1,l1_copy_source}`` to the trainer's loggers and writes ``<output_dir>/heldout.json`` (the
history; atomic rewrite, entries past the resume step are dropped on resume).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch

from lp_train.fileio import atomic_write_text
from lp_train.images import resize_to

log = logging.getLogger(__name__)


def load_pairs(path: str | Path) -> dict[str, dict]:
    """Read and check a held-out pairs file (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"held-out pairs file {path} not found (python -m lp_train.learning_check writes one)")
    pairs = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(pairs, dict) or not pairs:
        raise ValueError(f"{path}: expected a non-empty dict of clips")
    for name, clip in pairs.items():
        src, drv = clip.get("source"), clip.get("driving")
        if not (torch.is_tensor(src) and torch.is_tensor(drv) and src.shape == drv.shape and src.dim() == 4):
            raise ValueError(f"{path}: clip {name!r} needs equal (N, 3, S, S) 'source' and 'driving' tensors")
    return pairs


@torch.no_grad()
def reenactment_l1(model: torch.nn.Module, pairs: dict[str, dict], batch_size: int = 16) -> dict:
    """Per-clip and per-group L1 of ``model(source, driving)["image"]`` (resized to the input size, clamped to [0, 1])
    and of the copied source against the driving frames; groups and the total are pair-weighted means."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype  # bf16 weights under DeepSpeed's bf16 mode take bf16 inputs
    modes = {m: m.training for m in model.modules()}
    model.eval()
    clips: dict[str, dict] = {}
    try:
        for name, clip in pairs.items():
            pred_sum = copy_sum = 0.0
            n = len(clip["source"])
            for i in range(0, n, batch_size):
                src = clip["source"][i : i + batch_size].to(device, torch.float32)
                drv = clip["driving"][i : i + batch_size].to(device, torch.float32)
                pred = resize_to(model(src.to(dtype), drv.to(dtype))["image"].float(), drv.shape[-1]).clamp(0, 1)
                pred_sum += (pred - drv).abs().mean(dim=(1, 2, 3)).sum().item()
                copy_sum += (src - drv).abs().mean(dim=(1, 2, 3)).sum().item()
            clips[name] = {"group": clip.get("group", "all"), "pairs": n, "l1": pred_sum / n,
                           "l1_copy_source": copy_sum / n}  # fmt: skip
    finally:
        for m, training in modes.items():
            m.train(training)
    groups: dict[str, dict] = {}
    for key in sorted({c["group"] for c in clips.values()}) + ["all"]:
        members = [c for c in clips.values() if key == "all" or c["group"] == key]
        n = sum(c["pairs"] for c in members)
        l1 = sum(c["l1"] * c["pairs"] for c in members) / n
        copy = sum(c["l1_copy_source"] * c["pairs"] for c in members) / n
        groups[key] = {"pairs": n, "l1": l1, "l1_copy_source": copy, "ratio": l1 / max(copy, 1e-12)}
    return {"clips": clips, "groups": groups}


class HeldOutReenactment(L.Callback):
    """Evaluates ``pl_module.eval_model()`` (or ``.model``) on held-out pairs at step 0, every ``every_n_steps`` and
    after the last step; see the module docstring."""

    def __init__(self, pairs: str, every_n_steps: int = 500, batch_size: int = 16, out_file: str | None = None):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.pairs_path, self.every, self.batch_size = pairs, every_n_steps, batch_size
        self.out_file = Path(out_file) if out_file else None
        self.pairs: dict | None = None
        self.history: list[dict] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self.pairs = load_pairs(self.pairs_path)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.out_file is not None and self.out_file.is_file():  # a resumed run keeps the history up to its step
            old = json.loads(self.out_file.read_text())
            self.history = [h for h in old.get("history", []) if h["step"] < trainer.global_step]
        if not any(h["step"] == trainer.global_step for h in self.history):
            self._evaluate(trainer, pl_module)

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args) -> None:
        if trainer.global_step % self.every == 0:
            self._evaluate(trainer, pl_module)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.history or self.history[-1]["step"] != trainer.global_step:
            self._evaluate(trainer, pl_module)

    def _evaluate(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        getter = getattr(pl_module, "eval_model", None)
        model = getter() if callable(getter) else pl_module.model
        result = reenactment_l1(model, self.pairs, self.batch_size)
        step = trainer.global_step
        self.history.append({"step": step, **result})
        if not trainer.is_global_zero:
            return
        metrics = {}
        for group, g in result["groups"].items():
            prefix = "heldout" if group == "all" else f"heldout/{group}"
            metrics[f"{prefix}/l1"], metrics[f"{prefix}/l1_copy_source"] = g["l1"], g["l1_copy_source"]
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
        summary = ", ".join(f"{k} {g['l1']:.4f} (copy {g['l1_copy_source']:.4f})" for k, g in result["groups"].items())
        log.info("held-out reenactment L1 at step %d: %s", step, summary)
        if self.out_file is not None:
            record = {"pairs": str(self.pairs_path), "history": self.history}
            atomic_write_text(self.out_file, json.dumps(record, indent=1))
