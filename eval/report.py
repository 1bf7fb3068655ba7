"""Evaluation reports (LivePortrait Sec. 4.2, Tables 2-3 layout): summary JSON, Markdown tables with ↑/↓, sample
grids, short mp4s, ``metric-<name>.jsonl`` lines and a wandb run with one ``wandb.Table`` per protocol.

Headline tables hold only calibrated metrics (every network on real weights); a metric computed with ``random``
weights goes to a separate "uncalibrated" table and is never mixed into a headline (nor into ``lp-eval compare``
headlines). Every table is followed by the implementation, weights and units of each metric.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import cv2
import numpy as np
from lp_eval.protocols import ProtocolResult, Sample

from lp_train.animate_io import VideoWriter
from lp_train.metrics import METRICS, append_result
from lp_train.metrics.controls import METHODS, control_note

log = logging.getLogger(__name__)

# Column order of the paper's tables (Table 2: self-reenactment, Table 3: cross-reenactment).
COLUMNS = {
    "self_reenactment": ["psnr", "ssim", "lpips", "l1", "csim", "mae_gaze", "fid", "aed_expression", "apd_pose"],
    "cross_reenactment": ["fid", "csim", "aed_expression", "apd_pose", "mae_gaze", "psnr", "ssim", "lpips", "l1"],
}
LABELS = {"psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS", "l1": "L1", "fid": "FID", "csim": "CSIM",
          "aed_expression": "AED (expr.)", "apd_pose": "APD (pose)", "mae_gaze": "MAE (gaze °)"}  # fmt: skip
DIGITS = {"psnr": 2, "fid": 2, "mae_gaze": 2, "apd_pose": 3}


def arrow(name: str) -> str:
    hib = METRICS[name].higher_is_better if name in METRICS else None
    return "↑" if hib else "↓" if hib is False else ""


def fmt(name: str, value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{DIGITS.get(name, 4)}f}"


def protocol_summary(res: ProtocolResult) -> dict:
    """JSON-able summary of one protocol: metric values with frames, direction, calibration and provenance."""
    metrics = {}
    for name, s in res.summary.items():
        info = s.get("info") or res.info.get(name, {})
        metrics[name] = {
            "value": s["value"],
            "frames": s["frames"],
            "videos": s["videos"],
            "higher_is_better": METRICS[name].higher_is_better,
            "calibrated": bool(info.get("calibrated")),
            "info": info,
        }
    frames = int(sum(r.get("frames", 0) for r in res.rows))
    out = {"items": len(res.rows), "frames": frames, "metrics": metrics, "settings": res.settings}
    if res.controls is not None:
        out["controls"] = res.controls
    return out


def _l1(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def controls_table(summary: dict, protocol: str) -> str:
    """The model beside its baselines on the same frames (rows ``model``, ``copy_source``,
    ``blur_matched_copy_source``; all videos, then each video), with the large-motion subset and 1/8-res L1."""
    table = summary["protocols"].get(protocol, {}).get("controls")
    if not table:
        return ""
    out = [
        f"#### {protocol.replace('_', '-')}: the model beside its baselines (L1 ↓, eval resolution)",
        "",
        "`copy_source`: the source frame as the prediction (no motion). `blur_matched_copy_source`: the source "
        "blurred until its L1 to itself equals the model's self-reconstruction L1 (`floor`): the model's appearance "
        "error without motion; beating it means the model moves the face. `large motion`: the frames in the top "
        "third of copy-source L1 over all videos. ×1/8: L1 at 1/8 resolution (texture-insensitive).",
        "",
        "| video | method | frames | L1 | L1 ×1/8 | large-motion frames | large-motion L1 | large-motion L1 ×1/8 "
        "| note |",
        "|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    entries = [("**all**", table["groups"]["all"]), *sorted(table["clips"].items())]
    for name, e in entries:
        large = e["large_motion"]
        for m in METHODS:
            lm = large.get(m) or {}
            note = control_note(e, m)
            out.append(f"| {name} | {m} | {e['pairs']} | {_l1(e[m]['l1'])} | {_l1(e[m]['l1_low'])} | "
                       f"{large['pairs']} | {_l1(lm.get('l1'))} | {_l1(lm.get('l1_low'))} | {note} |")  # fmt: skip
    return "\n".join(out) + "\n"


def _metrics(summary: dict, protocol: str) -> dict[str, dict]:
    return summary["protocols"].get(protocol, {}).get("metrics", {})


def markdown_tables(runs: dict[str, dict], protocol: str) -> str:
    """Paper-layout Markdown for ``protocol``: rows = runs (name -> summary JSON), columns = metrics with ↑/↓.

    Metrics calibrated in every run that has them go to the headline table; the rest to an "uncalibrated" table.
    """
    order = COLUMNS.get(protocol, list(METRICS))
    present = [n for n in order if any(n in _metrics(r, protocol) for r in runs.values())]
    cal = [n for n in present if all(_metrics(r, protocol)[n]["calibrated"] for r in runs.values()
                                     if n in _metrics(r, protocol))]  # fmt: skip
    uncal = [n for n in present if n not in cal]
    out = [f"### {protocol.replace('_', '-')}", ""]
    for title, names in (("", cal), ("Uncalibrated (random weights: NOT comparable, never quote)", uncal)):
        if not names:
            continue
        if title:
            out += [title, ""]
        out.append("| Method | " + " | ".join(f"{LABELS.get(n, n)} {arrow(n)}" for n in names) + " |")
        out.append("|---|" + "---:|" * len(names))
        for run, summ in runs.items():
            ms = _metrics(summ, protocol)
            out.append(f"| {run} | " + " | ".join(fmt(n, ms.get(n, {}).get("value")) for n in names) + " |")
        out.append("")
    out.append(_footnotes(runs, protocol, present))
    if len(runs) == 1:
        out.append(controls_table(next(iter(runs.values())), protocol))
    return "\n".join(out)


def _footnotes(runs: dict[str, dict], protocol: str, names: list[str]) -> str:
    """One line per metric: implementation, weights, settings and frame count (from the first run that has it)."""
    notes = []
    for n in names:
        m = next(_metrics(s, protocol)[n] for s in runs.values() if n in _metrics(s, protocol))
        info = m["info"]
        notes.append(
            f"- **{LABELS.get(n, n)}**: {info.get('implementation')}; weights: {info.get('weights')}; "
            f"settings: {json.dumps(info.get('settings', {}), default=str)}; frames: {m['frames']}"
        )
    return "\n".join(notes) + "\n"


def write_grid(samples: list[Sample], path: Path, columns: int) -> Path | None:
    """PNG grid: per item two rows, [source | driving frames] over [label | generated frames]."""
    if not samples:
        return None
    rows = []
    for s in samples:
        idx = np.linspace(0, len(s.generated) - 1, min(columns, len(s.generated))).round().astype(int)
        e = s.source.shape[0]
        blank = np.full_like(s.source, 255)
        cv2.putText(blank, s.key[:24], (4, e // 2), cv2.FONT_HERSHEY_SIMPLEX, e / 400, (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.concatenate([s.source] + [s.driving[i] for i in idx], axis=1))
        rows.append(np.concatenate([blank] + [s.generated[i] for i in idx], axis=1))
    width = max(r.shape[1] for r in rows)
    rows = [np.pad(r, ((0, 0), (0, width - r.shape[1]), (0, 0)), constant_values=255) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.concatenate(rows, axis=0), cv2.COLOR_RGB2BGR))
    return path


def write_videos(samples: list[Sample], folder: Path, count: int, fps: float) -> list[Path]:
    """Short mp4s (source | driving | generated) of the first ``count`` items that kept all their frames."""
    paths = []
    for s in [s for s in samples if len(s.generated) > 1][:count]:
        path = folder / f"{s.key}.mp4"
        with VideoWriter(path, fps) as w:
            for d, g in zip(s.driving, s.generated, strict=True):
                w.write(np.concatenate([s.source, d, g], axis=1))
        paths.append(path)
    return paths


def append_metric_lines(out_dir: Path, summary: dict) -> None:
    """One ``metric-<name>.jsonl`` line per protocol and metric, with checkpoint and exact settings."""
    for proto, p in summary["protocols"].items():
        for name, m in p["metrics"].items():
            append_result(out_dir, name, {"protocol": proto, "value": m["value"], "frames": m["frames"],
                                          "calibrated": m["calibrated"], "checkpoint": summary["checkpoint"],
                                          "run": summary["run_name"], "info": m["info"],
                                          "protocol_settings": p["settings"]})  # fmt: skip


def log_wandb(cfg_wandb, summary: dict, results: dict[str, ProtocolResult], media: dict, config: dict) -> str | None:
    """A wandb run (offline by default) with a per-video ``wandb.Table`` and a summary table per protocol."""
    if not cfg_wandb.enabled:
        return None
    import wandb

    Path(cfg_wandb.dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=cfg_wandb.project, name=summary["run_name"], dir=str(cfg_wandb.dir),
                     mode=cfg_wandb.mode, job_type="eval", config=config, reinit="finish_previous")  # fmt: skip
    try:
        for proto, res in results.items():
            cols = list(dict.fromkeys(k for r in res.rows for k in r))
            run.log(
                {f"{proto}/per_video": wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in res.rows])}
            )
            ms = summary["protocols"][proto]["metrics"]
            data = [[n, m["value"], arrow(n), m["frames"], m["calibrated"], m["info"].get("implementation"),
                     str(m["info"].get("weights"))] for n, m in ms.items()]  # fmt: skip
            cols = ["metric", "value", "better", "frames", "calibrated", "implementation", "weights"]
            run.log({f"{proto}/summary": wandb.Table(columns=cols, data=data)})
            for n, m in ms.items():
                run.summary[f"{proto}/{n}" if m["calibrated"] else f"uncalibrated/{proto}/{n}"] = m["value"]
            controls = summary["protocols"][proto].get("controls")
            if controls:
                _log_controls(run, proto, controls)
            if media.get(proto):
                run.log({f"{proto}/samples": wandb.Image(str(media[proto]))})
        return str(Path(run.dir).parent)
    finally:
        run.finish()


def _log_controls(run, proto: str, controls: dict) -> None:
    """Summary scalars ``<proto>/controls/<method>/{l1,l1_low}`` (+ ``large_motion/``, ``reconstruction_floor``)
    and a per-video ``wandb.Table`` with the model and its baselines as rows."""
    import wandb

    g = controls["groups"]["all"]
    run.summary[f"{proto}/controls/reconstruction_floor"] = g["reconstruction_floor"]
    for m in METHODS:
        for k, v in g[m].items():
            run.summary[f"{proto}/controls/{m}/{k}"] = v
        if g["large_motion"][m] is not None:
            for k, v in g["large_motion"][m].items():
                run.summary[f"{proto}/controls/large_motion/{m}/{k}"] = v
    cols = ["video", "method", "frames", "l1", "l1_low", "large_motion_frames", "large_motion_l1"]
    data = [[name, m, e["pairs"], e[m]["l1"], e[m]["l1_low"], e["large_motion"]["pairs"],
             (e["large_motion"][m] or {}).get("l1")]
            for name, e in [("all", g), *sorted(controls["clips"].items())] for m in METHODS]  # fmt: skip
    run.log({f"{proto}/controls": wandb.Table(columns=cols, data=data)})
