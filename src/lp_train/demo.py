"""``make demo``: the whole lp-train pipeline end to end on a small embedded data set, on a CPU.

Every step runs the same console program a user runs on a cluster, with the tiny configurations:

1. demo corpus: real face photos that ship inside installed packages (scikit-image's astronaut and camera,
   matplotlib's Grace Hopper) animated into short pseudo talking-head clips, plus the stills (``data_prep.demo_data``);
2. curation: ``lp-prep`` -> WebDataset shards + index + report with contact sheets;
3. stage 1: ``lp-train experiment=stage1_cpu`` on those shards, a short fine-tune of the shipped
   ``stage1_tiny_faces`` (``lp_train.pretrained``) when it is installed, else from random init (logged);
4. the differentiable landmark model for stage 2, distilled from mediapipe's face mesh (``experiment=landmark_tiny``);
5. stage 2: ``lp-train experiment=stage2_tiny`` on the frozen stage-1 model;
6. evaluation: ``lp-eval`` self- and cross-reenactment on the demo clips -> CSV / JSON / Markdown / grids / wandb;
7. animation: ``lp-animate`` of a still driven by a demo clip -> mp4;
then a summary report ``demo_out/REPORT.md``. Nothing is downloaded and ``../shared`` is not used. The networks are
tiny and trained for a few dozen steps, and third-party metric networks use ``weights=random``: the numbers prove the
plumbing, not quality (they are marked uncalibrated).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

from lp_train.pretrained import available, path_of

BIN = Path(sys.executable).parent


def _run(cmd: list[str], log: Path) -> None:
    print(f"\n$ {shlex.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write(f"\n$ {shlex.join(cmd)}\n")
        f.flush()
        proc = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode:
        tail = "".join(open(log).readlines()[-40:])
        raise SystemExit(f"demo step failed (exit {proc.returncode}); last lines of {log}:\n{tail}")
    print(f"  ok ({time.perf_counter() - t0:.0f} s)", flush=True)


def _tool(name: str) -> str:
    path = BIN / name
    return str(path) if path.exists() else name


PRETRAINED = "stage1_tiny_faces"


def stage1_start() -> tuple[list[str], str]:
    """Stage 1's recipe overrides and a line for the log and report: a short fine-tune (``experiment=stage1_cpu``,
    lower learning rate) from the shipped ``stage1_tiny_faces`` when it is installed, else the same recipe from
    random init."""
    if PRETRAINED in available():
        line = f"stage 1: fine-tuning the shipped model {PRETRAINED} ({path_of(PRETRAINED)}) on the demo data"
        return ["experiment=stage1_cpu", f"module.init_weights={PRETRAINED}", "module.optimizer_g.lr=2.0e-4"], line
    line = (f"stage 1: the shipped model {PRETRAINED} is not installed ({path_of(PRETRAINED)} missing): "
            "training from random init")  # fmt: skip
    return ["experiment=stage1_cpu"], line


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="demo_out", help="output folder (default: demo_out)")
    ap.add_argument("--stage1-steps", type=int, default=30)
    ap.add_argument("--landmark-steps", type=int, default=30)
    ap.add_argument("--stage2-steps", type=int, default=10)
    args = ap.parse_args(argv)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log = out / "demo.log"
    log.write_text("")
    os.environ.setdefault("WANDB_MODE", "offline")
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["LP_RUNS_DIR"] = str(out / "runs")
    py = sys.executable
    t_start = time.perf_counter()
    print(f"lp-train demo -> {out} (full log: {log})")

    data = out / "data"
    _run([py, "-m", "data_prep.demo_data", str(data), "--curate", "--workers", "2"], log)
    shards = str(data / "curated" / "shards" / "faces-*.tar")
    shard_args = [f"data.train_shards={shards}", f"data.val_shards={shards}"]

    s1 = out / "stage1"
    stage1_recipe, stage1_line = stage1_start()
    print(stage1_line, flush=True)
    with open(log, "a") as f:
        f.write(stage1_line + "\n")
    _run(
        [
            _tool("lp-train"),
            *stage1_recipe,
            "data=tiny",
            *shard_args,
            f"trainer.max_steps={args.stage1_steps}",
            f"hydra.run.dir={s1}",
        ],
        log,
    )
    base = s1 / "model.pt"

    lm = out / "landmark"
    _run(
        [
            _tool("lp-train"),
            "experiment=landmark_tiny",
            "data=tiny",
            *shard_args,
            f"trainer.max_steps={args.landmark_steps}",
            f"hydra.run.dir={lm}",
        ],
        log,
    )
    landmark = lm / "landmark_regressor.pt"

    s2 = out / "stage2"
    _run(
        [
            _tool("lp-train"),
            "experiment=stage2_tiny",
            "data=tiny",
            *shard_args,
            "data.cross_identity_prob=0.5",
            f"module.base_checkpoint={base}",
            f"weights.landmark={landmark}",
            f"trainer.max_steps={args.stage2_steps}",
            f"hydra.run.dir={s2}",
        ],
        log,
    )
    model = s2 / "model.pt"

    ev = out / "eval"
    raw = data / "raw"
    _run(
        [
            _tool("lp-eval"),
            "model=tiny",
            f"checkpoint={model}",
            "weights=random",
            "eval/protocols=tiny",
            f"eval.data.videos={raw / 'videos'}",
            f"eval.data.sources={raw / 'images'}",
            f"out_dir={ev}",
        ],
        log,
    )

    anim = out / "animate" / "astronaut_by_hopper.mp4"
    _run(
        [
            _tool("lp-animate"),
            "model=tiny",
            f"checkpoint={model}",
            f"source={raw / 'images' / 'astronaut.jpg'}",
            f"driving={raw / 'videos' / 'hopper.mp4'}",
            f"output={anim}",
            "side_by_side=true",
        ],
        log,
    )

    _write_report(out, data, s1, s2, ev, anim, time.perf_counter() - t_start, stage1_line)


def _write_report(
    out: Path, data: Path, s1: Path, s2: Path, ev: Path, anim: Path, seconds: float, stage1_line: str
) -> None:
    curated = json.loads((data / "curated" / "index.json").read_text())
    summary = (ev / "report.md").read_text() if (ev / "report.md").exists() else "(no eval report)"
    lines = [
        "# lp-train demo report",
        "",
        f"Ran the whole pipeline on CPU in {seconds / 60:.1f} minutes. Tiny networks, a few dozen steps, random "
        "third-party metric networks: these numbers check the plumbing, not the model's quality.",
        "",
        "| step | output |",
        "|---|---|",
        f"| curation | `{data / 'curated'}` ({curated.get('num_samples', '?')} samples, "
        f"{curated.get('num_frames', '?')} frames; report and contact sheets in `report/`) |",
        f"| stage 1 | `{s1}` (model.pt, checkpoints, CSV + wandb-offline logs, image grids); {stage1_line} |",
        f"| stage 2 | `{s2}` |",
        f"| evaluation | `{ev}` (summary.json, report.md, per-video CSV, grids, mp4s) |",
        f"| animation | `{anim}` |",
        "",
        "## Evaluation",
        "",
        "The self-reenactment section lists the model beside its baselines on the same frames (`copy_source`, "
        "`blur_matched_copy_source`, the large-motion subset): a model that moves the face beats both.",
        "",
        summary,
    ]
    (out / "REPORT.md").write_text("\n".join(lines) + "\n")
    print(f"\ndemo finished in {seconds / 60:.1f} min; report: {out / 'REPORT.md'}")


if __name__ == "__main__":
    main()
