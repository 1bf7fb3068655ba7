"""Fast checks of the cluster layer without a cluster: sbatch scripts and the submitit launcher configs.

The scripts run under bash with stand-in ``srun``/``scontrol`` that record what would be launched, so the topology
(1 node -> 16 nodes), rendezvous and resume wiring are checked on any machine; ``tests/test_slurm.py`` runs them on a
real SLURM controller.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import submitit
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((REPO / "slurm").glob("*.sbatch")) + sorted((REPO / "slurm").glob("*.sh"))

FAKE_SRUN = """#!/bin/bash
{ echo "MASTER_ADDR=$MASTER_ADDR MASTER_PORT=${MASTER_PORT:-} WANDB_RUN_ID=${WANDB_RUN_ID:-}"; printf '%s\\n' "$@"; } \
  > "$FAKE_LOG"
"""
FAKE_SCONTROL = """#!/bin/bash
[ "$1 $2" = "show hostnames" ] && { for i in $(seq -w 1 16); do echo "gpu$i"; done; exit 0; }
exit 1
"""


def _directives(path: Path) -> list[str]:
    return [ln.split(None, 1)[1].strip() for ln in path.read_text().splitlines() if ln.startswith("#SBATCH ")]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_scripts_are_valid_bash(script: Path) -> None:
    res = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert os.access(script, os.X_OK), f"{script} is not executable"


def test_train_script_is_preemption_safe_ddp() -> None:
    d = _directives(REPO / "slurm" / "train.sbatch")
    assert {"--requeue", "--signal=B:USR1@90", "--open-mode=append"} <= set(d)
    per_node = {x.split("=")[0]: x.split("=")[1] for x in d if x.startswith(("--ntasks-per-node", "--gpus-per-node"))}
    assert per_node["--ntasks-per-node"] == per_node["--gpus-per-node"], "one DDP rank per GPU"


def run_with_fake_slurm(tmp_path: Path, script: str, args: list[str], **env: str) -> list[str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in {"srun": FAKE_SRUN, "scontrol": FAKE_SCONTROL}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "srun.log"
    full_env = {
        "PATH": f"{bin_dir}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "FAKE_LOG": str(log),
        "SLURM_SUBMIT_DIR": str(tmp_path),
        **env,
    }
    res = subprocess.run(["bash", str(REPO / "slurm" / script), *args], env=full_env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return log.read_text().splitlines()


def test_train_script_scales_from_the_allocation(tmp_path: Path) -> None:
    """16 nodes x 8 tasks: every rank gets num_nodes/devices, rank 0's node as master, a requeue-stable run dir."""
    slurm = {
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "lp-train",
        "SLURM_JOB_NODELIST": "gpu[01-16]",
        "SLURM_JOB_NUM_NODES": "16",
        "SLURM_NTASKS_PER_NODE": "8",
        "SLURM_NTASKS": "128",
        "SLURM_CLUSTER_NAME": "big",
    }
    lines = run_with_fake_slurm(tmp_path, "train.sbatch", ["experiment=stage1"], **slurm)
    assert lines[0] == "MASTER_ADDR=gpu01 MASTER_PORT=19242 WANDB_RUN_ID="  # the id lives in the run dir
    argv = lines[1:]
    assert "--cpus-per-task=1" in argv[: argv.index("lp-train")]
    assert argv[argv.index("lp-train") + 1 :] == [
        "trainer.num_nodes=16",
        "trainer.devices=8",
        f"hydra.run.dir={tmp_path}/runs/stage1",  # runs/<name>: a resubmitted job resumes the same run
        "callbacks.model_checkpoint.signals=[SIGTERM,SIGUSR1,SIGUSR2]",
        "experiment=stage1",
    ]
    assert "--kill-on-bad-exit=1" in argv

    custom = run_with_fake_slurm(
        tmp_path,
        "train.sbatch",
        ["x=1"],
        **{
            **slurm,
            "LP_RUN_DIR": "/r",
            "LP_TRAIN_CMD": "python -m lp_train.train",
            "MASTER_PORT": "29500",
            "LP_SIGNAL_OVERRIDE": "",
        },  # fmt: skip
    )
    assert custom[0].startswith("MASTER_ADDR=gpu01 MASTER_PORT=29500")
    assert custom[custom.index("python") :] == ["python", "-m", "lp_train.train", "trainer.num_nodes=16",
                                               "trainer.devices=8", "hydra.run.dir=/r", "x=1"]  # fmt: skip


def _launcher(name: str, tmp_path: Path) -> dict:
    (tmp_path / "app.yaml").write_text("x: 1\n")
    with initialize_config_dir(str(tmp_path), version_base="1.3"):
        overrides = [f"hydra.searchpath=[file://{REPO / 'conf'}]", f"hydra/launcher={name}"]
        cfg = compose("app", overrides=overrides, return_hydra_config=True)
    return OmegaConf.to_container(cfg.hydra.launcher, resolve=False)


@pytest.mark.parametrize("name", ["slurm", "slurm_local"])
def test_launcher_configs_render_an_sbatch_script(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The launcher config composes (on top of hydra-submitit-launcher's schema) and renders valid #SBATCH lines.

    Rendering needs no cluster: submitit's SLURM executor refuses to be built where ``srun`` is not on PATH (it reads
    its CPU affinity from there), so the test gives it a fixed affinity and never submits."""
    monkeypatch.setattr(submitit.SlurmExecutor, "affinity", classmethod(lambda cls: 1))
    params = _launcher(name, tmp_path)
    assert params["_target_"].endswith("submitit_launcher.SlurmLauncher")
    base = {"timeout_min", "cpus_per_task", "gpus_per_node", "tasks_per_node", "mem_gb", "nodes", "stderr_to_stdout"}
    skip = {"_target_", "submitit_folder", "name", "max_num_timeout"}
    kwargs = {k if k in base else f"slurm_{k}": v for k, v in params.items() if k not in skip}
    ex = submitit.AutoExecutor(folder=tmp_path / "%j", cluster="slurm")
    ex.update_parameters(**kwargs)
    text = ex._executor._make_submission_file_text("python -u -m submitit.core._submit x", "uid")
    if name == "slurm":
        assert "#SBATCH --gpus-per-node=8" in text and "#SBATCH --ntasks-per-node=8" in text
        assert "#SBATCH --signal=USR2@90" in text and "|| export WANDB_MODE=offline" in text
    else:
        assert "#SBATCH --partition=debug" in text and "gpus" not in text and "#SBATCH --ntasks-per-node=1" in text


FAKE_SBATCH = """#!/bin/bash
n=$(( $(cat "$FAKE_LOG.n" 2>/dev/null || echo 100) + 1 )); echo $n > "$FAKE_LOG.n"
echo "$n $*" >> "$FAKE_LOG"; echo "$n;cluster"
"""


def test_submit_prep_chains_the_merge_after_the_array(tmp_path: Path) -> None:
    (tmp_path / "sbatch").write_text(FAKE_SBATCH)
    (tmp_path / "sbatch").chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FAKE_LOG": str(log), "LP_PREP_TASKS": "4", "LP_SBATCH_ARGS": "-p cpu"}
    res = subprocess.run(
        ["bash", str(REPO / "slurm" / "submit_prep.sh"), "output.dir=/s"], env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "array=101 merge=102"
    array, merge = log.read_text().splitlines()
    assert array == f"101 --parsable -p cpu --array=0-3 {REPO}/slurm/prep_array.sbatch output.dir=/s"
    assert merge.startswith("102 --parsable -p cpu --dependency=afterok:101 --kill-on-invalid-dep=yes")
    assert merge.endswith("prep_merge.sbatch output.dir=/s")


def test_submit_prep_reruns_single_tasks_and_refuses_oversized_requests(tmp_path: Path) -> None:
    """`--rerun 1,3` submits only those tasks of the same n (+ a merge); a CPU request larger than the partition's
    largest node stops with an error instead of pending forever; a task index outside n is refused."""
    (tmp_path / "sbatch").write_text(FAKE_SBATCH)
    (tmp_path / "sinfo").write_text('#!/bin/bash\necho 2\necho "4+"\n')  # CPUs of the partition's nodes
    for f in ("sbatch", "sinfo"):
        (tmp_path / f).chmod(0o755)
    log = tmp_path / "sbatch.log"
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin", "FAKE_LOG": str(log), "LP_PREP_TASKS": "4"}
    cmd = ["bash", str(REPO / "slurm" / "submit_prep.sh")]
    res = subprocess.run(
        [*cmd, "--rerun", "1,3", "output.dir=/s"], env=env, capture_output=True, text=True, cwd=tmp_path
    )
    assert res.returncode == 0, res.stderr
    array, merge = log.read_text().splitlines()
    assert "--array=1,3" in array.split() and "--dependency=afterok:101" in merge
    res = subprocess.run([*cmd, "--rerun", "4", "x=1"], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "task 4 is not in 0..3" in res.stderr
    big = {**env, "LP_SBATCH_ARGS": "--cpus-per-task=16"}
    res = subprocess.run([*cmd, "x=1"], env=big, capture_output=True, text=True, cwd=tmp_path)
    assert res.returncode == 2 and "16 CPUs per task requested, the largest node of the partition has 4" in res.stderr
    assert len(log.read_text().splitlines()) == 2  # nothing more was submitted


def test_prep_array_passes_its_task_explicitly(tmp_path: Path) -> None:
    """A re-run of task 1 alone (`--array=1`: SLURM says 1 task) still curates slice 1 of LP_PREP_TASKS=4, with the
    task's CPUs passed to srun (Slurm >= 22.05 does not inherit them)."""
    env = {"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "1", "LP_PREP_TASKS": "4", "SLURM_CPUS_PER_TASK": "3"}
    argv = run_with_fake_slurm(tmp_path, "prep_array.sbatch", ["output.dir=/s"], **env)[1:]
    assert argv[:1] == ["--cpus-per-task=3"]
    assert argv[argv.index("lp-prep") + 1 :] == [
        "mode=run",
        "workers=3",
        "task.index=1",
        "task.count=4",
        "output.dir=/s",
    ]


def test_eval_script_gives_each_task_its_torch_rank(tmp_path: Path) -> None:
    """eval.sbatch maps srun's per-task SLURM_PROCID/NTASKS/LOCALID to RANK/WORLD_SIZE/LOCAL_RANK for lp-eval."""
    (tmp_path / "srun").write_text(  # runs the command as task 3 of 4 (local id 1), like srun on a 2x2 allocation
        '#!/bin/bash\nwhile [[ "$1" == --* ]]; do shift; done\n'
        'SLURM_PROCID=3 SLURM_NTASKS=4 SLURM_LOCALID=1 "$@" > "$FAKE_LOG"\n'
    )
    (tmp_path / "scontrol").write_text(FAKE_SCONTROL)
    for f in ("srun", "scontrol"):
        (tmp_path / f).chmod(0o755)
    env = {
        "PATH": f"{tmp_path}:/usr/bin:/bin",
        "FAKE_LOG": str(tmp_path / "env.txt"),
        "SLURM_JOB_ID": "7",
        "SLURM_JOB_NODELIST": "gpu[01-02]",
        "LP_EVAL_CMD": "env",
    }
    res = subprocess.run(["bash", str(REPO / "slurm" / "eval.sbatch")], env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    seen = dict(line.split("=", 1) for line in (tmp_path / "env.txt").read_text().splitlines() if "=" in line)
    assert (seen["RANK"], seen["WORLD_SIZE"], seen["LOCAL_RANK"]) == ("3", "4", "1")
    assert (seen["MASTER_ADDR"], seen["MASTER_PORT"]) == ("gpu01", "15007")


def test_cluster_harness_explains_why_slurm_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where SLURM is missing and cannot be installed, the slurm tier skips with the reason (never passes silently)."""
    import slurm_cluster

    monkeypatch.setattr(slurm_cluster.shutil, "which", lambda name: None)
    monkeypatch.setattr(slurm_cluster.Path, "exists", lambda self: False)
    monkeypatch.setattr(slurm_cluster.os, "geteuid", lambda: 1000)
    with pytest.raises(slurm_cluster.SlurmUnavailable, match="not root, cannot apt-get install"):
        slurm_cluster.ensure_installed()
    with pytest.raises(slurm_cluster.SlurmUnavailable, match="apt install disabled"):
        slurm_cluster.ensure_installed(allow_apt=False)
    conf = slurm_cluster.SLURM_CONF.format(root="/r", ctld_port=1, slurmd_port=2, munge_socket="/m", cpus=2, mem_mb=1)
    assert "NodeName=localhost NodeAddr=127.0.0.1 CPUs=2" in conf and "PartitionName=debug" in conf


def test_train_config_accepts_the_overrides_train_sbatch_adds() -> None:
    """train.sbatch's topology / signal overrides name real keys of conf/train.yaml (a rename fails here, not on 16
    nodes)."""
    overrides = [
        "experiment=stage1_paper",
        "trainer.num_nodes=16",
        "trainer.devices=8",
        "callbacks.model_checkpoint.signals=[SIGTERM,SIGUSR1,SIGUSR2]",
    ]
    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices) == (16, 8)
    assert list(cfg.callbacks.model_checkpoint.signals) == ["SIGTERM", "SIGUSR1", "SIGUSR2"]
    assert cfg.resume == "auto", "a requeued job resumes only with resume=auto"


def test_cluster_config_tests_pass_without_slurm_on_path(tmp_path: Path) -> None:
    """A fresh machine has no ``srun``/``sbatch``: this file's tests must pass there too (they once passed only where
    an earlier ``make test-slurm`` had installed SLURM). Runs them in a subprocess with every SLURM binary's folder
    removed from PATH."""
    slurm_bins = {"srun", "sbatch", "scontrol", "squeue", "salloc", "scancel", "sinfo"}
    path = [str(Path(sys.executable).parent)]
    for i, d in enumerate(os.environ.get("PATH", "").split(os.pathsep)):
        if not d or not Path(d).is_dir():
            continue
        if not any((Path(d) / b).exists() for b in slurm_bins):
            path.append(d)
            continue
        # a folder that also holds bash, python, ffmpeg (e.g. /usr/bin): the same tools, SLURM's left out
        shadow = tmp_path / f"bin{i}"
        shadow.mkdir()
        for tool in Path(d).iterdir():
            if tool.name not in slurm_bins:
                (shadow / tool.name).symlink_to(tool)
        path.append(str(shadow))
    env = {**os.environ, "PATH": os.pathsep.join(path)}
    assert subprocess.run(["bash", "-c", "command -v srun sbatch"], env=env, capture_output=True).returncode != 0
    (tmp_path / "run").mkdir()
    res = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(Path(__file__)),
         "-k", "not without_slurm_on_path", "-m", "not slurm"],
        env=env, cwd=tmp_path / "run", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert res.returncode == 0, res.stdout[-4000:] + res.stderr[-2000:]
    assert " passed" in res.stdout and "skipped" not in res.stdout.splitlines()[-1], res.stdout[-2000:]
