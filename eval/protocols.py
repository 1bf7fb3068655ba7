"""The evaluation protocols of LivePortrait (Guo et al. 2024, Sec. 4.2): self- and cross-reenactment.

* ``self_reenactment`` (Table 2): for each test video the first frame is the source and every frame drives and is
  the ground truth; generated and ground-truth frames are compared at ``eval_size``² (256): PSNR, SSIM, LPIPS, L1,
  CSIM (vs. the driving frame) and MAE. Beside the model, the controls of ``lp_train.metrics.controls`` on the same
  frames: ``copy_source``, ``blur_matched_copy_source`` (blurred to the model's self-reconstruction L1,
  ``reconstruction_floor``), the ``large_motion`` subset and the 1/8-resolution ``l1_low``
  (``ProtocolResult.controls``).
* ``cross_reenactment`` (Table 3): the first ``num_sources`` images of a source set (paper: 50 FFHQ images) are
  each driven by every test video; FID (generated frames vs. the configured reference set: the source images,
  the driving frames or an image folder — stated in the report), AED, APD, MAE (vs. the driving frame) and CSIM
  (vs. the source).

Work is split over DDP ranks by item (video, or source x video); each finished item is a CSV row (resumable, see
``lp_eval.store``) and, with FID on, a ``.npy`` of its generated frames' Inception features. Rank 0 computes FID
from all cached features at the end (needs a filesystem shared by the ranks, as on any cluster).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from lp_eval.inputs import Clip, face_crops, list_images, list_shard_clips, list_videos
from lp_eval.reenact import Reenactor, to_tensor
from lp_eval.registry import register_protocol
from lp_eval.store import ResultStore, rank_world, summarise
from lp_eval.suite import Suite
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from lp_train.fileio import atomic_write_text
from lp_train.metrics.controls import METHODS, blur_matched_sigma, frame_l1s, gaussian_blur, l1_per_frame, score_table
from lp_train.metrics.fid import reference_stats

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    """What every protocol needs: the config, the model, sizes and where to write."""

    cfg: DictConfig
    reenactor: Reenactor
    device: torch.device
    out_dir: Path
    input_size: int  # network input side
    crop_size: int  # side of the face crops read from the inputs
    eval_size: int  # side at which metrics compare frames
    batch_size: int


@dataclass
class Sample:
    """Frames kept for grids and mp4s: (E, E, 3) uint8 source, driving and generated frames of one item."""

    key: str
    source: np.ndarray
    driving: list[np.ndarray] = field(default_factory=list)
    generated: list[np.ndarray] = field(default_factory=list)


@dataclass
class ProtocolResult:
    name: str
    rows: list[dict]
    summary: dict[str, dict]
    info: dict[str, dict]
    settings: dict
    samples: list[Sample]
    controls: dict | None = None  # lp_train.metrics.controls.score_table of the model and its baselines


def _uint8(x: torch.Tensor) -> list[np.ndarray]:
    return list((x.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).cpu().numpy())


def _videos(pcfg: DictConfig) -> list[Clip]:
    if pcfg.get("shards"):
        return list_shard_clips(pcfg.shards, pcfg.get("max_videos"))
    return list_videos(pcfg.videos, pcfg.get("max_videos"))


def _generate(ctx: EvalContext, frames: list[np.ndarray]) -> torch.Tensor:
    """Drive the current source with ``frames`` -> generated frames at the evaluation size, on the CPU."""
    gen = ctx.reenactor.drive(to_tensor(frames, ctx.input_size, ctx.device)).float().cpu()
    gen = F.interpolate(gen, size=(ctx.eval_size,) * 2, mode="bilinear", antialias=True, align_corners=False)
    return gen.clamp(0, 1)


def _controls_source(ctx: EvalContext, source: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's self-reconstruction of ``source`` (driving = source) and the source, at the evaluation size."""
    ctx.reenactor.set_source(to_tensor([source], ctx.input_size, ctx.device))
    return _generate(ctx, [source]), to_tensor([source], ctx.eval_size)


def _run_item(
    ctx: EvalContext,
    suite: Suite,
    source: np.ndarray,
    driving: list[np.ndarray],
    keep: int,
    cross: bool,
    controls: dict[str, list] | None = None,
) -> tuple[dict[str, torch.Tensor], Sample | None]:
    """Animate ``source`` with ``driving`` crops in batches and score every frame; keep up to ``keep`` frames.
    ``controls`` (self-reenactment): per-frame L1s of the model and of the source / blurred source are appended
    under ``model``, ``copy_source`` and ``blur_matched_copy_source``; it holds the ``blurred`` source."""
    ctx.reenactor.set_source(to_tensor([source], ctx.input_size, ctx.device))
    src_eval = to_tensor([source], ctx.eval_size)
    ref = suite.embed(src_eval) if cross else None
    scores: dict[str, list[torch.Tensor]] = {}
    sample = Sample("", _uint8(src_eval)[0]) if keep else None
    for i in range(0, len(driving), ctx.batch_size):
        batch = driving[i : i + ctx.batch_size]
        gen = _generate(ctx, batch)
        drv = to_tensor(batch, ctx.eval_size)
        ref_b = None if ref is None else ref.expand(len(batch), -1)
        for k, v in suite.score(gen, drv, ref_b).items():
            scores.setdefault(k, []).append(v)
        if controls is not None:
            n = len(batch)
            for method, pred in (("model", gen), ("copy_source", src_eval.expand(n, -1, -1, -1)),
                                 ("blur_matched_copy_source", controls["blurred"].expand(n, -1, -1, -1))):  # fmt: skip
                controls.setdefault(method, []).append(frame_l1s(pred, drv))
        if sample is not None and len(sample.generated) < keep:
            n = keep - len(sample.generated)
            sample.driving += _uint8(drv[:n])
            sample.generated += _uint8(gen[:n])
    return {k: torch.cat(v) for k, v in scores.items()}, sample


def _row(key: str, source: str, driving: str, scores: dict[str, torch.Tensor], seconds: float) -> dict:
    row = {"key": key, "source": source, "driving": driving, "seconds": round(seconds, 3)}
    for k, v in scores.items():
        if k == "fid_features":
            continue
        valid = ~torch.isnan(v)
        row["frames"] = int(v.numel())
        row[k] = float(v[valid].mean()) if valid.any() else float("nan")
        row[f"{k}_n"] = int(valid.sum())
    return row


def _finish(
    ctx: EvalContext, name: str, pcfg: DictConfig, suite: Suite, store: ResultStore, samples: list[Sample], extra: dict
) -> ProtocolResult:
    rows = store.gather()
    names = [n for n in suite.metrics if n != "fid"]
    summary = summarise(rows, names)
    if "fid" in suite.metrics and rank_world()[0] == 0:
        summary["fid"] = _fid(ctx, pcfg, suite, rows, store.folder / "fid")
    settings = {**OmegaConf.to_container(pcfg, resolve=True), **extra, "eval_size": ctx.eval_size,
                "input_size": ctx.input_size, "relative_motion": ctx.reenactor.relative,
                "stitching": ctx.reenactor.stitching}  # fmt: skip
    return ProtocolResult(name, rows, summary, suite.info(), settings, samples)


def _fid_features(ctx: EvalContext, suite: Suite, crops: list[np.ndarray]) -> torch.Tensor:
    """Inception features of (ground-truth / driving) crops at the evaluation size, in batches."""
    fid = suite.metrics["fid"]
    parts = [fid.features(to_tensor(crops[i : i + ctx.batch_size], ctx.eval_size)).cpu()
             for i in range(0, len(crops), ctx.batch_size)]  # fmt: skip
    return torch.cat(parts)


def _save_features(folder: Path, key: str, feats: torch.Tensor | None) -> None:
    if feats is None:
        return
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{key}.tmp.npy"
    np.save(tmp, feats.numpy().astype(np.float32))
    tmp.replace(folder / f"{key}.npy")


@register_protocol("self_reenactment")
def self_reenactment(ctx: EvalContext, pcfg: DictConfig) -> ProtocolResult:
    """Each video's first frame drives nothing but is the source; every frame drives and is the ground truth."""
    suite = Suite(ctx.cfg.eval.metrics, list(pcfg.metrics), ctx.device)
    store = ResultStore(ctx.out_dir / "self_reenactment")
    rank, world = rank_world()
    clips = _videos(pcfg)
    samples: list[Sample] = []
    for idx, clip in enumerate(tqdm(clips[rank::world], desc="self-reenactment", unit="video", disable=rank != 0)):
        if store.done(clip.name):
            continue
        t0 = time.perf_counter()
        crops = face_crops(clip, pcfg.crop, ctx.crop_size, pcfg.get("max_frames"), int(pcfg.get("frame_stride", 1)))
        keep = _keep(ctx, idx, world, len(crops))
        if "fid" in suite.metrics:  # FID in self-reenactment: against the ground-truth frames
            _save_features(store.folder / "fid_driving", clip.name, _fid_features(ctx, suite, crops))
        recon, src_eval = _controls_source(ctx, crops[0])
        floor = float(l1_per_frame(recon, src_eval))
        sigma, saturated = blur_matched_sigma(src_eval, floor)
        controls: dict = {"blurred": gaussian_blur(src_eval, sigma)}
        scores, sample = _run_item(ctx, suite, crops[0], crops, keep, cross=False, controls=controls)
        _save_features(store.folder / "fid", clip.name, scores.get("fid_features"))
        per_frame = {m: {k: torch.cat([p[k] for p in controls[m]]).tolist() for k in controls[m][0]}
                     for m in METHODS}  # fmt: skip
        record = {"scores": per_frame, "floor": floor, "blur_sigma": sigma, "blur_saturated": saturated}
        atomic_write_text(store.folder / "controls" / f"{clip.name}.json", json.dumps(record))
        row = _row(clip.name, f"{clip.name}[0]", clip.name, scores, time.perf_counter() - t0)
        row.update(
            {f"{m}_{k}": float(np.mean(v)) for m, ks in per_frame.items() if m != "model" for k, v in ks.items()}
        )
        row.update({"l1_low": float(np.mean(per_frame["model"]["l1_low"])), "reconstruction_floor": floor,
                    "blur_sigma": sigma})  # fmt: skip
        store.add(row)
        if sample is not None:
            sample.key = clip.name
            samples.append(sample)
    result = _finish(ctx, "self_reenactment", pcfg, suite, store, samples, {"videos_listed": len(clips)})
    result.controls = _controls_table(store.folder / "controls", [r["key"] for r in result.rows])
    return result


def _controls_table(folder: Path, keys: list[str]) -> dict | None:
    """``score_table`` of every finished video (one clip group ``all``: the large-motion subset is the top third of
    copy-the-source L1 over all frames) from the per-frame files each rank wrote."""
    clips = {}
    for key in sorted(keys):
        path = folder / f"{key}.json"
        if not path.is_file():  # a row written before the controls existed (resumed older run)
            log.warning("no controls for %s (%s missing): left out of the baseline table", key, path)
            continue
        rec = json.loads(path.read_text())
        scores = {
            m: {k: torch.tensor(v, dtype=torch.float64) for k, v in ks.items()} for m, ks in rec["scores"].items()
        }
        n = len(scores["model"]["l1"])
        clips[key] = {"group": "all", "scores": scores, "floor": torch.full((n,), rec["floor"], dtype=torch.float64),
                      "blur_sigma": rec["blur_sigma"], "blur_saturated": rec["blur_saturated"]}  # fmt: skip
    return score_table(clips) if clips else None


def _keep(ctx: EvalContext, idx: int, world: int, n: int) -> int:
    """Frames to keep of this rank's item ``idx``: all (<= mp4 cap) for the first few items, else none."""
    global_idx = idx * world + rank_world()[0]
    rep = ctx.cfg.eval.report
    if global_idx < int(rep.mp4_videos):
        return min(n, int(rep.mp4_max_frames))
    return min(n, int(rep.grid_frames)) if global_idx < int(rep.grid_videos) else 0


@register_protocol("cross_reenactment")
def cross_reenactment(ctx: EvalContext, pcfg: DictConfig) -> ProtocolResult:
    """The first ``num_sources`` source images x every driving video."""
    suite = Suite(ctx.cfg.eval.metrics, list(pcfg.metrics), ctx.device)
    store = ResultStore(ctx.out_dir / "cross_reenactment")
    rank, world = rank_world()
    if not pcfg.get("sources"):
        raise ValueError("cross_reenactment needs eval.data.sources: a folder of source images (the paper: FFHQ)")
    sources = list_images(pcfg.sources, int(pcfg.num_sources))
    videos = _videos(pcfg)
    pairs = [(v, s) for v in videos for s in sources]
    src_cache: dict[str, np.ndarray] = {}
    drv_cache: tuple[str, list[np.ndarray]] | None = None
    samples: list[Sample] = []
    for idx, (video, src) in enumerate(tqdm(pairs[rank::world], desc="cross-reenactment", unit="pair",
                                            disable=rank != 0)):  # fmt: skip
        key = f"{src.name}__{video.name}"
        if store.done(key):
            continue
        t0 = time.perf_counter()
        if src.name not in src_cache:
            src_cache[src.name] = face_crops(src, pcfg.source_crop, ctx.crop_size)[0]
        if drv_cache is None or drv_cache[0] != video.name:
            stride = int(pcfg.get("frame_stride", 1))
            drv_cache = (video.name, face_crops(video, pcfg.crop, ctx.crop_size, pcfg.get("max_frames"), stride))
            if "fid" in suite.metrics and pcfg.fid_reference == "driving":
                _save_features(store.folder / "fid_driving", video.name, _fid_features(ctx, suite, drv_cache[1]))
        keep = _keep(ctx, idx, world, len(drv_cache[1]))
        scores, sample = _run_item(ctx, suite, src_cache[src.name], drv_cache[1], keep, cross=True)
        _save_features(store.folder / "fid", key, scores.get("fid_features"))
        store.add(_row(key, src.name, video.name, scores, time.perf_counter() - t0))
        if sample is not None:
            sample.key = key
            samples.append(sample)
    extra = {"sources_used": [s.name for s in sources], "videos_listed": len(videos),
             "fid_reference_used": _fid_reference_label(pcfg, sources)}  # fmt: skip
    return _finish(ctx, "cross_reenactment", pcfg, suite, store, samples, extra)


def _fid_reference_label(pcfg: DictConfig, sources: list[Clip]) -> str:
    ref = pcfg.get("fid_reference", "driving")
    if ref == "source":
        return f"source images ({len(sources)} from {pcfg.sources})"
    if ref == "driving":
        return "driving frames of the evaluated videos"
    return f"image folder {ref}"


def _fid(ctx: EvalContext, pcfg: DictConfig, suite: Suite, rows: list[dict], folder: Path) -> dict:
    """FID of all generated frames (cached per item) against the configured reference set."""
    fid = suite.metrics["fid"]
    fid.reset()
    for r in rows:
        fid.update_features(torch.from_numpy(np.load(folder / f"{r['key']}.npy")))
    ref = pcfg.get("fid_reference", "driving")
    if ref == "driving":
        for p in sorted((folder.parent / "fid_driving").glob("*.npy")):
            fid.update_features(torch.from_numpy(np.load(p)), real=True)
    else:
        clips = list_images(pcfg.sources, int(pcfg.num_sources)) if ref == "source" else list_images(ref)
        crop = pcfg.source_crop if ref == "source" else pcfg.get("reference_crop", "auto")
        key = repr([(str(c.path), c.path.stat().st_size, c.path.stat().st_mtime_ns) for c in clips])
        key += f"|crop={crop}|crop_size={ctx.crop_size}|eval_size={ctx.eval_size}"

        def batches():
            for c in clips:
                yield to_tensor(face_crops(c, crop, ctx.crop_size), ctx.eval_size)

        mu, sigma, n = reference_stats(key, batches, fid.extractor, ctx.cfg.eval.cache_dir)
        fid.set_reference(mu, sigma, n, _fid_reference_label(pcfg, clips))
    # every rank's features were read from the shared files: no DDP sync (rank 0 only runs this)
    return {"value": fid.distance(), "frames": int(fid.fake_n), "videos": len(rows), "info": fid.info()}
