"""``lp-eval``: evaluate a checkpoint with the paper's protocols, or compare finished runs (LivePortrait Sec. 4.2).

    lp-eval checkpoint=PATH [model=official|tiny] [eval/data=faces] [eval/protocols=paper|tiny] [weights=...]
    lp-eval compare RUN_DIR [RUN_DIR ...] [--names a b ...] [--out report.md]

The first form is Hydra (``conf/eval.yaml``; any key overridable) and calls ``evaluate(cfg)``; the second reads each
run's ``summary.json`` and prints one paper-layout table per protocol across runs (the benchmark report users
share). Also ``python -m lp_eval``. Distributed: launch with torchrun/srun; every rank evaluates a share of the
videos and rank 0 writes the reports.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

import hydra
import torch
import torch.distributed as dist
from lp_eval.compare import compare_runs
from lp_eval.protocols import EvalContext, ProtocolResult
from lp_eval.reenact import Reenactor, load_model, resolve_device
from lp_eval.registry import get_protocol
from lp_eval.report import (
    append_metric_lines,
    log_wandb,
    markdown_tables,
    protocol_summary,
    write_grid,
    write_videos,
)
from lp_eval.store import rank_world
from lp_train.conf import CONF_DIR
from omegaconf import DictConfig, OmegaConf

from lp_train import runinfo
from lp_train.cli_errors import report_user_errors, run_cli
from lp_train.fileio import atomic_write_text
from lp_train.pretrained import resolve as resolve_checkpoint

log = logging.getLogger(__name__)


def _init_distributed() -> None:
    """Join the process group when launched with WORLD_SIZE > 1 (torchrun, or srun with the env set)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and dist.is_available() and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")


def _context(cfg: DictConfig) -> EvalContext:
    device = resolve_device(cfg.device)
    model, has_heads = load_model(cfg, device)
    stitching = has_heads if cfg.stitching == "auto" else bool(cfg.stitching)
    e = int(cfg.eval.eval_size)
    crop = max(e, model.input_size)  # crops feed the network (input_size) and the ground truth (eval_size)
    return EvalContext(cfg, Reenactor(model, stitching, bool(cfg.relative_motion)), device, Path(cfg.out_dir),
                       model.input_size, crop, e, int(cfg.batch_size))  # fmt: skip


@torch.no_grad()
def evaluate(cfg: DictConfig) -> dict:
    """Run the protocols of ``cfg.eval.protocols`` (enabled ones) and write every report; returns the summary."""
    _init_distributed()
    ctx = _context(cfg)
    ctx.out_dir.mkdir(parents=True, exist_ok=True)
    results: dict[str, ProtocolResult] = {}
    for name, pcfg in cfg.eval.protocols.items():
        if pcfg.get("enabled", True):
            log.info("protocol %s", name)
            results[name] = get_protocol(name)(ctx, pcfg)
    run_name = cfg.get("run_name") or Path(str(cfg.checkpoint)).stem
    summary = {"run_name": run_name, "checkpoint": str(resolve_checkpoint(cfg.checkpoint).resolve()),
               "model": OmegaConf.select(cfg, "model._target_"), "out_dir": str(ctx.out_dir),
               "protocols": {n: protocol_summary(r) for n, r in results.items()}}  # fmt: skip
    if rank_world()[0] == 0:
        _write_reports(cfg, ctx, summary, results)
    return summary


def _write_reports(cfg: DictConfig, ctx: EvalContext, summary: dict, results: dict[str, ProtocolResult]) -> None:
    rep = cfg.eval.report
    media = {}
    for name, res in results.items():
        media[name] = write_grid(res.samples, ctx.out_dir / name / "samples_grid.png", int(rep.grid_frames))
        write_videos(res.samples, ctx.out_dir / name / "videos", int(rep.mp4_videos), float(rep.fps))
    info = runinfo.capture(cfg, ctx.out_dir)  # runinfo.json, config_resolved.yaml
    summary["environment"] = {"git": info["git"], "packages": info["packages"], "accelerator": info["accelerator"]}
    config = {**OmegaConf.to_container(cfg, resolve=True), "run": runinfo.wandb_summary(info)}
    summary["wandb_dir"] = log_wandb(cfg.eval.wandb, summary, results, media, config)
    atomic_write_text(ctx.out_dir / "summary.json", json.dumps(summary, indent=1, default=str))
    md = [f"# Evaluation: {summary['run_name']}\n", f"checkpoint: `{summary['checkpoint']}`\n"]
    md += [markdown_tables({summary["run_name"]: summary}, name) for name in results]
    atomic_write_text(ctx.out_dir / "report.md", "\n".join(md))
    append_metric_lines(ctx.out_dir, summary)
    log.info("reports written to %s", ctx.out_dir)


@hydra.main(config_path=CONF_DIR, config_name="eval", version_base="1.3")
@report_user_errors("lp-eval")
def _hydra_main(cfg: DictConfig) -> None:
    summary = evaluate(cfg)
    if rank_world()[0] == 0:
        print((Path(summary["out_dir"]) / "report.md").read_text())


def _compare_main(argv: list[str]) -> None:
    ap = argparse.ArgumentParser(prog="lp-eval compare", description="One paper-layout table across eval runs.")
    ap.add_argument("runs", nargs="+", help="eval output folders (each with summary.json) or summary.json files")
    ap.add_argument("--names", nargs="*", help="row names (default: each run's run_name)")
    ap.add_argument("--out", help="also write the Markdown here")
    args = ap.parse_args(argv)
    text = compare_runs(args.runs, args.names)
    if args.out:
        atomic_write_text(Path(args.out), text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    """Console script ``lp-eval``: ``compare ...`` or Hydra overrides for ``evaluate``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["compare"]:
        run_cli("lp-eval compare", lambda: _compare_main([a for a in argv[1:] if a != "--debug"]), argv)
    else:
        run_cli("lp-eval", _hydra_main, argv)  # user errors -> one line, exit 2 (--debug: traceback)


if __name__ == "__main__":
    main()
