"""Tests for run environment capture (lp_train.runinfo): git state, packages, SLURM context, files written."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from lp_train import runinfo


def _git(repo: Path, *args: str) -> str:
    env = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    res = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, check=True, env=env)
    return res.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "repo"
    r.mkdir()
    _git(r, "init", "-q")
    (r / "a.txt").write_text("one\n")
    _git(r, "add", "a.txt")
    _git(r, "commit", "-q", "-m", "init")
    return r


def test_git_info_clean_then_dirty(repo: Path) -> None:
    info = runinfo.git_info(repo)
    assert info["commit"] == _git(repo, "rev-parse", "HEAD") and len(info["commit"]) == 40
    assert info["dirty"] is False and "diff_sha256" not in info
    (repo / "a.txt").write_text("two\n")
    dirty = runinfo.git_info(repo / ".")
    assert dirty["dirty"] is True and dirty["commit"] == info["commit"]
    assert len(dirty["diff_sha256"]) == 16
    (repo / "a.txt").write_text("three\n")
    assert runinfo.git_info(repo)["diff_sha256"] != dirty["diff_sha256"]  # the hash pins the uncommitted change


def test_git_info_outside_a_checkout(tmp_path: Path) -> None:
    info = runinfo.git_info(tmp_path)
    assert info["commit"] is None and "not a git checkout" in info["reason"]


def test_slurm_info_and_rank_from_environment() -> None:
    env = {
        "SLURM_JOB_ID": "1234",
        "SLURM_ARRAY_JOB_ID": "1200",
        "SLURM_ARRAY_TASK_ID": "3",
        "SLURM_JOB_NODELIST": "gpu[01-16]",
        "SLURM_NTASKS": "128",
        "SLURM_RESTART_COUNT": "2",
        "SLURM_PROCID": "17",
        "HOME": "/root",
    }
    info = runinfo.slurm_info(env)
    assert info == {
        "job_id": "1234",
        "array_job_id": "1200",
        "array_task_id": "3",
        "node_list": "gpu[01-16]",
        "ntasks": "128",
        "restart_count": "2",
        "procid": "17",
    }
    assert runinfo.slurm_info({"HOME": "/root"}) == {}
    assert runinfo.global_rank(env) == 17
    assert runinfo.global_rank({"RANK": "3", "SLURM_PROCID": "0"}) == 3  # torchrun's RANK wins
    assert runinfo.global_rank({}) == 0


def test_package_versions_are_the_installed_ones() -> None:
    versions = runinfo.package_versions()
    assert versions["torch"] == torch.__version__.split("+")[0]  # metadata drops the local "+cu..." tag
    assert "lightning" in versions and "hydra-core" in versions
    assert "surely-not-installed-pkg" not in runinfo.package_versions(["surely-not-installed-pkg"])


def test_capture_writes_record_and_resolved_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, repo: Path) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.delenv("RANK", raising=False)
    cfg = OmegaConf.create({"optim": {"lr": 2e-4}, "trainer": {"max_steps": 5}, "sched": {"lr": "${optim.lr}"}})
    out = tmp_path / "run"
    info = runinfo.capture(cfg, out, repo=repo)
    on_disk = json.loads((out / "runinfo.json").read_text())
    assert on_disk["git"]["commit"] == _git(repo, "rev-parse", "HEAD")
    assert on_disk["slurm"]["job_id"] == "77" and on_disk["accelerator"]["torch"] == torch.__version__
    assert yaml.safe_load((out / "config_resolved.yaml").read_text())["sched"]["lr"] == 2e-4  # resolved
    assert info["config"]["sched"]["lr"] == 2e-4 and "config" not in runinfo.wandb_summary(info)

    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")  # a requeued job appends, keeps the history
    runinfo.capture(cfg, out, repo=repo)
    lines = [json.loads(x) for x in (out / "runinfo.jsonl").read_text().splitlines()]
    assert [x["slurm"].get("restart_count") for x in lines] == [None, "1"]


def test_capture_writes_only_on_rank_zero(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.setenv("SLURM_PROCID", "1")
    info = runinfo.capture({"a": 1}, tmp_path / "r1")
    assert info["config"] == {"a": 1} and not (tmp_path / "r1").exists()


def test_hydra_multirun_context_gives_a_shared_sweep_group(tmp_path: Path) -> None:
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig

    (tmp_path / "conf").mkdir()
    (tmp_path / "conf" / "app.yaml").write_text("x: 1\n")
    overrides = ["hydra.mode=MULTIRUN", f"hydra.sweep.dir={tmp_path}/multirun/2025-01-01/12-00-00", "hydra.job.num=1"]
    with initialize_config_dir(str(tmp_path / "conf"), version_base="1.3", job_name="train"):
        cfg = compose("app", overrides=overrides, return_hydra_config=True)
        HydraConfig.instance().set_config(cfg)
        try:
            info = runinfo.hydra_info()
            group = runinfo.sweep_group()
        finally:
            HydraConfig.instance().cfg = None
    assert info["mode"] == "MULTIRUN" and info["job_num"] == 1 and info["job_name"] == "train"
    assert group == "train-2025-01-01-12-00-00"
    assert runinfo.sweep_group({"hydra": {"mode": "RUN"}}) is None


def test_atomic_write_text_replaces_whole_files_and_leaves_no_temporaries(tmp_path, monkeypatch):
    import os
    import stat

    from lp_train.fileio import atomic_write_text

    target = tmp_path / "deep" / "report.md"
    atomic_write_text(target, "first ✓\n")
    atomic_write_text(target, "second\n")
    assert target.read_text(encoding="utf-8") == "second\n" and stat.S_IMODE(target.stat().st_mode) == 0o644

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        atomic_write_text(target, "third\n")
    assert target.read_text() == "second\n" and sorted(p.name for p in target.parent.iterdir()) == ["report.md"]
