"""Stage 2 of LivePortrait (paper Sec. 3.2, "Stitching and retargeting"): S, R_eyes, R_lip on a frozen base model.

The base networks F, M, W, G come from stage 1 (ours or the official release) and stay frozen (eval mode, no
gradients). The three MLP heads start with a zero output (hidden layers randomly initialised, last layer zero, so
Δ = 0 and the model's output is unchanged at step 0) and are trained jointly or one at a time (``heads``):

- stitching S: x_s ⧺ x_d -> Δ_st (3K + 2); prediction I_st = G(W(f_s; x_s, x_d ⊕ Δ_st)) on cross-identity (driving
  motion of another sample of the batch) and same-identity pairs; loss = L1(I_st, I_s) outside the source's face
  mask (shoulders, background) + λ‖Δ_st‖₁;
- eyes R_eyes: x_s ⧺ source eye ratios (2) ⧺ target ratio c ~ U(eye_range) -> Δ_eyes; I = G(W(f_s; x_s, x_s + Δ));
  loss = |ratio_eyes(I) - c| (both eyes; ratio measured by a differentiable landmark model) + L1(I, I_s) outside the
  eye mask + λ‖Δ_eyes‖₁;
- lips R_lip: the same with x_s ⧺ source lip ratio ⧺ target, the lip ratio and the lip mask.

Ratios are ``lp_train.face.landmarks.eye_open_ratio`` / ``lip_open_ratio`` of the landmark model's points (protocol in
``lp_train.teachers.landmark_regressor``). The paper gives no loss weights; ours are config values (conf/module).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import make_grid

from lp_train.checkpoint import load_model_weights
from lp_train.face.landmarks import eye_open_ratio, lip_open_ratio
from lp_train.inference import retarget_delta, stitch
from lp_train.keypoints import transform_keypoints
from lp_train.lit.visualize import log_grid
from lp_train.models.liveportrait import LivePortrait
from lp_train.teachers.landmark_regressor import RATIO_INDICES, model_indices, predict_mesh
from lp_train.weights import load_into

log = logging.getLogger(__name__)

HEADS = ("stitching", "eye", "lip")
BASE_NETS = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
LOSS_TERMS = tuple(
    f"{head}_{term}"
    for head, terms in (
        ("stitching", ("region", "delta")),
        ("eye", ("condition", "region", "delta")),
        ("lip", ("condition", "region", "delta")),
    )
    for term in terms
)


def masked_l1(pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Mean |pred - target| over the pixels where ``weight`` (B, 1, H, W) is on (weighted mean)."""
    w = weight.expand_as(pred)
    return ((pred - target).abs() * w).sum() / w.sum().clamp_min(1.0)


def delta_l1(delta: torch.Tensor) -> torch.Tensor:
    """λ‖Δ‖₁ regulariser, as a mean over entries."""
    return delta.abs().mean()


def ratio_condition(measured: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """|measured ratio - target|; measured (B, R), target (B, 1) broadcast over the R eyes (or the lip)."""
    return (measured - target).abs().mean()


def init_head(net: nn.Module) -> None:
    """Hidden Linear layers at PyTorch's default init, the last Linear at zero: Δ = 0 at start, yet trainable
    (an all-zero MLP only ever learns its last bias: every hidden activation and back-propagated signal is 0)."""
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    for m in linears[:-1]:
        m.reset_parameters()
    nn.init.zeros_(linears[-1].weight)
    nn.init.zeros_(linears[-1].bias)


class Stage2Module(L.LightningModule):
    """Trains S / R_eyes / R_lip on a frozen LivePortrait (automatic optimisation).

    Args:
        (Every argument is set by ``conf/module/stage2.yaml``; the code keeps no defaults of its own.)
        model: LivePortrait with ``stitching_retargeting_module``.
        optimizer: partial optimiser (``_partial_: true``), called with the trained heads' parameters.
        landmark_model: differentiable landmark network (protocol in ``lp_train.teachers.landmark_regressor``);
            required when ``eye`` or ``lip`` is trained.
        scheduler: optional partial LR scheduler, stepped every optimisation step.
        heads: the heads to train, any of ``stitching``, ``eye``, ``lip`` (all three jointly by default).
        base_checkpoint: base weights to load (null: keep ``model`` as built, e.g. random for tests).
        checkpoint_prefix: key prefix inside a Lightning checkpoint (default ``model.``).
        heads_from_checkpoint: also load S / R from ``base_checkpoint`` (fine-tuning); else they start at Δ = 0.
        landmark_weights: ``weights.landmark`` value: a local file for ``landmark_model`` or ``random``.
        loss_weights: a weight for every term of ``LOSS_TERMS`` (values: ``conf/module/stage2.yaml``).
        eye_range: range of the sampled target eye-open ratio.
        lip_range: range of the sampled target lip-open ratio.
        batch_cross_identity_prob: chance that a stitching sample is driven by another sample of the batch.
        image_every: training steps between logged image grids (0: never; validation logs one per run of it).
        grid_ratios: target ratios shown in the grids.
    """

    def __init__(
        self,
        model: LivePortrait,
        optimizer: Callable[[Iterable[nn.Parameter]], torch.optim.Optimizer],
        landmark_model: nn.Module | None,
        scheduler: Callable[[torch.optim.Optimizer], object] | None,
        heads: Sequence[str],
        base_checkpoint: str | None,
        checkpoint_prefix: str | None,
        heads_from_checkpoint: bool,
        landmark_weights: str | None,
        loss_weights: Mapping[str, float],
        eye_range: Sequence[float],
        lip_range: Sequence[float],
        batch_cross_identity_prob: float,
        image_every: int,
        grid_ratios: Sequence[float],
    ):
        super().__init__()
        self.save_hyperparameters(ignore=["model", "landmark_model", "optimizer", "scheduler"])
        self.heads = tuple(heads)
        if not self.heads or set(self.heads) - set(HEADS) or len(set(self.heads)) != len(self.heads):
            raise ValueError(f"heads must be distinct names from {HEADS}, got {list(heads)}")
        if model.stitching_retargeting_module is None:
            raise ValueError("stage 2 needs a LivePortrait built with stitching_retargeting_module")
        if set(loss_weights) != set(LOSS_TERMS):
            raise ValueError(f"loss_weights must weigh exactly {sorted(LOSS_TERMS)}, got {sorted(loss_weights)}")
        self.loss_weights = {k: float(v) for k, v in loss_weights.items()}
        self.model = model
        self.landmark_model = landmark_model
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.eye_range, self.lip_range = tuple(eye_range), tuple(lip_range)
        self.batch_cross_identity_prob = batch_cross_identity_prob
        self.image_every, self.grid_ratios = image_every, tuple(grid_ratios)
        if base_checkpoint:
            load_model_weights(model, base_checkpoint, checkpoint_prefix, heads=heads_from_checkpoint)
            log.info(
                "stage 2: loaded %s weights from %s",
                "base + head" if heads_from_checkpoint else "base",
                base_checkpoint,
            )
        if not (base_checkpoint and heads_from_checkpoint):
            for name in HEADS:
                init_head(getattr(model.stitching_retargeting_module, name))
        self._setup_landmark_model(landmark_weights)
        model.requires_grad_(False)
        for name in self.heads:
            self.head(name).requires_grad_(True)
        self.train()

    def _setup_landmark_model(self, weights: str | None) -> None:
        if not {"eye", "lip"} & set(self.heads):
            return
        lmk = self.landmark_model
        if lmk is None:
            raise ValueError(
                "training the eye or lip head needs a landmark_model (see lp_train.teachers.landmark_regressor)"
            )
        if weights is not None:
            load_into(lmk, "landmark", weights)
        lmk.requires_grad_(False)
        idx = getattr(lmk, "indices", None)
        if idx is not None:
            missing = sorted(set(RATIO_INDICES) - set(model_indices(lmk, len(idx)).tolist()))
            if missing:
                raise ValueError(f"landmark_model.indices lacks the mesh points {missing} the eye/lip ratios use")

    def head(self, name: str) -> nn.Module:
        return getattr(self.model.stitching_retargeting_module, name)

    def train(self, mode: bool = True) -> Stage2Module:
        """Heads follow ``mode``; the frozen base and the landmark model always stay in eval mode."""
        super().train(mode)
        for name in BASE_NETS:
            getattr(self.model, name).eval()
        if self.landmark_model is not None:
            self.landmark_model.eval()
        return self

    # -- forward pieces ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def encode(self, batch: Mapping[str, torch.Tensor], cross: torch.Tensor) -> dict[str, torch.Tensor]:
        """Frozen F and M: f_s, x_s, and x_d with the driving motion of sample ``(i + 1) % B`` where ``cross``."""
        src, drv = batch["source"], batch["driving"]
        b = src.shape[0]
        f_s = self.model.extract_feature(src)
        s, d = self.model.motion(torch.cat([src, drv])).split(b)
        x_s = transform_keypoints(s.kp, s.rotation, s.exp, s.scale, s.t)  # (B, K, 3)
        perm = torch.where(cross, torch.arange(b, device=src.device).roll(-1), torch.arange(b, device=src.device))
        x_d = transform_keypoints(s.kp, d.rotation[perm], d.exp[perm], d.scale[perm], d.t[perm])
        return {"f_s": f_s, "x_s": x_s, "x_d": x_d, "perm": perm}

    def decode(self, f_s: torch.Tensor, x_s: torch.Tensor, targets: list[torch.Tensor]) -> list[torch.Tensor]:
        """G(W(f_s; x_s, x)) for every x in ``targets``, as one batched call; returns the images in order."""
        n = len(targets)
        img = self.model.warp_decode(f_s.repeat(n, 1, 1, 1, 1), x_s.repeat(n, 1, 1), torch.cat(targets))["image"]
        return list(img.chunk(n))

    def stitch(self, x_s: torch.Tensor, x_d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return stitch(self.head("stitching"), x_s, x_d)  # (x_d + Δ, Δ (B, 3K + 2))

    def retarget(self, name: str, x_s: torch.Tensor, ratios: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        delta = retarget_delta(self.head(name), x_s, ratios)  # (B, K, 3)
        return x_s + delta, delta

    def measure(self, name: str, image: torch.Tensor) -> torch.Tensor:
        """Eye (B, 2) or lip (B, 1) open ratio of generated images through the landmark model."""
        mesh = predict_mesh(self.landmark_model, image)  # (B, 478, 2)
        return eye_open_ratio(mesh) if name == "eye" else lip_open_ratio(mesh)

    # -- losses --------------------------------------------------------------------------------------------------
    def _sample(self, shape: tuple[int, ...], lo_hi: Sequence[float], gen: torch.Generator | None) -> torch.Tensor:
        u = torch.rand(shape, generator=gen, device="cpu" if gen is not None else self.device)
        return (lo_hi[0] + (lo_hi[1] - lo_hi[0]) * u).to(self.device)

    def compute_losses(
        self, batch: Mapping[str, torch.Tensor], gen: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Total loss and every term (``<head>/<term>``, plus ``<head>/delta_abs`` magnitudes)."""
        b = batch["source"].shape[0]
        same = batch.get("same_identity")
        same = torch.ones(b, dtype=torch.bool, device=self.device) if same is None else same.bool().view(b)
        cross = (self._sample((b,), (0, 1), gen) < self.batch_cross_identity_prob) & same & (b > 1)
        enc = self.encode(batch, cross)
        f_s, x_s, x_d = enc["f_s"], enc["x_s"], enc["x_d"]
        targets, deltas, conds = [], {}, {}
        if "stitching" in self.heads:
            x_st, deltas["stitching"] = self.stitch(x_s, x_d)
            targets.append(x_st)
        for name, key, rng in (
            ("eye", "source_eye_ratio", self.eye_range),
            ("lip", "source_lip_ratio", self.lip_range),
        ):
            if name in self.heads:
                conds[name] = self._sample((b, 1), rng, gen)
                x, deltas[name] = self.retarget(name, x_s, torch.cat([batch[key].to(x_s), conds[name]], dim=1))
                targets.append(x)
        images = dict(zip(deltas, self.decode(f_s, x_s, targets), strict=True))
        ref, masks = batch["source_hr"], batch["source_masks"]
        terms: dict[str, torch.Tensor] = {}
        for name, region in (("stitching", 0), ("eye", 1), ("lip", 2)):
            if name not in deltas:
                continue
            terms[f"{name}/region"] = masked_l1(images[name], ref, 1 - masks[:, region : region + 1])
            terms[f"{name}/delta"] = delta_l1(deltas[name])
            if name in conds:
                terms[f"{name}/condition"] = ratio_condition(self.measure(name, images[name]), conds[name])
        total = sum(self.loss_weights[k.replace("/", "_")] * v for k, v in terms.items())
        logs = {**terms, "loss": total}
        if "stitching" in deltas:
            logs["stitching/cross_fraction"] = cross.float().mean()
        logs.update({f"{k}/delta_abs_max": d.detach().abs().amax() for k, d in deltas.items()})
        return total, logs

    def training_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        with torch.profiler.record_function("stage2_step"):
            loss, logs = self.compute_losses(batch)
        b = batch["source"].shape[0]
        self.log_dict({f"train/{k}": v for k, v in logs.items() if k != "loss"}, batch_size=b)
        self.log("train/loss", loss, prog_bar=True, batch_size=b)
        if self.image_every and self.global_step % self.image_every == 0:
            self._log_images(batch, "train/images")
        return loss

    def validation_step(self, batch: Mapping[str, torch.Tensor], batch_idx: int) -> None:
        gen = torch.Generator().manual_seed(batch_idx)  # the same targets every validation
        _, logs = self.compute_losses(batch, gen)
        self.log_dict({f"val/{k}": v for k, v in logs.items()}, batch_size=batch["source"].shape[0], sync_dist=True)
        if batch_idx == 0:
            self._log_images(batch, "val/images")

    def configure_optimizers(self) -> dict:
        params = [p for name in self.heads for p in self.head(name).parameters()]
        opt = self.optimizer_factory(params)
        if self.scheduler_factory is None:
            return {"optimizer": opt}
        return {"optimizer": opt, "lr_scheduler": {"scheduler": self.scheduler_factory(opt), "interval": "step"}}

    # -- grids ---------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def grid_images(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One sample: row 1 source | driving (another sample when B > 1) | without stitching | with stitching;
        rows 2-3: the source reconstructed (Δ = 0), then eyes / lips at each of ``grid_ratios``. -> (3, H, W)."""
        one = {k: v[:1] for k, v in batch.items() if isinstance(v, torch.Tensor)}
        b = batch["source"].shape[0]
        j = 1 if b > 1 else 0
        one["driving"], one["driving_hr"] = batch["driving"][j : j + 1], batch["driving_hr"][j : j + 1]
        enc = self.encode(one, torch.zeros(1, dtype=torch.bool, device=self.device))
        x_s, x_d = enc["x_s"], enc["x_d"]
        targets = [x_d, self.stitch(x_s, x_d)[0], x_s]
        for name, key in (("eye", "source_eye_ratio"), ("lip", "source_lip_ratio")):
            for r in self.grid_ratios:
                c = torch.full((1, 1), float(r), device=self.device)
                targets.append(self.retarget(name, x_s, torch.cat([one[key].to(x_s), c], dim=1))[0])
        out = self.decode(enc["f_s"], x_s, targets)
        n = len(self.grid_ratios)
        rows = [[one["source_hr"], one["driving_hr"], out[0], out[1]], [out[2], *out[3 : 3 + n]]]
        rows.append([out[2], *out[3 + n : 3 + 2 * n]])
        width = max(len(r) for r in rows)
        tiles = [t for r in rows for t in r + [torch.zeros_like(out[0])] * (width - len(r))]
        tiles = [F.interpolate(t, size=min(t.shape[-1], 256), mode="area") for t in tiles]
        return make_grid(torch.cat(tiles).clamp(0, 1), nrow=width, padding=2)

    def _log_images(self, batch: Mapping[str, torch.Tensor], key: str) -> None:
        if self.trainer.is_global_zero and self.image_every:
            out_dir = f"{self.trainer.default_root_dir}/images"
            log_grid(self.loggers, key, self.grid_images(batch), self.global_step, out_dir)

    def eval_model(self) -> LivePortrait:
        """The network exported by ``lp-train`` as ``model.pt``: the frozen base with the trained heads."""
        return self.model
