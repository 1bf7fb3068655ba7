"""GPU readiness check (``make gpu-check``): the real-size stage-1 paths on one CUDA device, in minutes.

Sections, in this order (cheap and decisive first), each within the time left of ``--budget-min``; a section that
no longer fits is recorded as skipped with the reason, and 100 s are kept for the learning check:

1. **train**: stage-1 steps through Lightning exactly as ``lp-train experiment=stage1_paper trainer=gpu`` builds them
   (``conf/train.yaml`` composed by Hydra; synthetic pairs at 256² -> 512², random third-party weights, which cost
   the same as real ones), eager, in fp32 (``32-true``, TF32 as ``matmul_precision`` allows) and ``bf16-mixed``.
   Per cell: mean step time (synchronised, data loading excluded), pairs/s (one generated image per pair) and peak
   GPU memory, at batch 1 / 4 / 8 / 16; a sweep stops at the first out-of-memory error (``torch.OutOfMemoryError``)
   and records the largest batch that fitted.
2. **checks**: bf16 vs fp32 generator loss on the same batch and weights (first step; fp32 reference without TF32)
   within ``BF16_RTOL``; host syncs in one training step (``torch.cuda.set_sync_debug_mode`` on a GPU, plus a
   device-independent recorder of Python-level tensor reads: ``.item()``, ``bool()``, ``float()``, ``.tolist()``)
   and in the loader's on-device batch finalisation.
3. **train variants**: bf16 with ``module.channels_last``, with ``module.compile=[warping_module, spade_generator]``
   and with both (inductor compiles in the warm-up steps), and dynamo's recompiles after warm-up (frame counter and
   its recompile log with the failed guards).
4. **distributed**: ``lp-train`` with ``trainer=ddp trainer.devices=1`` (NCCL) for a few steps; DeepSpeed ZeRO-2
   (``trainer=deepspeed``, stage 2: Lightning's DeepSpeed strategy takes one optimiser) when deepspeed is installed.
5. **animate**: per-frame latency of lp-animate's network path (``lp_train.inference.Driver``: M on the driving
   crop, keypoints + stitching S, W, G -> uint8 frame), fp32 / fp16 / bf16 autocast, eager and with W and G
   compiled, beside the paper's 12.8 ms (RTX 4090, fp16: W 5.21 + G 7.59 ms). With ``--official-repo`` (a
   LivePortrait checkout: its ``src/modules`` and ``src/config/models.yaml``) the official W and G are timed on the
   same inputs and weights as ours (``--official-weights``, the ``pretrained_weights/liveportrait`` folder, loaded
   into both; without it our random weights written in the official layout) and their outputs compared with ours.
   Nothing is downloaded.
6. **learning**: ``python -m lp_train.learning_check`` with ``trainer=gpu`` for the time that is left (Lightning
   ``max_time``): held-out self-reenactment L1 against copy-the-source, on ``--faces`` (a faces folder, or one
   prepared on a CPU machine with ``learning_check ... --prepare-only``, which then needs no face detector here).

Writes ``bench/results/gpu_check.json`` and ``gpu_check.md`` (atomically; ``--out`` to change the folder).

``--dry-run`` runs every section on the CPU at the tiny configuration (``stage1_tiny``, batch 1 / 2, one warm-up and
one timed step, gloo instead of NCCL, ``aot_eager`` instead of inductor so that compilation and recompile counting
still run, bf16 / fp16 through CPU autocast with the convolutions kept in fp32 (``convolutions_in_fp32``), an injected
out-of-memory error at the last batch so the sweep's stop runs, synthetic faces when no ``--faces`` is given): the
slow test ``tests/test_gpu_check.py`` runs it, so this script cannot rot between GPU sessions. Its numbers are not
GPU numbers.

    python -m bench.gpu_check --budget-min 8 --faces /data/faces        # on a GPU node (make gpu-check)
    python -m bench.gpu_check --dry-run                                  # CPU rehearsal (tiny sizes)
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import importlib.util
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
import types
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
RESULTS = ROOT / "bench" / "results"
PAPER_MS = {"W": 5.21, "G": 7.59, "W + G": 12.8}  # RTX 4090, fp16 (paper's inference-speed table)
BF16_RTOL = 0.05  # |bf16 - fp32| / |fp32| of the weighted generator loss at step 0 (bf16 keeps 8 mantissa bits)
# The CPU dry run's tiny random networks are far more sensitive: their pose bins' logits sit near zero, so bf16
# rounding moves the soft-argmax angles by degrees, and single terms moved by 13-40 % (L1, guide, head pose) and the
# total by 2-6 % between two tiny architectures measured here. The rehearsal checks the mechanism at this tolerance.
BF16_RTOL_DRY_RUN = 0.25
COMPILED = ("warping_module", "spade_generator")
# host syncs by design: the non-finite guard decides, once per optimiser, whether to skip a step (as GradScaler does)
KNOWN_SYNCS = ("stage1.py:_finite", "stage1.py:on_before_optimizer_step")
log = logging.getLogger("gpu_check")


# ---------------------------------------------------------------------------------------------------- plan, budget
@dataclasses.dataclass(frozen=True)
class Plan:
    """Sizes of one run: the GPU check or its CPU dry run."""

    device: str  # "cuda" | "cpu"
    experiment: str  # stage-1 experiment of conf/experiment
    size: int  # network input side (output 2x)
    model: str  # conf/model config of the animation section
    batches: tuple[int, ...]  # batch sweep of the eager cells
    single_batch: int  # batch of the channels_last / compiled cells and the numerics check
    warmup: int  # untimed steps per cell (compilation happens here)
    timed: int  # timed steps per cell
    compile_backend: str
    num_workers: int  # loader workers of the synthetic pairs
    animate_reps: int
    learning_opts: tuple[str, ...]  # options of lp_train.learning_check
    learning_overrides: tuple[str, ...]  # its Hydra overrides (training)
    inject_oom_at: int | None  # raise a (real) torch.OutOfMemoryError at this batch: exercises the sweep's stop

    @classmethod
    def for_device(cls, dry_run: bool, batches: Sequence[int] | None, inject_oom_at: int | None) -> Plan:
        if dry_run:
            return cls("cpu", "stage1_tiny", 64, "tiny", tuple(batches or (1, 2)), 1, 1, 1, "aot_eager", 0, 1,
                       ("--frames-per-clip", "8", "--every", "2"), ("trainer.max_steps=3", "data.batch_size=2"),
                       inject_oom_at if inject_oom_at is not None else max(batches or (1, 2)))  # fmt: skip
        return cls("cuda", "stage1_paper", 256, "official", tuple(batches or (1, 4, 8, 16)), 8, 2, 3, "inductor", 6,
                   20, ("--frames-per-clip", "30", "--every", "250"),
                   ("trainer=gpu", "data.batch_size=16", "data.num_workers=4", "trainer.max_steps=1000000"),
                   inject_oom_at)  # fmt: skip


class Budget:
    """Wall-clock budget of the whole check. Sections ask before they start; ``reserve`` seconds are kept back for
    the last section (the learning check), which takes whatever is left."""

    def __init__(self, minutes: float, reserve_s: float = 0.0, clock: Callable[[], float] = time.monotonic):
        self.total, self.reserve, self.clock, self.start = minutes * 60.0, reserve_s, clock, clock()

    def elapsed(self) -> float:
        return self.clock() - self.start

    def left(self) -> float:
        return self.total - self.elapsed()

    def allows(self, seconds: float) -> bool:
        """Whether ``seconds`` more fit into the budget without touching the reserve."""
        return seconds <= self.left() - self.reserve


def skipped(reason: str, **fields: Any) -> dict:
    return {"status": "skipped", "reason": reason, **fields}


# ---------------------------------------------------------------------------------------------------- measurement
def is_oom(exc: BaseException) -> bool:
    """A CUDA (or injected) out-of-memory error, possibly wrapped by a framework."""
    while exc is not None:
        if isinstance(exc, torch.OutOfMemoryError):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def sweep_batches(batches: Sequence[int], run_one: Callable[[int], dict], budget: Budget, est_s: float) -> dict:
    """Run ``run_one(batch)`` over increasing batches; stop at the first out-of-memory row (``status: oom``) or when
    the budget no longer holds ``est_s`` seconds. Returns the rows and the largest batch that ran."""
    rows, fitted, stop = [], None, None
    for b in sorted(batches):
        if stop is not None:
            rows.append(skipped(stop, batch=b))
            continue
        if not budget.allows(est_s):
            stop = f"time budget ({budget.left():.0f} s left)"
            rows.append(skipped(stop, batch=b))
            continue
        row = run_one(b)
        rows.append(row)
        if row["status"] == "oom":
            stop = f"out of memory at batch {b}"
        elif row["status"] == "ok":
            fitted = b
    return {"rows": rows, "max_batch": fitted, "stopped": stop}


class SyncRecorder(TorchFunctionMode):
    """Records Python-level reads of tensor values (``.item()``, ``bool()``, ``float()``, ``int()``, ``.tolist()``,
    ``.cpu()`` / ``.numpy()`` of device tensors): each is a host sync when the tensor lives on a GPU. Works on any
    device, so the CPU dry run finds them too. ``torch.optim``'s step counters live on the CPU and are not counted."""

    READS = {torch.Tensor.item, torch.Tensor.__bool__, torch.Tensor.__float__, torch.Tensor.__int__,
             torch.Tensor.__index__, torch.Tensor.tolist}  # fmt: skip
    COPIES = {torch.Tensor.cpu, torch.Tensor.numpy}

    def __init__(self) -> None:
        super().__init__()
        self.sites: dict[str, int] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.READS or (func in self.COPIES and args and args[0].device.type != "cpu"):
            stack = traceback.extract_stack()[:-1]
            if not any("/torch/optim/" in f.filename for f in stack[-4:]):
                self._record(func.__name__, stack)
        return func(*args, **kwargs)

    def _record(self, what: str, stack: list) -> None:
        ours = [f for f in stack if "/torch/" not in f.filename and f.filename != __file__][-3:]
        where = " <- ".join(f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in reversed(ours))
        key = f"{what} @ {where}"
        self.sites[key] = self.sites.get(key, 0) + 1


@contextmanager
def cuda_sync_warnings(enabled: bool) -> Iterator[list[str]]:
    """``torch.cuda.set_sync_debug_mode("warn")`` for the block; yields the list of syncs it reported (with the
    innermost project frame of each)."""
    found: list[str] = []
    if not enabled:
        yield found
        return
    old = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if "synchroniz" in str(message):
            stack = [f for f in traceback.extract_stack()[:-1] if "/torch/" not in f.filename][-2:]
            found.append(f"{message} @ " + " <- ".join(f"{Path(f.filename).name}:{f.name}:{f.lineno}" for f in stack))
        else:
            old(message, category, filename, lineno, file, line)

    torch.cuda.set_sync_debug_mode("warn")
    warnings.showwarning = show
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = show
            yield found
    finally:
        torch.cuda.set_sync_debug_mode("default")
        warnings.showwarning = old


class RecompileLog(logging.Handler):
    """Collects dynamo's recompile messages (``torch._logging`` artifact ``recompiles``)."""

    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "ecompil" in record.getMessage():
            self.messages.append(record.getMessage()[:400])


def dynamo_frames() -> int:
    """Frames compiled by dynamo so far (a recompile adds one)."""
    from torch._dynamo.utils import counters

    return int(counters["frames"]["total"])


def convolutions_in_fp32(net: torch.nn.Module) -> int:
    """Run every convolution of ``net`` in float32 with autocast off; returns how many. CPU dry run only: CPUs
    without native bf16 / fp16 run those convolutions 50-200x slower than fp32 (measured on a 2-core AMD EPYC: one
    tiny Conv3d 6.3 s in bf16 vs 0.03 s in fp32), while the rest of autocast (linear layers, matmuls, the keypoint
    and loss code) still runs in bf16 / fp16."""
    convs = [m for m in net.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)]
    for m in convs:
        m.forward = types.MethodType(_conv_fp32_forward, m)
    return len(convs)


def _conv_fp32_forward(self: torch.nn.modules.conv._ConvNd, x: torch.Tensor) -> torch.Tensor:
    with torch.autocast(x.device.type, enabled=False):
        return type(self).forward(self, x.float())


def sync_device(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


# ---------------------------------------------------------------------------------------------------- stage-1 cells
def _lightning():
    import lightning as L

    class StepProbe(L.Callback):
        """Times steps ``warmup .. warmup+timed-1`` (synchronised); counts dynamo frames compiled after warm-up;
        records the step-0 losses; checks one extra step for host syncs; injects an OOM when asked."""

        def __init__(self, plan: Plan, check_syncs: bool, inject_oom: bool):
            self.plan, self.check_syncs, self.inject_oom = plan, check_syncs, inject_oom
            self.times: list[float] = []
            self.first_losses: dict[str, float] = {}
            self.frames_after_warmup = 0
            self.recompiles = RecompileLog()
            self.syncs: dict[str, int] = {}
            self.cuda_syncs: list[str] = []
            self._t0 = 0.0
            self._recorder: SyncRecorder | None = None
            self._cuda_ctx = None

        def setup(self, trainer, pl_module, stage):
            if self.plan.device == "cpu":
                convolutions_in_fp32(pl_module)

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            step, p = trainer.global_step, self.plan
            if self.inject_oom:
                raise torch.OutOfMemoryError(f"injected out-of-memory error (--inject-oom-at {p.inject_oom_at})")
            if step == p.warmup:
                self._frames0 = dynamo_frames()
                logging.getLogger("torch._dynamo").addHandler(self.recompiles)
            if step == p.warmup + p.timed and self.check_syncs:
                self._cuda_ctx = cuda_sync_warnings(p.device == "cuda")
                self.cuda_syncs = self._cuda_ctx.__enter__()
                self._recorder = SyncRecorder()
                self._recorder.__enter__()
            sync_device(p.device)
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            sync_device(self.plan.device)
            dt = time.perf_counter() - self._t0
            step = trainer.global_step - 1  # this batch's step (global_step advanced in the generator phase)
            if self._recorder is not None:
                self._recorder.__exit__(None, None, None)
                self._cuda_ctx.__exit__(None, None, None)
                self.syncs, self._recorder = self._recorder.sites, None
            if step == 0:
                self.first_losses = {k: float(v) for k, v in trainer.callback_metrics.items()
                                     if k.startswith(("train/g/", "train/d/"))}  # fmt: skip
            if self.plan.warmup <= step < self.plan.warmup + self.plan.timed:
                self.times.append(dt)
            if step == self.plan.warmup + self.plan.timed - 1:
                self.frames_after_warmup = dynamo_frames() - self._frames0
                logging.getLogger("torch._dynamo").removeHandler(self.recompiles)

    return L, StepProbe


def _compose(overrides: Sequence[str]):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(str(CONF), version_base="1.3"):
        return compose("train", overrides=list(overrides))


def stage1_overrides(plan: Plan, out_dir: Path, batch: int, precision: str, channels_last: bool, compiled: bool,
                     steps: int) -> list[str]:  # fmt: skip
    """``conf/train.yaml`` overrides of one stage-1 cell (``lp-train experiment=stage1_paper trainer=gpu`` + sizes)."""
    compile_value = "[" + ",".join(COMPILED) + "]" if compiled else "false"
    return [
        f"experiment={plan.experiment}", "data=synthetic", f"data.size={plan.size}", f"data.batch_size={batch}",
        f"data.num_workers={plan.num_workers}", f"data.train_length={batch * (steps + 1)}",
        "trainer=gpu" if plan.device == "cuda" else "trainer=cpu", f"trainer.precision={precision}",
        f"trainer.max_steps={steps}", "trainer.limit_val_batches=0", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1000", "module.image_every=0",
        f"module.channels_last={str(channels_last).lower()}", f"module.compile={compile_value}",
        f"module.compile_backend={plan.compile_backend}", "weights=random", "weights.pose_teacher=null",
        f"paths.output_dir={out_dir}",
    ]  # fmt: skip


def run_stage1_cell(plan: Plan, batch: int, precision: str, channels_last: bool = False, compiled: bool = False,
                    check_syncs: bool = False, fp32_reference: bool = False) -> dict:  # fmt: skip
    """One Lightning fit of warm-up + timed (+ sync-check) steps; an out-of-memory error ends it cleanly."""
    from hydra.utils import instantiate

    L, StepProbe = _lightning()
    steps = plan.warmup + plan.timed + int(check_syncs)
    row: dict[str, Any] = {"batch": batch, "precision": precision, "channels_last": channels_last,
                           "compiled": list(COMPILED) if compiled else []}  # fmt: skip
    probe = StepProbe(plan, check_syncs, inject_oom=plan.inject_oom_at is not None and batch >= plan.inject_oom_at)
    module = trainer = datamodule = None
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        cfg = _compose(stage1_overrides(plan, Path(tmp), batch, precision, channels_last, compiled, steps))
        tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        try:
            L.seed_everything(cfg.seed, verbose=False)
            torch.set_float32_matmul_precision("highest" if fp32_reference else cfg.matmul_precision)
            if fp32_reference:
                torch.backends.cudnn.allow_tf32 = False
            if plan.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            datamodule = instantiate(cfg.data, _convert_="all")
            module = instantiate(cfg.module, _convert_="all")
            trainer = instantiate(cfg.trainer, callbacks=[probe], logger=False)
            trainer.fit(module, datamodule=datamodule)
            row.update(_cell_result(plan, probe, batch))
        except Exception as e:  # noqa: BLE001 - an OOM (or any failure) ends this cell, not the check
            if not is_oom(e):
                log.exception("stage-1 cell failed")
            row.update(status="oom" if is_oom(e) else "error", error=f"{type(e).__name__}: {str(e)[:300]}")
        finally:
            torch.set_float32_matmul_precision("high")
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
            del module, trainer, datamodule
            _free_memory(plan.device)
    row["wall_s"] = round(time.perf_counter() - t_start, 1)
    return row


def _cell_result(plan: Plan, probe, batch: int) -> dict:
    step = sum(probe.times) / max(len(probe.times), 1)
    out = {"status": "ok", "step_s": step, "pairs_per_s": batch / step if step else None,
           "first_losses": probe.first_losses, "recompiles_after_warmup": probe.frames_after_warmup,
           "recompile_messages": probe.recompiles.messages[:5]}  # fmt: skip
    if plan.device == "cuda":
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        out["peak_reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    if probe.syncs or probe.cuda_syncs or probe.check_syncs:
        out["syncs"], out["cuda_syncs"] = probe.syncs, probe.cuda_syncs[:20]
    return out


def _free_memory(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


def train_sweeps(plan: Plan, budget: Budget) -> dict:
    """Eager fp32 and bf16 batch sweeps (each stops at its first out-of-memory batch)."""
    est = 25.0 if plan.device == "cuda" else 10.0
    sweeps = {}
    for precision in ("32-true", "bf16-mixed"):
        sweeps[precision] = sweep_batches(plan.batches, lambda b, p=precision: run_stage1_cell(plan, b, p), budget, est)
    return {"sweeps": sweeps, "largest_batch": {p: s["max_batch"] for p, s in sweeps.items()}}


def train_variants(plan: Plan, budget: Budget, largest_bf16: int | None) -> dict:
    """bf16 with channels_last, with W and G compiled, and both, at ``plan.single_batch`` (or the largest that fitted).
    On a GPU inductor compiles W and G (forward and backward) in the warm-up steps: about a minute or two a cell."""
    batch = min(plan.single_batch, largest_bf16 or plan.single_batch)
    variants = {"bf16 compiled W,G": dict(compiled=True), "bf16 channels_last": dict(channels_last=True),
                "bf16 compiled W,G + channels_last": dict(channels_last=True, compiled=True)}  # fmt: skip
    cells = {}
    for name, kw in variants.items():
        cost = (150.0 if kw.get("compiled") else 25.0) if plan.device == "cuda" else 10.0
        cells[name] = run_stage1_cell(plan, batch, "bf16-mixed", **kw) if budget.allows(cost) else skipped(
            f"time budget ({budget.left():.0f} s left)", batch=batch)  # fmt: skip
    return cells


def checks_section(plan: Plan, budget: Budget) -> dict:
    """bf16 vs fp32 loss on the same batch; host syncs in one step; syncs in the on-device batch finalisation."""
    out: dict[str, Any] = {}
    if budget.allows(40.0 if plan.device == "cuda" else 20.0):
        ref = run_stage1_cell(plan, plan.single_batch, "32-true", fp32_reference=True)
        low = run_stage1_cell(plan, plan.single_batch, "bf16-mixed", check_syncs=True)
        out["bf16_vs_fp32"] = compare_losses(ref, low, BF16_RTOL if plan.device == "cuda" else BF16_RTOL_DRY_RUN)
        out["training_step_syncs"] = sync_verdict(low)
    else:
        out["bf16_vs_fp32"] = out["training_step_syncs"] = skipped("time budget")
    out["batch_finalisation_syncs"] = finalisation_syncs(plan)
    return out


def compare_losses(ref: dict, low: dict, rtol: float = BF16_RTOL) -> dict:
    """bf16 vs fp32 step-0 losses: the weighted generator total within ``rtol``; every term reported."""
    if ref.get("status") != "ok" or low.get("status") != "ok":
        return skipped("a run failed", fp32=ref.get("error"), bf16=low.get("error"))
    a, b = ref["first_losses"], low["first_losses"]
    rel = {k: abs(b[k] - a[k]) / max(abs(a[k]), 1e-8) for k in sorted(a) if k in b}
    terms = {k: {"fp32": a[k], "bf16": b[k], "rel": r} for k, r in rel.items()}
    total = terms.get("train/g/total")
    if total is None:
        return {"status": "error", "reason": "no train/g/total logged", "terms": terms}
    ok = total["rel"] <= rtol
    return {"status": "ok" if ok else "fail", "rel_diff": total["rel"], "tolerance": rtol, "terms": terms}


def sync_verdict(row: dict) -> dict:
    """Host syncs found in the checked step: those of the non-finite guard are known (by design), others fail."""
    if row.get("status") != "ok":
        return skipped("the run failed", error=row.get("error"))
    sites = row.get("syncs", {})
    unknown = {k: n for k, n in sites.items() if not any(s in k.replace(":", ":", 1) for s in _known_keys(k))}
    return {"status": "ok" if not unknown else "fail", "per_step": sum(sites.values()), "sites": sites,
            "unexpected": unknown, "cuda_sync_debug": row.get("cuda_syncs", [])}  # fmt: skip


def _known_keys(site: str) -> list[str]:
    """The KNOWN_SYNCS entries that the innermost frame of ``site`` ('what @ file:func:line <- ...') matches."""
    inner = site.split(" @ ", 1)[-1].split(" <- ")[0]
    file_func = ":".join(inner.split(":")[:2])
    return [k for k in KNOWN_SYNCS if k == file_func]


def finalisation_syncs(plan: Plan) -> dict:
    """``finalize_batch`` (the loader's on-device step: homography warps, colour jitter, masks) on the device; the
    CPU dry run uses the ``meta`` device, which takes the accelerator code path and fails on any data-dependent op."""
    from lp_train.data.batch import collate_compact, finalize_batch
    from lp_train.data.synthetic import SyntheticPairs

    device = "cuda" if plan.device == "cuda" else "meta"
    data = SyntheticPairs(4, size=plan.size, seed=0, p_image=0.5)
    compact = collate_compact([data[i] for i in range(4)])
    compact = {k: v.to(device) if torch.is_tensor(v) else v for k, v in compact.items()}
    finalize_batch(compact)  # warm-up (cached constants, kernels)
    sync_device(device)
    with cuda_sync_warnings(device == "cuda") as cuda_found, SyncRecorder() as rec:
        finalize_batch(compact)
    sync_device(device)
    return {"status": "ok" if not rec.sites and not cuda_found else "fail", "device": device, "sites": rec.sites,
            "cuda_sync_debug": cuda_found[:20]}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- animation
def animate_section(plan: Plan, budget: Budget, official_repo: Path | None, official_weights: Path | None) -> dict:
    """Per-frame latency of the network path of lp-animate (batch 1): eager modes, the official W and G (when a
    checkout is given; on ``--official-weights``, else on our random weights written in the official layout), then
    W and G compiled."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lp_train.animate import crop_tensor
    from lp_train.checkpoint import load_model_weights
    from lp_train.inference import Driver

    torch.manual_seed(0)
    with initialize_config_dir(str(CONF / "model"), version_base="1.3"):
        model = instantiate(compose(plan.model)).eval().to(plan.device)
    if official_weights is not None:
        load_model_weights(model, official_weights)
    if plan.device == "cpu":
        convolutions_in_fp32(model)
    size = model.input_size
    g = torch.Generator().manual_seed(0)
    src, drv = ((torch.rand(size, size, 3, generator=g) * 255).byte().numpy() for _ in range(2))
    driver = Driver(model, stitching=True, relative=True)
    src, drv = crop_tensor(src, driver.device), crop_tensor(drv, driver.device)
    rows = []
    modes = [("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)]
    for compiled in (False, True):
        if compiled:
            out_official = _official(plan, budget, model, official_repo, official_weights)
            for net in (model.warping_module, model.spade_generator):
                net.compile(backend=plan.compile_backend)
        for name, dtype in modes[1:] if compiled else modes:
            cost = (90.0 if compiled else 15.0) if plan.device == "cuda" else 10.0  # inductor: W and G per dtype
            if not budget.allows(cost):
                rows.append(skipped(f"time budget ({budget.left():.0f} s left)", dtype=name, compiled=compiled))
                continue
            rows.append(_time_frame(plan, driver, src, drv, name, dtype, compiled))
    return {"model": plan.model, "rows": rows, "paper_ms": PAPER_MS, "official": out_official}


def _official(plan: Plan, budget: Budget, model, repo: Path | None, weights: Path | None) -> dict:
    from lp_train.checkpoint import write_official_dir

    if repo is None:
        return skipped("no --official-repo given (a LivePortrait checkout; nothing is downloaded)")
    if plan.model != "official":
        return skipped(f"the official modules exist at the released size only (this run's model is {plan.model})")
    if not budget.allows(30.0):
        return skipped("time budget")
    if weights is not None:
        return {**official_timing(plan, model, repo, weights), "weights": str(weights)}
    with tempfile.TemporaryDirectory(prefix="gpu_check_official_") as tmp:
        write_official_dir(model.state_dict(), tmp)  # our random weights in the official files' layout
        return {**official_timing(plan, model, repo, Path(tmp)), "weights": "ours (random init), official layout"}


def _time_frame(plan: Plan, driver, src, drv, name: str, dtype, compiled: bool) -> dict:
    amp = torch.autocast(plan.device, dtype=dtype) if dtype is not None else torch.autocast(plan.device, enabled=False)
    with amp:
        source = driver.source(src)
        d_info = driver.motion(drv)
        x_d = driver.keypoints(source, d_info, d_info)
        warped = driver.warp(source, x_d)
        driver.decode(warped)  # every network has run once in this mode (compiled ones are compiled) before timing
        stages = {"M": lambda: driver.motion(drv),
                  "keypoints + S": lambda: driver.keypoints(source, d_info, d_info),
                  "W": lambda: driver.warp(source, x_d), "G": lambda: driver.decode(warped)}  # fmt: skip

        def frame():
            info = driver.motion(drv)
            return driver.decode(driver.warp(source, driver.keypoints(source, info, d_info)))

        frames0 = dynamo_frames()
        ms = {k: median_ms(fn, plan.device, plan.animate_reps) for k, fn in stages.items()}
        ms["frame"] = median_ms(frame, plan.device, plan.animate_reps)
    return {"status": "ok", "dtype": name, "compiled": list(COMPILED) if compiled else [], "ms": ms,
            "w_plus_g_ms": ms["W"] + ms["G"], "fps": 1e3 / ms["frame"],
            "recompiles_after_warmup": dynamo_frames() - frames0}  # fmt: skip


def median_ms(fn: Callable[[], object], device: str, reps: int) -> float:
    """Median wall time of ``fn`` in ms, synchronised (warm-up calls compile and tune first)."""
    for _ in range(3 if device == "cuda" else 1):
        fn()
    times = []
    for _ in range(reps):
        sync_device(device)
        t0 = time.perf_counter()
        fn()
        sync_device(device)
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    return times[len(times) // 2]


def official_timing(plan: Plan, model, repo: Path, weights: Path) -> dict:
    """W and G of the official code (``<repo>/src/modules``, sizes from ``src/config/models.yaml``) on the same
    weights and inputs as ours: latency in fp16 autocast and the largest output difference from ours."""
    try:
        w_off, g_off = load_official(repo, weights, plan.device)
    except (OSError, ImportError, KeyError, RuntimeError) as e:
        return {"status": "error", "error": f"{type(e).__name__}: {e}"}
    g = torch.Generator().manual_seed(1)
    f_s = torch.rand(1, 32, 16, 64, 64, generator=g).to(plan.device)
    x_s, x_d = ((torch.rand(1, 21, 3, generator=g) * 1.6 - 0.8).to(plan.device) for _ in range(2))
    rows = {}
    half = plan.device == "cuda"  # fp16 as in the paper; fp32 on a CPU (no fast fp16 convolutions there)
    with torch.no_grad(), torch.autocast(plan.device, dtype=torch.float16, enabled=half):
        ours_w = model.warping_module(f_s, kp_source=x_s, kp_driving=x_d)["out"]
        theirs_w = w_off(f_s, kp_driving=x_d, kp_source=x_s)["out"]
        rows["W"] = {"ours_ms": median_ms(lambda: model.warping_module(f_s, kp_source=x_s, kp_driving=x_d),
                                          plan.device, plan.animate_reps),
                     "official_ms": median_ms(lambda: w_off(f_s, kp_driving=x_d, kp_source=x_s), plan.device,
                                              plan.animate_reps),
                     "max_abs_diff": (ours_w.float() - theirs_w.float()).abs().max().item()}  # fmt: skip
        feat = theirs_w
        rows["G"] = {
            "ours_ms": median_ms(lambda: model.spade_generator(feat), plan.device, plan.animate_reps),
            "official_ms": median_ms(lambda: g_off(feat), plan.device, plan.animate_reps),
            "max_abs_diff": (model.spade_generator(feat).float() - g_off(feat).float()).abs().max().item(),
        }
    return {"status": "ok", "dtype": "fp16 autocast (eager)" if half else "fp32 (eager)", "rows": rows}


def load_official(repo: Path, weights: Path, device: str) -> tuple[torch.nn.Module, torch.nn.Module]:
    """The official WarpingNetwork and SPADEDecoder, imported from the checkout as a private package, with the
    released weights (``base_models/warping_module.pth``, ``spade_generator.pth``; loaded with weights_only)."""
    import yaml

    modules = Path(repo) / "src" / "modules"
    name = "_liveportrait_official_modules"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, modules / "__init__.py",
                                                      submodule_search_locations=[str(modules)])  # fmt: skip
        if spec is None or spec.loader is None:
            raise ImportError(f"no LivePortrait modules package at {modules}")
        pkg = importlib.util.module_from_spec(spec)
        sys.modules[name] = pkg
        spec.loader.exec_module(pkg)
    import importlib as il

    params = yaml.safe_load((Path(repo) / "src" / "config" / "models.yaml").read_text())["model_params"]
    nets = (
        (il.import_module(f"{name}.warping_network").WarpingNetwork, "warping_module"),
        (il.import_module(f"{name}.spade_generator").SPADEDecoder, "spade_generator"),
    )
    out = []
    for cls, key in nets:
        net = cls(**params[f"{key}_params"])
        sd = torch.load(Path(weights) / "base_models" / f"{key}.pth", map_location="cpu", weights_only=True)
        net.load_state_dict(sd)
        out.append(net.eval().to(device))
    return out[0], out[1]


# ---------------------------------------------------------------------------------------------------- distributed
def run_lp_train(plan: Plan, overrides: Sequence[str], timeout_s: float) -> dict:
    """``python -m lp_train.train`` in a subprocess (a fresh process group); returns its steps, times and backend."""
    with tempfile.TemporaryDirectory(prefix="gpu_check_dist_") as tmp:
        probe = Path(tmp) / "probe.json"
        cmd = [sys.executable, "-m", "lp_train.train", *overrides, "trainer.enable_progress_bar=false",
               "trainer.limit_val_batches=0", "module.image_every=0", "export_model=false", "~logger.wandb",
               "trainer.log_every_n_steps=1", f"hydra.run.dir={tmp}/run",
               f"+callbacks.gpu_check_probe={{_target_: bench.gpu_check.DistProbe, out_file: '{probe}'}}"]  # fmt: skip
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
                   MASTER_PORT=str(29400 + os.getpid() % 500), WANDB_MODE="offline")  # fmt: skip
        t0 = time.perf_counter()
        try:
            proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout_s)
        except subprocess.TimeoutExpired:
            return {"status": "error", "error": f"timed out after {timeout_s:.0f} s", "command": " ".join(cmd[1:])}
        wall = time.perf_counter() - t0
        row: dict[str, Any] = {"wall_s": round(wall, 1), "command": "lp-train " + " ".join(overrides)}
        if proc.returncode != 0 or not probe.is_file():
            tail = (proc.stderr or proc.stdout)[-1500:]
            return {**row, "status": "oom" if "OutOfMemoryError" in tail else "error", "error": tail}
        return {**row, "status": "ok", **json.loads(probe.read_text())}


def distributed_section(plan: Plan, budget: Budget) -> dict:
    out: dict[str, Any] = {}
    steps = 3 if plan.device == "cuda" else 2
    common = [f"trainer.max_steps={steps}", "weights=random", "data=synthetic", f"data.size={plan.size}",
              f"data.num_workers={plan.num_workers}"]  # fmt: skip
    ddp = [f"experiment={plan.experiment}", "trainer=ddp", "trainer.devices=1", "weights.pose_teacher=null",
           "data.batch_size=4" if plan.device == "cuda" else "data.batch_size=1", *common]  # fmt: skip
    if plan.device == "cpu":
        ddp += ["trainer.accelerator=cpu", "trainer.precision=32-true", "trainer.strategy.process_group_backend=gloo"]
    est = 90.0 if plan.device == "cuda" else 60.0
    out["ddp"] = run_lp_train(plan, ddp, timeout_s=max(budget.left(), 30)) if budget.allows(est) else skipped(
        "time budget")  # fmt: skip
    if importlib.util.find_spec("deepspeed") is None:
        out["deepspeed"] = skipped("deepspeed is not installed (pip install 'lp-train[deepspeed]')")
    elif plan.device != "cuda":
        out["deepspeed"] = skipped("Lightning's DeepSpeedStrategy needs CUDA (the ZeRO-2 config runs through the "
                                   "DeepSpeed engine on CPU in tests/test_train_distributed.py)")  # fmt: skip
    elif not budget.allows(est):
        out["deepspeed"] = skipped("time budget")
    else:
        stage = "stage2_paper" if plan.experiment == "stage1_paper" else "stage2_tiny"
        ds = [f"experiment={stage}", "trainer=deepspeed", "trainer.devices=1", "module.base_checkpoint=null",
              "data.batch_size=4", *common]  # fmt: skip
        out["deepspeed"] = run_lp_train(plan, ds, timeout_s=max(budget.left(), 30))
    return out


def _dist_probe_class():
    import lightning as L

    class DistProbe(L.Callback):
        """Written by the ``lp-train`` subprocesses of the distributed section: backend, world size, steps, times."""

        def __init__(self, out_file: str):
            self.out_file, self.times, self._t0 = Path(out_file), [], 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self._t0 = time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, *args):
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            self.times.append(time.perf_counter() - self._t0)

        def on_train_end(self, trainer, pl_module):
            import torch.distributed as dist

            from lp_train.fileio import atomic_write_text

            backend = dist.get_backend() if dist.is_available() and dist.is_initialized() else None
            record = {"backend": backend, "world_size": trainer.world_size, "strategy": type(trainer.strategy).__name__,
                      "precision": str(trainer.precision), "steps": trainer.global_step, "step_s": self.times,
                      "loss": float(trainer.callback_metrics.get("train/loss", float("nan")))}  # fmt: skip
            if trainer.is_global_zero:
                atomic_write_text(self.out_file, json.dumps(record))

    return DistProbe


def __getattr__(name: str):  # DistProbe is built lazily so that importing this module does not import lightning
    if name == "DistProbe":
        return _dist_probe_class()
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------------- learning
def learning_section(plan: Plan, budget: Budget, faces: Path | None, work_dir: Path) -> dict:
    """lp_train.learning_check for the time left: held-out L1 against copy-the-source. ``faces`` is a faces folder
    (cropped here: needs mediapipe) or a folder prepared by ``learning_check --prepare-only`` (trained on as is)."""
    reserve = 60.0 if plan.device == "cuda" else 20.0  # final evaluation, report, the writing of the results
    if faces is None and plan.device == "cuda":
        return skipped("no --faces folder given (videos/*.mp4 + images/*.jpg, or a learning_check --prepare-only OUT)")
    prepared = faces is not None and (faces / "pairs.pt").is_file()
    if faces is not None and not prepared and not (faces / "videos").is_dir():
        return skipped(f"--faces {faces}: neither a faces folder (videos/) nor a prepared one (pairs.pt, shards/)")
    if not budget.allows(reserve + 60):
        return skipped(f"time budget ({budget.left():.0f} s left)")
    from lp_train.learning_check import main as learning_check

    out_dir = faces if prepared else work_dir / "learning"
    source = ["--faces", str(faces)] if faces is not None else ["--synthetic", "--unseen", "synthetic-3"]
    opts, overrides = list(plan.learning_opts), list(plan.learning_overrides)
    t0 = time.perf_counter()
    try:
        if not prepared:
            learning_check([str(out_dir), *source, *opts, "--prepare-only"])
        fit_s = int(budget.left() - reserve)
        args = [str(out_dir), "--prepared", *opts, *overrides, "~logger.wandb",
                f"+trainer.max_time=00:{fit_s // 3600:02d}:{fit_s % 3600 // 60:02d}:{fit_s % 60:02d}"]  # fmt: skip
        learning_check(args)
    except (Exception, SystemExit) as e:  # noqa: BLE001 - recorded, the report still gets written
        log.exception("learning check failed")
        return {"status": "error", "error": f"{type(e).__name__}: {str(e)[:300]}"}
    history = json.loads((out_dir / "run" / "heldout.json").read_text())["history"]
    last = history[-1]
    return {"status": "ok", "faces": str(faces) if faces else "synthetic (dry run)", "args": args,
            "wall_s": round(time.perf_counter() - t0, 1), "steps": last["step"], "fit_budget_s": fit_s,
            "groups": last["groups"],
            "curve": [{"step": h["step"], **h["groups"]["all"]} for h in history]}  # fmt: skip


# ---------------------------------------------------------------------------------------------------- report
def fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}g}" if abs(value) < 1e4 else f"{value:.0f}"
    return str(value)


def table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(c) for c in r) + " |" for r in rows]
    return lines


def _train_rows(record: dict, cells: dict) -> list[list[Any]]:
    rows = []
    named = [(f"eager {p}", r) for p, s in record["sweeps"].items() for r in s["rows"]] + list(cells.items())
    for name, r in named:
        status = r["status"] if r["status"] != "skipped" else f"skipped: {r['reason']}"
        if r["status"] == "oom":
            status = "OOM" + (" (injected)" if "injected" in r.get("error", "") else "")
        elif r["status"] == "error":
            status = f"error: {r.get('error', '')[:120]}"
        rows.append([name, r.get("batch"), status, r.get("step_s"), r.get("pairs_per_s"), r.get("peak_mem_gib"),
                     r.get("recompiles_after_warmup")])  # fmt: skip
    return rows


def speedups(train: dict, cells: dict) -> list[str]:
    """bf16 over fp32 and compiled / channels_last over eager bf16, at equal batch."""
    by = {}
    for p, s in train["sweeps"].items():
        for r in s["rows"]:
            if r["status"] == "ok":
                by[(f"eager {p}", r["batch"])] = r["step_s"]
    for name, r in cells.items():
        if r["status"] == "ok":
            by[(name, r["batch"])] = r["step_s"]
    out = []
    for (name, b), t in sorted(by.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        base = by.get(("eager 32-true", b)) if name == "eager bf16-mixed" else by.get(("eager bf16-mixed", b))
        if base and name != "eager 32-true":
            ref = "fp32 eager" if name == "eager bf16-mixed" else "bf16 eager"
            out.append(f"- batch {b}: {name} {base / t:.2f}x vs {ref}")
    return out


def _variant_cells(rec: dict) -> dict:
    cells = rec.get("train_variants") or {}
    return {} if cells.get("status") == "error" else cells


def _md_train(rec: dict) -> list[str]:
    t, cells, plan = rec["train"], _variant_cells(rec), rec["plan"]
    lines = [f"`lp-train experiment={plan['experiment']}` sizes ({plan['size']}² -> {2 * plan['size']}²), synthetic "
             "pairs, random third-party weights. Step time: synchronised, data loading excluded; pairs/s = generated "
             "images/s; memory = peak allocated.", ""]  # fmt: skip
    lines += table(["cell", "batch", "status", "step s", "pairs/s", "peak GiB", "recompiles after warm-up"],
                   _train_rows(t, cells))  # fmt: skip
    if (rec.get("train_variants") or {}).get("status") == "error":
        lines += ["", f"train variants: error: {rec['train_variants']['error']}"]
    largest = ", ".join(f"{p} {fmt(b)}" for p, b in t["largest_batch"].items())
    return lines + ["", f"Largest batch that fitted: {largest}", "", "Speed-ups:",
                    *(speedups(t, cells) or ["- (no pair of cells to compare)"])]  # fmt: skip


def _md_checks(rec: dict) -> list[str]:
    c, lines = rec["checks"], []
    bf = c["bf16_vs_fp32"]
    lines.append(f"- bf16 vs fp32 generator loss at step 0: {bf['status']}"
                 + (f" (relative difference {bf['rel_diff']:.2e}, tolerance {bf['tolerance']})" if "rel_diff" in bf
                    else f" ({bf.get('reason', '')})"))  # fmt: skip
    worst = sorted(bf.get("terms", {}).items(), key=lambda kv: -kv[1]["rel"])[:3]
    if worst:
        lines.append("  (random-init networks; largest per-term differences: "
                     + ", ".join(f"{k} {v['rel']:.2g}" for k, v in worst) + ")")  # fmt: skip
    s = c["training_step_syncs"]
    lines.append(
        f"- host syncs in one bf16 training step: {s['status']}"
        + (f" ({s['per_step']} reads, {len(s['unexpected'])} unexpected site(s))" if "per_step" in s else "")
    )
    for site, n in s.get("sites", {}).items():
        lines.append(f"  - {n}x `{site}`" + (" (known: non-finite guard)" if site not in s["unexpected"] else ""))
    for msg in s.get("cuda_sync_debug", [])[:10]:
        lines.append(f"  - CUDA sync debug: `{msg}`")
    f = c["batch_finalisation_syncs"]
    lines.append(f"- host syncs in the on-device batch finalisation: {f['status']} ({len(f['sites'])} site(s), "
                 f"{len(f['cuda_sync_debug'])} CUDA report(s))")  # fmt: skip
    for name, r in _variant_cells(rec).items():
        if r.get("compiled") and r["status"] == "ok":
            n, msgs = r.get("recompiles_after_warmup"), r.get("recompile_messages", [])
            lines.append(f"- recompiles after warm-up, {name}: {n}" + ("" if not n else f" ({msgs[:1]})"))
    return lines


def _md_animate(rec: dict) -> list[str]:
    a = rec["animate"]
    lines = [f"lp-animate's network path on `model={a['model']}`: M on the driving crop, keypoints + stitching S, "
             "W, G -> uint8 frame. Paper (RTX 4090, fp16): W 5.21 ms + G 7.59 ms = 12.8 ms.", ""]  # fmt: skip
    rows = []
    for r in a["rows"]:
        compiled = "W, G" if r.get("compiled") else "no"
        if r["status"] != "ok":
            rows.append([r.get("dtype"), compiled, f"{r['status']}: {r.get('reason') or r.get('error')}"] + [None] * 6)
            continue
        ms = r["ms"]
        rows.append([r["dtype"], compiled, ms["M"], ms["keypoints + S"], ms["W"], ms["G"], ms["frame"],
                     r["w_plus_g_ms"], r["fps"]])  # fmt: skip
    lines += table(["dtype", "compiled", "M ms", "kp + S ms", "W ms", "G ms", "frame ms", "W + G ms (paper 12.8)",
                    "frames/s"], rows)  # fmt: skip
    o = a["official"]
    if o["status"] == "ok":
        lines += ["", f"Official W and G, same inputs and weights ({o['weights']}; {o['dtype']}):", ""]
        lines += table(
            ["net", "ours ms", "official ms", "max |ours - official|"],
            [[k, v["ours_ms"], v["official_ms"], v["max_abs_diff"]] for k, v in o["rows"].items()],
        )
    else:
        lines += ["", f"Official modules: {o['status']} ({o.get('reason') or o.get('error')})"]
    return lines


def _md_distributed(rec: dict) -> list[str]:
    lines = []
    for name, r in rec["distributed"].items():
        if r["status"] == "ok":
            steady = r["step_s"][1:] or r["step_s"]
            lines.append(f"- {name}: ok, backend {r['backend']}, {r['strategy']}, {r['precision']}, "
                         f"{r['steps']} steps, {sum(steady) / len(steady):.3g} s/step after the first; "
                         f"`{r['command']}`")  # fmt: skip
        else:
            lines.append(f"- {name}: {r['status']}: {r.get('reason') or r.get('error', '')[-300:]}")
    return lines


def _md_learning(rec: dict) -> list[str]:
    lr = rec["learning"]
    if lr["status"] != "ok":
        return [f"{lr['status']}: {lr.get('reason') or lr.get('error')}"]
    return [f"{lr['steps']} steps in {lr['fit_budget_s']} s of training on {lr['faces']}.", ""] + table(
        ["group", "pairs", "model L1", "copy-the-source L1", "ratio"],
        [[k, g["pairs"], g["l1"], g["l1_copy_source"], g["ratio"]] for k, g in lr["groups"].items()],
    )


MD_SECTIONS = (("Stage-1 training step", "train", _md_train), ("Checks", "checks", _md_checks),
               ("Animation per frame (batch 1)", "animate", _md_animate),
               ("Distributed", "distributed", _md_distributed),
               ("Learning check (held-out self-reenactment L1)", "learning", _md_learning))  # fmt: skip


def render_markdown(rec: dict) -> str:
    """gpu_check.md: one part per section; a section that has not run (yet) or failed says so."""
    env = rec["env"]
    lines = [f"# GPU check{' (DRY RUN on CPU: tiny sizes, not GPU numbers)' if rec['dry_run'] else ''}", "",
             f"{env['device_name']}; torch {env['torch']} (CUDA {env['cuda']}), lightning {env['lightning']}; "
             f"{env['date']}; {rec.get('seconds', 0):.0f} s of a {rec['budget_min']:g}-minute budget.", ""]  # fmt: skip
    for title, key, render in MD_SECTIONS:
        section = rec.get(key)
        lines += [f"## {title}", ""]
        if section is None:
            lines.append("(not run)")
        elif section.get("status") == "error":
            lines.append(f"error: {section['error']}")
        else:
            lines += render(rec)
        lines.append("")
    return "\n".join(lines)


def environment(plan: Plan) -> dict:
    import lightning

    cuda = plan.device == "cuda"
    return {
        "torch": torch.__version__, "cuda": torch.version.cuda, "lightning": lightning.__version__,
        "device_name": torch.cuda.get_device_name() if cuda else f"CPU ({platform.processor() or platform.machine()})",
        "device_memory_gib": torch.cuda.get_device_properties(0).total_memory / 2**30 if cuda else None,
        "python": platform.python_version(), "threads": torch.get_num_threads(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }  # fmt: skip


def _largest_bf16(rec: dict) -> int | None:
    return rec["train"].get("largest_batch", {}).get("bf16-mixed")


def run_check(args: argparse.Namespace) -> dict:
    """Every section in order; returns the record written to gpu_check.json."""
    plan = Plan.for_device(args.dry_run, args.batches, args.inject_oom_at)
    if plan.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device (use --dry-run for the CPU rehearsal)")
    budget = Budget(args.budget_min, reserve_s=100.0 if plan.device == "cuda" else 30.0)
    rec: dict[str, Any] = {"dry_run": args.dry_run, "budget_min": args.budget_min, "plan": dataclasses.asdict(plan),
                           "env": environment(plan)}  # fmt: skip
    # cheap and decisive first; the compiled cells (minutes of inductor) after them; the learning check gets the rest
    sections = [
        ("train", lambda: train_sweeps(plan, budget)),
        ("checks", lambda: checks_section(plan, budget)),
        ("train_variants", lambda: train_variants(plan, budget, _largest_bf16(rec))),
        ("distributed", lambda: distributed_section(plan, budget)),
        ("animate", lambda: animate_section(plan, budget, args.official_repo, args.official_weights)),
        ("learning", lambda: learning_section(plan, budget, args.faces, args.work_dir)),
    ]
    for name, fn in sections:
        t0 = time.perf_counter()
        log.info("gpu_check: %s (%.0f s left)", name, budget.left())
        try:
            rec[name] = fn()
        except Exception as e:  # noqa: BLE001 - one broken section must not lose the others' results
            log.exception("gpu_check: section %s failed", name)
            rec[name] = {"status": "error", "error": f"{type(e).__name__}: {str(e)[:500]}",
                         "traceback": traceback.format_exc()[-3000:]}  # fmt: skip
        rec.setdefault("section_s", {})[name] = round(time.perf_counter() - t0, 1)
        write_results(rec, args.out, budget)  # partial results survive a kill
    return rec


def write_results(rec: dict, out: Path, budget: Budget) -> None:
    from lp_train.fileio import atomic_write_text

    rec["seconds"] = round(budget.elapsed(), 1)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "gpu_check.json", json.dumps(rec, indent=1, default=str))
    atomic_write_text(out / "gpu_check.md", render_markdown(rec))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dry-run", action="store_true", help="CPU rehearsal at tiny sizes (every section runs)")
    ap.add_argument("--budget-min", type=float, default=8.0, help="wall-clock budget of the whole check (minutes)")
    ap.add_argument("--faces", type=Path, help="learning check data: a faces folder (videos/*.mp4, images/*.jpg) or a "
                    "folder prepared by python -m lp_train.learning_check OUT --faces ... --prepare-only")  # fmt: skip
    ap.add_argument("--official-repo", type=Path, help="a LivePortrait checkout (its src/modules are timed)")
    ap.add_argument("--official-weights", type=Path, help="its pretrained_weights/liveportrait folder")
    ap.add_argument("--batches", type=int, nargs="+", help="batch sweep (default 1 4 8 16; dry run 1 2)")
    ap.add_argument("--inject-oom-at", type=int, help="raise an out-of-memory error at this batch (dry run: the last)")
    ap.add_argument("--out", type=Path, default=RESULTS, help="folder of gpu_check.json / gpu_check.md")
    ap.add_argument("--work-dir", type=Path, help="scratch folder (learning-check shards and run; default: a temp dir)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    os.environ.setdefault("WANDB_MODE", "offline")
    with tempfile.TemporaryDirectory(prefix="gpu_check_work_") as tmp:
        args.work_dir = args.work_dir or Path(tmp)
        rec = run_check(args)
    print(render_markdown(rec))
    print(f"wrote {args.out / 'gpu_check.json'} and {args.out / 'gpu_check.md'}")
    return rec


if __name__ == "__main__":
    main()
