"""Run environment capture: what produced a run, written next to it, so a run can be reproduced
and traced to its cluster job.

Every training/eval run records the git commit (and whether the tree was dirty), the resolved Hydra config, the
versions of the packages that decide the numbers, the host/Python/accelerator and the SLURM context (job id, array
job/task ids, node list, task counts, restart count). :func:`capture` writes ``runinfo.json`` (latest) plus one line
per (re)start in ``runinfo.jsonl`` and ``config_resolved.yaml`` into the run's output directory, and returns the
record as a plain dict that the trainer adds to the wandb config (``WandbLogger.experiment.config.update``).

On a requeued SLURM job the job id stays the same and ``SLURM_RESTART_COUNT`` grows, so ``runinfo.jsonl`` shows
every restart of a preempted run. Only global rank 0 writes (ranks read ``RANK`` or ``SLURM_PROCID``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from lp_train.fileio import atomic_write_text

log = logging.getLogger(__name__)

PACKAGES = (
    "lp-train",
    "torch",
    "torchvision",
    "lightning",
    "hydra-core",
    "omegaconf",
    "hydra-submitit-launcher",
    "submitit",
    "wandb",
    "webdataset",
    "timm",
    "numpy",
    "lpips",
    "pytorch-fid",
    "torchmetrics",
    "kornia",
    "mediapipe",
    "opencv-python-headless",
    "deepspeed",
)

# SLURM variable -> key in the record. Only the variables that are set are recorded.
SLURM_VARS = {
    "SLURM_JOB_ID": "job_id",
    "SLURM_JOB_NAME": "job_name",
    "SLURM_ARRAY_JOB_ID": "array_job_id",
    "SLURM_ARRAY_TASK_ID": "array_task_id",
    "SLURM_ARRAY_TASK_COUNT": "array_task_count",
    "SLURM_ARRAY_TASK_MIN": "array_task_min",
    "SLURM_ARRAY_TASK_MAX": "array_task_max",
    "SLURM_JOB_NODELIST": "node_list",
    "SLURM_JOB_NUM_NODES": "num_nodes",
    "SLURM_NTASKS": "ntasks",
    "SLURM_NTASKS_PER_NODE": "ntasks_per_node",
    "SLURM_CPUS_PER_TASK": "cpus_per_task",
    "SLURM_GPUS_ON_NODE": "gpus_on_node",
    "SLURM_PROCID": "procid",
    "SLURM_RESTART_COUNT": "restart_count",
    "SLURM_JOB_PARTITION": "partition",
    "SLURM_JOB_ACCOUNT": "account",
    "SLURM_CLUSTER_NAME": "cluster_name",
    "SLURM_SUBMIT_DIR": "submit_dir",
}

REPO_DIR = Path(__file__).resolve().parents[2]  # the checkout for an editable install


def _git(repo: Path, *args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return res.stdout.strip() if res.returncode == 0 else None


def git_info(repo: Path | None = None) -> dict[str, Any]:
    """Commit, branch and dirty flag of the checkout the code runs from.

    Args:
        repo: a directory inside the git work tree (default: this package's checkout, then the cwd).

    Returns:
        ``{"commit", "branch", "dirty", "diff_sha256"}`` (``diff_sha256`` of ``git diff HEAD`` when dirty), or
        ``{"commit": None, "reason": ...}`` when no git checkout is found (e.g. a wheel install).
    """
    for cand in [repo] if repo else [REPO_DIR, Path.cwd()]:
        top = _git(Path(cand), "rev-parse", "--show-toplevel")
        if top:
            break
    else:
        return {"commit": None, "reason": "not a git checkout (or git missing)"}
    root = Path(top)
    status = _git(root, "status", "--porcelain", "--untracked-files=no") or ""
    info: dict[str, Any] = {
        "commit": _git(root, "rev-parse", "HEAD"),
        "branch": _git(root, "rev-parse", "--abbrev-ref", "HEAD"),
        "dirty": bool(status),
        "root": str(root),
    }
    if info["dirty"]:
        diff = _git(root, "diff", "HEAD") or ""
        info["diff_sha256"] = hashlib.sha256(diff.encode()).hexdigest()[:16]
    return info


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (distribution names); packages that are not installed are left out."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def slurm_info(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The SLURM context from the environment (empty outside a SLURM job)."""
    env = os.environ if env is None else env
    return {key: env[var] for var, key in SLURM_VARS.items() if var in env}


def hydra_info() -> dict[str, Any]:
    """Hydra's runtime facts (mode, output/sweep dir, job num, overrides); empty outside ``@hydra.main``."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from omegaconf import OmegaConf

        if not HydraConfig.initialized():
            return {}
        hc = HydraConfig.get()
    except (ImportError, ValueError):
        return {}
    mode = str(hc.mode.name) if hc.mode is not None else None
    info: dict[str, Any] = {
        "mode": mode,
        "job_name": hc.job.name,
        "output_dir": OmegaConf.select(hc, "runtime.output_dir", default=None),  # unset under compose()
        "overrides": list(hc.overrides.task),
        "choices": {k: v for k, v in hc.runtime.choices.items() if v is not None and not k.startswith("hydra/")},
    }
    if mode == "MULTIRUN":
        info.update(sweep_dir=hc.sweep.dir, job_num=hc.job.num)
    return info


def _accelerator() -> dict[str, Any]:
    try:
        import torch
    except ImportError:
        return {}
    info: dict[str, Any] = {
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda_devices": torch.cuda.device_count(),
    }
    if info["cuda_devices"]:
        info.update(cuda=torch.version.cuda, device_name=torch.cuda.get_device_name(0))
    return info


def collect(cfg: Any = None, repo: Path | None = None) -> dict[str, Any]:
    """Gather the run record (see the module docstring); ``cfg`` (a DictConfig or dict) is stored resolved."""
    return {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "python": sys.version.split()[0],
        "argv": list(sys.argv),
        "cwd": os.getcwd(),
        "git": git_info(repo),
        "packages": package_versions(),
        "accelerator": _accelerator(),
        "slurm": slurm_info(),
        "hydra": hydra_info(),
        "config": resolve_config(cfg),
    }


def resolve_config(cfg: Any) -> Any:
    """``cfg`` as plain containers with interpolations resolved (unresolved, with a warning, if that fails)."""
    if cfg is None:
        return None
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if not isinstance(cfg, DictConfig | ListConfig):
        return cfg
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # e.g. ${hydra:...} outside a Hydra run
        log.warning("config interpolation failed (%s); recording it unresolved", e)
        return OmegaConf.to_container(cfg, resolve=False)


def global_rank(env: Mapping[str, str] | None = None) -> int:
    """This process's global rank from the launcher's environment (torchrun ``RANK``, srun ``SLURM_PROCID``)."""
    env = os.environ if env is None else env
    for var in ("RANK", "SLURM_PROCID"):
        if env.get(var, "").isdigit():
            return int(env[var])
    return 0


def write(info: Mapping[str, Any], out_dir: str | os.PathLike) -> Path:
    """Write ``runinfo.json``, append to ``runinfo.jsonl`` and write ``config_resolved.yaml`` in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = json.dumps(info, indent=2, sort_keys=True, default=str)
    atomic_write_text(out / "runinfo.json", text + "\n")
    with open(out / "runinfo.jsonl", "a") as f:
        f.write(json.dumps(info, sort_keys=True, default=str) + "\n")
    if info.get("config") is not None:
        import yaml

        atomic_write_text(out / "config_resolved.yaml", yaml.safe_dump(info["config"], sort_keys=False))
    return out / "runinfo.json"


def capture(cfg: Any, out_dir: str | os.PathLike, repo: Path | None = None) -> dict[str, Any]:
    """Collect the run record, write it into ``out_dir`` on global rank 0, and return it (every rank).

    Args:
        cfg: the run's config (DictConfig or plain dict); stored resolved.
        out_dir: the run's output directory (Hydra's ``hydra.runtime.output_dir`` or the trainer's root dir).
        repo: a directory inside the git checkout (default: this package's checkout, then the cwd).

    Returns:
        The record; pass it to the wandb config, e.g. ``logger.experiment.config.update({"run": info})``.
    """
    info = collect(cfg, repo)
    if global_rank() == 0:
        path = write(info, out_dir)
        log.info(
            "run info: commit %s%s, SLURM job %s -> %s",
            (info["git"].get("commit") or "?")[:10],
            " (dirty)" if info["git"].get("dirty") else "",
            info["slurm"].get("job_id", "-"),
            path,
        )
    return info


def wandb_summary(info: Mapping[str, Any]) -> dict[str, Any]:
    """The run record without the full config (wandb already gets it), for ``wandb.config.update``."""
    return {k: v for k, v in info.items() if k != "config"}


def sweep_group(info: Mapping[str, Any] | None = None) -> str | None:
    """A wandb group shared by all members of one Hydra multirun (the sweep dir's name), else ``None``."""
    hydra = (info or {}).get("hydra") if info is not None else hydra_info()
    if not hydra or hydra.get("mode") != "MULTIRUN":
        return None
    sweep = Path(str(hydra["sweep_dir"]))
    return f"{hydra['job_name']}-{sweep.parent.name}-{sweep.name}" if sweep.parent.name else sweep.name
