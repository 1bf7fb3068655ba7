"""Curation throughput: end-to-end frames/s per core on real talking-head clips, and the time per stage.

Runs the real pipeline (``data_prep.run``: probe -> ffmpeg decode -> mediapipe detection + 478 landmarks ->
smoothed LivePortrait crop at 512² -> JPEG q95 -> shard write) in one process (``workers=1``) over the clips of
``../shared/data/faces/videos`` at their native frame rate (the embedded demo corpus when that folder is absent).
"Per core" divides frames by the CPU seconds the run consumed (this process + its ffmpeg children, from
``getrusage``), since mediapipe and ffmpeg use a few threads each; wall-clock frames/s of the single worker is
reported too. Stage rows give seconds per frame and share of the summed stage time. The scale plan in
``data_prep/README.md`` is derived from these rows.
"""

from __future__ import annotations

import logging
import resource
import tempfile
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from data_prep.cli import CONF_DIR
from data_prep.run import run as curate

FACES = Path(__file__).resolve().parents[1] / "../shared/data/faces/videos"
STAGES = ("probe", "decode", "detect", "crop", "identity", "encode", "serialize", "write")
PAPER_RAW_FRAMES = 92e6  # LivePortrait Sec. 4.1: 92M frames before filtering (69M kept)


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def _inputs(tmp: Path) -> tuple[list[str], str]:
    if FACES.is_dir():
        return [str(FACES)], "shared/data/faces/videos (8 real clips)"
    from data_prep.demo_data import make_demo_corpus

    make_demo_corpus(tmp / "demo")
    return [str(tmp / "demo" / "videos")], "embedded demo corpus (3 pseudo clips)"


def run_bench(quick: bool = False) -> tuple[dict, dict, str]:
    """One curation run; returns (summary, measurements, input description)."""
    with tempfile.TemporaryDirectory(prefix="bench_curation_") as tmp:
        paths, desc = _inputs(Path(tmp))
        with initialize_config_dir(CONF_DIR, version_base="1.3"):
            cfg = compose("data_prep", overrides=["workers=1", "log_every_s=1e9"])
        OmegaConf.update(cfg, "inputs.paths", paths)
        OmegaConf.update(cfg, "output.dir", str(Path(tmp) / "out"))
        OmegaConf.update(cfg, "decode.max_frames", 24 if quick else 150)
        cpu0, t0 = _cpu_seconds(), time.perf_counter()
        summary = curate(cfg)
        wall, cpu = time.perf_counter() - t0, _cpu_seconds() - cpu0
        shard_bytes = sum(p.stat().st_size for p in (Path(tmp) / "out" / "shards").glob("*.tar"))
    return summary, {"wall": wall, "cpu": cpu, "shard_bytes": shard_bytes}, desc


def run(quick: bool = False) -> list[dict]:
    logging.getLogger("data_prep").setLevel(logging.WARNING)
    summary, m, desc = run_bench(quick)
    frames, kept = summary["frames"], max(summary["frames_kept"], 1)
    stages = summary["stage_seconds"]
    total_stage = sum(stages.get(s, 0.0) for s in STAGES)
    per_core = frames / m["cpu"]
    rows = [
        {"metric": "end-to-end frames/s per core", "value": per_core, "unit": "frames/CPU-s", "inputs": desc},
        {"metric": "end-to-end frames/s, 1 worker (wall)", "value": frames / m["wall"], "unit": "frames/s"},
        {"metric": "CPU cores used by 1 worker", "value": m["cpu"] / m["wall"], "unit": "cores"},
        {"metric": "frames decoded", "value": float(frames), "unit": "frames"},
        {"metric": "frames kept", "value": float(summary["frames_kept"]), "unit": "frames"},
        {"metric": "shard bytes per kept frame", "value": m["shard_bytes"] / kept / 1e3, "unit": "kB"},
    ]
    for s in STAGES:
        sec = stages.get(s, 0.0)
        rows.append({"metric": f"stage {s}", "value": 1e3 * sec / max(frames, 1), "unit": "ms/frame",
                     "share": f"{100 * sec / max(total_stage, 1e-9):.1f}%"})  # fmt: skip
    node_cores = 64
    node_hours = PAPER_RAW_FRAMES / (per_core * node_cores * 3600)
    rows.append({"metric": "node-hours for 92M raw frames (64-core nodes)", "value": node_hours, "unit": "node-h"})
    return rows


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    for r in run(quick=False):
        print(r)
