"""Stage 1 of LivePortrait (paper Sec. 3.1-3.2, "base model training"): F, M, W, G trained from scratch (or
fine-tuned) on (source, driving) pairs against up to three discriminators (global, face, lip).

The objective is one ``Stage1Loss`` (``lp_train/losses/stage1.py``: its terms, weights and the regions the
discriminators judge); this module owns the networks, the optimisers and the two explicit phases of manual
optimisation (``_generator_step`` then ``_discriminator_step``). ``global_step`` counts generator steps (training
iterations): the discriminator's optimiser is stepped through the strategy directly so it does not advance it.
Without discriminators (``experiment=stage1_cpu``) there is one optimiser and no GAN phase. The stitching/retargeting
heads in ``model`` (stage 2) are frozen here and receive no gradient.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.image import PeakSignalNoiseRatio

from lp_train.checkpoint import load_model_weights
from lp_train.images import resize_to
from lp_train.lit.ema import EMA
from lp_train.lit.monitoring import grad_norm
from lp_train.lit.nonfinite import NonFiniteGuard
from lp_train.lit.visualize import log_grid, reenactment_grid
from lp_train.losses.stage1 import FROZEN_CHILDREN, Stage1Loss
from lp_train.models.liveportrait import LivePortrait

log = logging.getLogger(__name__)


GENERATOR_NETS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
COMPILABLE = (*GENERATOR_NETS, "discriminators")  # what ``compile`` may name
# constructor arguments that are objects built by Hydra (not hyper-parameters)
INJECTED = ("model", "loss", "discriminators", "optimizer_g", "optimizer_d", "scheduler_g", "scheduler_d")
# frozen third-party networks (inside the loss): rebuilt from weights.* at start-up, never written into checkpoints
FROZEN_PREFIXES = tuple(f"loss.{name}." for name in FROZEN_CHILDREN)
# checkpoints written before the loss became one object kept these networks at the top level
_LEGACY_LOSS_CHILDREN = (*FROZEN_CHILDREN, "head_pose", "equivariance", "keypoint_prior", "deformation", "guide")


def to_channels_last(net: nn.Module) -> nn.Module:
    """Every 4-D parameter and buffer of ``net`` to ``torch.channels_last``, every 5-D one (Conv3d in F and W) to
    ``torch.channels_last_3d``, in place (``net.to(memory_format=torch.channels_last)`` raises on 5-D tensors)."""

    def convert(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 4:
            return t.contiguous(memory_format=torch.channels_last)
        if t.dim() == 5:
            return t.contiguous(memory_format=torch.channels_last_3d)
        return t

    return net._apply(convert)


def _compile_names(compile: bool | Sequence[str]) -> tuple[str, ...]:
    """``compile`` -> the names of the networks to compile (checked against ``COMPILABLE``)."""
    if isinstance(compile, bool):
        return COMPILABLE if compile else ()
    names = tuple(compile)
    unknown = set(names) - set(COMPILABLE)
    if unknown:
        raise ValueError(f"compile: unknown networks {sorted(unknown)}; choose from {list(COMPILABLE)} (or true)")
    return names


class Stage1Module(L.LightningModule):
    """F, M, W, G (+ discriminators) trained with a ``Stage1Loss``.

    Every argument is set by ``conf/module/stage1.yaml`` (with the experiment's overrides); the code has no defaults.

    Args:
        model: the LivePortrait networks (F, M, W, G trained; stitching heads, if any, frozen).
        loss: the stage-1 objective (terms, weights, regions); its weights are checked against ``discriminators``.
        discriminators: ``{"global": D, "face": D, "lip": D}``, a subset, or none (no GAN phase); owned here.
        optimizer_g: partial optimiser for F, M, W, G (``_partial_: true``; paper: Adam 2e-4, betas 0.5/0.999).
        optimizer_d: partial optimiser for the discriminators (unused without discriminators).
        scheduler_g: partial LR scheduler for ``optimizer_g`` (stepped every iteration), or None.
        scheduler_d: partial LR scheduler for ``optimizer_d``, or None.
        d_start_step: generator step from which the GAN terms and discriminator updates run.
        grad_clip_g: max global grad norm for the generator (None: no clipping, norm still logged).
        grad_clip_d: same for the discriminators.
        ema_decay: generator EMA decay (None: no EMA); the EMA is used for validation and export.
        max_nonfinite: stop with an error after this many consecutive non-finite losses or gradients.
        image_every: log an image grid every N generator steps (0: never).
        num_images: rows in the grids.
        init_weights: fine-tune start: our model file, a Lightning .ckpt, an official release folder or a shipped
            model's short name (``lp_train.pretrained``, e.g. ``stage1_tiny_faces``).
        channels_last: channels_last memory format for F, M, W, G and the discriminators (``to_channels_last``).
        compile: ``torch.compile`` networks in place: True = F, M, W, G and the discriminators, or a list of names
            from ``COMPILABLE`` (e.g. ``[warping_module, spade_generator]``); False = none.
        compile_backend: ``torch.compile`` backend (``inductor``; ``aot_eager`` / ``eager`` trace without code
            generation: debugging and the CPU dry run of ``bench/gpu_check.py``).
    """

    def __init__(
        self,
        model: LivePortrait,
        loss: Stage1Loss,
        discriminators: Mapping[str, nn.Module],
        optimizer_g: Callable[..., torch.optim.Optimizer],
        optimizer_d: Callable[..., torch.optim.Optimizer],
        scheduler_g: Callable[..., Any] | None,
        scheduler_d: Callable[..., Any] | None,
        d_start_step: int,
        grad_clip_g: float | None,
        grad_clip_d: float | None,
        ema_decay: float | None,
        max_nonfinite: int,
        image_every: int,
        num_images: int,
        init_weights: str | None,
        channels_last: bool,
        compile: bool | Sequence[str],
        compile_backend: str,
    ):
        super().__init__()
        self.save_hyperparameters(ignore=list(INJECTED))
        self.automatic_optimization = False
        self.model = model
        self.loss = loss
        self.discriminators = nn.ModuleDict(dict(discriminators))
        self.loss.bind(self.discriminators)
        self.optimizer_g, self.optimizer_d = optimizer_g, optimizer_d
        self.scheduler_g, self.scheduler_d = scheduler_g, scheduler_d
        self.d_start_step, self.grad_clip_g, self.grad_clip_d = d_start_step, grad_clip_g, grad_clip_d
        self.guard = NonFiniteGuard(max_nonfinite)
        self.image_every, self.num_images = image_every, num_images
        if model.stitching_retargeting_module is not None:
            model.stitching_retargeting_module.requires_grad_(False)  # stage 2's heads: not trained here
        if init_weights:
            load_model_weights(self.model, init_weights)  # heads too if the file has them (frozen in stage 1)
            log.info("stage 1: fine-tuning from %s", init_weights)
        self.compile_names = _compile_names(compile)
        self._accelerated = False
        self.model_ema = EMA(self.model, ema_decay) if ema_decay else None
        self.val_l1, self.val_l1_copy, self.val_l1_hr = MeanMetric(), MeanMetric(), MeanMetric()
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0)
        self._logs: dict[str, Any] = {}  # this step's scalars, logged once at the end of training_step

    # ----------------------------------------------------------------------------------------------- setup
    def generator_parameters(self) -> list[nn.Parameter]:
        return [p for name in GENERATOR_NETS for p in getattr(self.model, name).parameters()]

    def configure_optimizers(self):
        opt_g = self.optimizer_g(params=self.generator_parameters())
        d_params = list(self.discriminators.parameters())  # none: no GAN terms (e.g. experiment=stage1_cpu)
        opt_d = self.optimizer_d(params=d_params) if d_params else None
        optimizers, schedulers = [opt for opt in (opt_g, opt_d) if opt is not None], []
        for opt, sched in ((opt_g, self.scheduler_g), (opt_d, self.scheduler_d)):
            if opt is not None and sched is not None:
                schedulers.append({"scheduler": sched(optimizer=opt), "interval": "step"})
        return optimizers, schedulers

    def configure_model(self) -> None:
        """channels_last and ``torch.compile`` as configured, once (Lightning calls this hook every fit/validate)."""
        if self._accelerated:
            return
        self._accelerated = True
        nets = {name: getattr(self.model, name) for name in GENERATOR_NETS} | {"discriminators": self.discriminators}
        if self.hparams.channels_last:
            for net in nets.values():
                to_channels_last(net)
        for name in self.compile_names:
            for net in nets[name].values() if name == "discriminators" else [nets[name]]:
                net.compile(backend=self.hparams.compile_backend)  # in place: state-dict keys unchanged
        if self.hparams.channels_last or self.compile_names:
            log.info("stage 1: channels_last=%s, compiled %s (backend %s)", self.hparams.channels_last,
                     list(self.compile_names), self.hparams.compile_backend)  # fmt: skip

    def on_fit_start(self) -> None:
        uncalibrated = self.loss.uncalibrated()
        if uncalibrated:
            log.warning("!" * 80)
            log.warning(
                "stage 1 uses RANDOM weights for %s: loss values are uncalibrated (tests/demo only)", uncalibrated
            )
            log.warning("!" * 80)
        teacher = "pose teacher" if self.loss.pose_teacher is not None else "landmark labels"
        log.info("stage 1 head-pose targets: %s", teacher)

    # ----------------------------------------------------------------------------------------------- phases
    def _generator_step(self, batch: Mapping[str, torch.Tensor]) -> dict | None:
        """Forward F, M, W, G, compute the generator terms, one optimiser step. Returns the forward outputs, or
        None when the step was skipped (non-finite loss)."""
        opt_g = self._optimizers()[0]
        gan_on = self.global_step >= self.d_start_step
        with self.toggled_optimizer(opt_g):
            with torch.profiler.record_function("g_forward"):
                out = self.model(batch["source"], batch["driving"])
                terms = self.loss.generator_losses(self.model, batch, out, self.discriminators if gan_on else {})
                total = self.loss.total(terms)
            if not self._finite(total, "generator"):
                return None
            opt_g.zero_grad(set_to_none=True)
            with torch.profiler.record_function("g_backward"):
                self.manual_backward(total)
            opt_g.step()
        if self.model_ema is not None:
            self.model_ema.update(self.model)
        self._logs.update({f"train/g/{k}": v.detach() for k, v in terms.items()} | {"train/g/total": total.detach()})
        return out

    def _discriminator_step(self, batch: Mapping[str, torch.Tensor], pred: torch.Tensor) -> None:
        """Update the discriminators on (driving_hr, detached prediction), region by region."""
        opt_d = self._optimizers()[1]
        target, boxes = batch["driving_hr"], batch["driving_boxes"]
        with self.toggled_optimizer(opt_d):
            with torch.profiler.record_function("d_forward"):
                terms, scores = self.loss.discriminator_losses(self.discriminators, pred.detach(), target, boxes)
                total = self.loss.total(terms, prefix="d_")
            if not self._finite(total, "discriminator"):
                return
            opt_d.zero_grad(set_to_none=True)
            with torch.profiler.record_function("d_backward"):
                self.manual_backward(total)
            # stepped through the strategy (precision plugin, hooks, clipping) without advancing global_step
            self.trainer.strategy.optimizer_step(opt_d.optimizer, closure=lambda: None, model=self)
        self._logs.update({f"train/d/{k}": v.detach() for k, v in terms.items()} | {"train/d/total": total.detach()})
        self._logs.update({f"train/d/{k}": v for k, v in scores.items()})

    def _finite(self, loss: torch.Tensor, phase: str) -> bool:
        """All ranks agree whether ``loss`` is finite; a non-finite one is skipped and counted by the guard."""
        finite = bool(self.trainer.strategy.reduce_boolean_decision(bool(torch.isfinite(loss)), all=True))
        self.guard.record(finite, phase, self.global_step)
        self._logs["train/nonfinite_skipped"] = float(self.guard.total)
        return finite

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        step, self._logs = self.global_step, {}
        out = self._generator_step(batch)
        if out is not None:
            if step >= self.d_start_step and len(self.discriminators):
                self._discriminator_step(batch, out["image"])
            for sched in self._schedulers():
                sched.step()
            if self.image_every and step % self.image_every == 0:
                self._log_images("train/images", batch, out, step)
        self.log_dict(self._logs, batch_size=batch["source"].shape[0])
        if "train/g/total" in self._logs:
            self.log("train/loss", self._logs["train/g/total"], prog_bar=True, batch_size=batch["source"].shape[0])

    def _optimizers(self) -> list:
        opts = self.optimizers()
        return opts if isinstance(opts, list) else [opts]  # Lightning unwraps a single optimiser

    def _schedulers(self) -> list:
        scheds = self.lr_schedulers()
        return [] if scheds is None else (scheds if isinstance(scheds, list) else [scheds])

    # ----------------------------------------------------------------------------------------------- hooks
    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Runs after unscaling: log the gradient norm, clip it, and drop non-finite gradients (skips the step)."""
        is_g = optimizer is self._optimizers()[0].optimizer
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        clip = self.grad_clip_g if is_g else self.grad_clip_d
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm=clip if clip else math.inf)
        name = "g" if is_g else "d"
        self._logs[f"train/grad_norm/{name}"] = norm.detach().float()
        self._logs[f"train/lr/{name}"] = float(optimizer.param_groups[0]["lr"])
        for net in GENERATOR_NETS if is_g else ():
            self._logs[f"train/grad_norm/{net}"] = grad_norm(getattr(self.model, net).parameters())
        scaler_managed = str(self.trainer.precision).startswith("16")
        if not scaler_managed and not torch.isfinite(norm):
            for p in params:
                p.grad = None  # the optimiser skips parameters without gradients
            self.guard.record(False, f"{name} gradients", self.global_step)

    def _log_images(self, key: str, batch: Mapping[str, torch.Tensor], out: dict, step: int) -> None:
        if not self.trainer.is_global_zero:
            return
        grid = reenactment_grid(
            batch["source_hr"], batch["driving_hr"], out["image"], out["occlusion_map"], out["x_s"], out["x_d"],
            self.num_images,
        )  # fmt: skip
        log_grid(self.loggers, key, grid, step, f"{self.trainer.default_root_dir}/images")

    # ----------------------------------------------------------------------------------------------- validation
    def eval_model(self) -> LivePortrait:
        """The network used for validation and export: the EMA if enabled, else the trained one."""
        return self.model_ema.module if self.model_ema is not None else self.model

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        """Self-reenactment metrics at the *input* resolution (the paper's protocol: 512² outputs are resized to
        256²), against the copy-the-source baseline; ``val/l1_hr`` compares the full-size output."""
        out = self.eval_model()(batch["source"], batch["driving"])
        pred = resize_to(out["image"], batch["driving"].shape[-1]).float().clamp(0, 1)
        target = batch["driving"].float()
        b = target.shape[0]
        self.val_l1.update((pred - target).abs().mean(dim=(1, 2, 3)))
        self.val_l1_copy.update((batch["source"].float() - target).abs().mean(dim=(1, 2, 3)))
        self.val_l1_hr.update((out["image"].float() - batch["driving_hr"].float()).abs().mean(dim=(1, 2, 3)))
        self.val_psnr.update(pred, target)
        metrics = {"val/l1": self.val_l1, "val/l1_copy_source": self.val_l1_copy, "val/l1_hr": self.val_l1_hr,
                   "val/psnr": self.val_psnr}  # fmt: skip
        self.log_dict(metrics, on_step=False, on_epoch=True, batch_size=b)
        if batch_idx == 0 and self.image_every:
            self._log_images("val/images", batch, out, self.global_step)

    # ----------------------------------------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        """Frozen third-party networks are rebuilt from ``weights.*`` and not stored; the guard's counters are."""
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if k.startswith(FROZEN_PREFIXES)]:
            del sd[k]
        checkpoint["nonfinite_guard"] = self.guard.state_dict()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        sd = checkpoint["state_dict"]
        for k in [k for k in sd if k.split(".", 1)[0] in _LEGACY_LOSS_CHILDREN]:
            sd[f"loss.{k}"] = sd.pop(k)  # a checkpoint from before Stage1Loss: the loss's children moved under loss.
        for k, v in self.state_dict().items():
            if k.startswith(FROZEN_PREFIXES):
                sd.setdefault(k, v)
        if "nonfinite_guard" in checkpoint:
            self.guard.load_state_dict(checkpoint["nonfinite_guard"])
