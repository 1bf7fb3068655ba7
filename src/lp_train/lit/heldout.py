"""Held-out self-reenactment tracked during training: every ``every_n_steps`` the module's eval model animates fixed
held-out pairs (source frame -> driving frame of the same clip), per clip and per group (e.g. ``seen`` identities'
unseen clip segments and ``unseen`` identities), beside controls on the same frames (``lp_train.metrics.controls``):
copy-the-source (a model that does not move the face cannot beat it), the blur-matched copy of the source (a model
that learnt appearance but no motion scores like it), the large-motion subset and a 1/8-resolution L1.

The pairs file (``lp_train.learning_check`` writes one) is a ``torch.save``d dict, loaded with ``weights_only=True``::

    {clip_name: {"group": str, "source": (N, 3, S, S) float [0, 1], "driving": (N, 3, S, S) float [0, 1]}}

Every rank evaluates (the same numbers; no collectives); global rank 0 logs the scalars of ``heldout_scalars``
(``heldout/l1``, ``heldout/<group>/copy_source/l1``, ...) to the trainer's loggers and writes
``<output_dir>/heldout.json`` (the history; atomic rewrite, entries past the resume step are dropped on resume).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import lightning as L
import torch

from lp_train.fileio import atomic_write_text
from lp_train.images import resize_to
from lp_train.metrics.controls import METHODS, clip_scores, frame_l1s, score_table, source_runs

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
    """Per-clip and per-group scores of ``model(source, driving)["image"]`` (resized to the input size, clamped to
    [0, 1]) beside the controls of ``lp_train.metrics.controls`` on the same frames: ``copy_source``,
    ``blur_matched_copy_source`` (matched to the model's self-reconstruction L1 ``reconstruction_floor``), the
    ``large_motion`` subset and the 1/8-resolution ``l1_low``. Groups and the total are pair-weighted means."""
    param = next(model.parameters())
    device, dtype = param.device, param.dtype  # bf16 weights under DeepSpeed's bf16 mode take bf16 inputs

    def run(src: torch.Tensor, drv: torch.Tensor) -> torch.Tensor:
        out = model(src.to(device, dtype), drv.to(device, dtype))["image"].float()
        return resize_to(out, drv.shape[-1]).clamp(0, 1).cpu()

    modes = {m: m.training for m in model.modules()}
    model.eval()
    clips: dict[str, dict] = {}
    try:
        for name, clip in pairs.items():
            source, driving = clip["source"].float(), clip["driving"].float()
            parts = [frame_l1s(run(source[i : i + batch_size], driving[i : i + batch_size]),
                               driving[i : i + batch_size]) for i in range(0, len(source), batch_size)]  # fmt: skip
            model_l1 = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
            starts, counts = source_runs(source)
            uniq = source[starts]
            recon = torch.cat([run(uniq[i : i + batch_size], uniq[i : i + batch_size])
                               for i in range(0, len(uniq), batch_size)])  # fmt: skip
            clips[name] = {"group": clip.get("group", "all"),
                           **clip_scores(model_l1, source, driving, recon, starts, counts)}  # fmt: skip
    finally:
        for m, training in modes.items():
            m.train(training)
    return score_table(clips)


def heldout_scalars(result: dict) -> dict[str, float]:
    """Logger scalars of one evaluation: per group (``heldout/`` for all pairs, ``heldout/<group>/``) and per clip
    (``heldout/clip/<name>/``): ``<method>/{l1,l1_low}`` for the model and every control, ``large_motion/<method>/l1``,
    ``reconstruction_floor``, and the flat ``l1`` / ``l1_copy_source`` of earlier runs."""
    metrics = {}
    rows = [("heldout" if k == "all" else f"heldout/{k}", g) for k, g in result["groups"].items()]
    rows += [(f"heldout/clip/{k}", c) for k, c in result["clips"].items()]
    for prefix, e in rows:
        metrics[f"{prefix}/l1"], metrics[f"{prefix}/l1_copy_source"] = e["l1"], e["l1_copy_source"]
        metrics[f"{prefix}/reconstruction_floor"] = e["reconstruction_floor"]
        for m in METHODS:
            for k, v in e[m].items():
                metrics[f"{prefix}/{m}/{k}"] = v
            if e["large_motion"][m] is not None:
                metrics[f"{prefix}/large_motion/{m}/l1"] = e["large_motion"][m]["l1"]
    return metrics


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
        metrics = heldout_scalars(result)
        for lg in trainer.loggers:
            lg.log_metrics(metrics, step=step)
        summary = ", ".join(
            f"{k} {g['l1']:.4f} (copy {g['l1_copy_source']:.4f}, "
            f"blur-matched {g['blur_matched_copy_source']['l1']:.4f}, "
            f"floor {g['reconstruction_floor']:.4f})"
            for k, g in result["groups"].items()
        )
        log.info("held-out reenactment L1 at step %d: %s", step, summary)
        if self.out_file is not None:
            record = {"pairs": str(self.pairs_path), "history": self.history}
            atomic_write_text(self.out_file, json.dumps(record, indent=1))
