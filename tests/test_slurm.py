"""SLURM tier: the sbatch scripts and the submitit launcher against a real one-node SLURM cluster.

`make test-slurm` (= ``pytest -m slurm``). The session fixture installs slurm-wlm + munge if needed (root + apt),
starts a private cluster on localhost (2 CPUs, partition ``debug``) and tears it down at the end; where SLURM cannot
be installed or started every test here skips with the reason. Jobs are tiny CPU configurations.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import yaml
from slurm_cluster import LocalSlurmCluster, SlurmUnavailable, start_cluster

from lp_train.runinfo import sweep_group

pytestmark = [pytest.mark.slurm, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = str(Path(sys.executable).parent)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[LocalSlurmCluster]:
    """A running one-node cluster; skipped (with the reason) where SLURM cannot be installed or started."""
    try:
        cluster = start_cluster(cpus=2)
    except SlurmUnavailable as e:
        pytest.skip(f"no local SLURM cluster: {e}")
    yield cluster
    cluster.stop(remove=os.environ.get("LP_SLURM_KEEP") != "1")


def job_env(**extra: str) -> dict[str, str]:
    """Environment for submitted jobs: the venv's programs first on PATH, wandb offline."""
    return {
        "PATH": f"{VENV_BIN}:{os.environ.get('PATH', '')}",
        "WANDB_MODE": "offline",
        "WANDB_SILENT": "true",
        **extra,
    }


def wait_for(cond, timeout: float, what: str, poll: float = 0.5):  # noqa: ANN001, ANN201
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")


FACES = REPO.parent / "shared" / "data" / "faces"
PREP_TINY = [
    f"inputs.paths=[{FACES}]",
    "data_prep/detector=tiny",
    "data_prep/filters=tiny",
    "data_prep/output=tiny",
    "decode.max_frames=8",
]


# Stage 1 at its tiny CPU size as 2 DDP ranks (gloo), the way train.sbatch runs it on GPUs.
TRAIN_TINY = [
    "experiment=stage1_tiny",
    "trainer=ddp",
    "trainer.accelerator=cpu",
    "trainer.precision=32-true",
    "trainer.enable_progress_bar=false",
    "trainer.log_every_n_steps=1",
]


def require_cli(name: str) -> str:
    """Path of a console script of this checkout; skip (dependency not written yet) if it is not installed."""
    path = Path(VENV_BIN) / name
    if not path.exists():
        pytest.skip(f"{name} is not installed in {VENV_BIN} (its package is missing): cannot run it on the cluster")
    return str(path)


def sbatch_cpu(tmp_path: Path, ntasks: int = 2) -> list[str]:
    """sbatch options that fit the GPU-node script to the 2-CPU test node."""
    return [
        f"--ntasks-per-node={ntasks}",
        "--gpus-per-node=0",
        "--cpus-per-task=1",
        "--time=30",
        f"--output={tmp_path}/%x-%j.out",
    ]


def read_ckpt(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=False)  # our own Lightning checkpoint (RNG states)


def job_log(tmp_path: Path, job_id: str) -> str:
    logs = list(tmp_path.glob(f"*-{job_id}.out"))
    return logs[0].read_text(errors="replace") if logs else ""


def wait_running_until(cluster: LocalSlurmCluster, job_id: str, cond, timeout: float) -> None:  # noqa: ANN001
    """Wait for ``cond()`` while the job is pending/running; fail at once if the job ends first."""

    def check() -> bool:
        if cond():
            return True
        state = cluster.job_state(job_id).get("JobState", "")
        assert state in {"PENDING", "RUNNING", "CONFIGURING"}, f"job {job_id} is {state} before the condition held"
        return False

    wait_for(check, timeout, f"progress of job {job_id}")


def test_cluster_runs_srun_and_requeues(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """The harness itself: 2 ranks under srun; a batch job that is requeued comes back after its BeginTime release."""
    res = slurm_cluster.run("srun", "-n", "2", "bash", "-c", "echo $SLURM_PROCID/$SLURM_NTASKS")
    assert sorted(res.stdout.split()) == ["0/2", "1/2"]

    script = tmp_path / "loop.sbatch"
    script.write_text(
        "#!/bin/bash\n#SBATCH --requeue\n#SBATCH --open-mode=append\n"
        f'echo "start restart=${{SLURM_RESTART_COUNT:-0}}" >> {tmp_path}/events\n'
        f'if [ "${{SLURM_RESTART_COUNT:-0}}" = 0 ]; then sleep 300; fi\n'
    )
    jid = slurm_cluster.sbatch(f"--output={tmp_path}/loop-%j.out", str(script))
    wait_for(lambda: (tmp_path / "events").exists(), 60, "the job to start")
    slurm_cluster.run("scontrol", "requeue", jid)
    slurm_cluster.wait_requeued(jid)
    slurm_cluster.release_requeued(jid)
    slurm_cluster.wait(jid, 120)
    assert (tmp_path / "events").read_text().split("\n")[:2] == ["start restart=0", "start restart=1"]


def test_train_sbatch_runs_ddp_world_size_2(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """`sbatch slurm/train.sbatch` (tiny CPU stage 1, 2 tasks): completes, DDP world size 2, checkpoint written."""
    require_cli("lp-train")
    run_dir = tmp_path / "run"
    overrides = [*TRAIN_TINY, "trainer.max_steps=4", "callbacks.model_checkpoint.every_n_train_steps=2"]
    jid = slurm_cluster.sbatch(
        *sbatch_cpu(tmp_path), str(REPO / "slurm" / "train.sbatch"), *overrides, env=job_env(LP_RUN_DIR=str(run_dir))
    )
    try:
        slurm_cluster.wait(jid, 600)
    finally:
        log = job_log(tmp_path, jid)
    assert "MEMBER: 1/2" in log and "MEMBER: 2/2" in log, log[-3000:]
    assert "Starting with 2 processes" in log
    info = json.loads((run_dir / "runinfo.json").read_text())
    assert info["slurm"]["job_id"] == jid and info["slurm"]["ntasks"] == "2"
    assert info["config"]["trainer"]["devices"] == 2 and info["config"]["trainer"]["num_nodes"] == 1
    ckpt = read_ckpt(run_dir / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert (run_dir / "checkpoints" / "step00000002.ckpt").exists() and (run_dir / "model.pt").exists()


@pytest.mark.parametrize("trigger", ["sigusr1", "scontrol_requeue"])
def test_preempted_training_requeues_and_resumes(
    slurm_cluster: LocalSlurmCluster, tmp_path: Path, trigger: str
) -> None:
    """Preemption mid-run -> checkpoint, job requeued (same id), released, resumed from that step to the end.

    ``sigusr1`` is SLURM's time-limit warning (``--signal=B:USR1@90``, sent now with ``scancel --batch --signal``):
    train.sbatch asks the ranks to checkpoint and stop, then requeues the job. ``scontrol_requeue`` is an admin or
    scheduler requeue: SLURM sends SIGTERM, the run checkpoints before it is killed and SLURM queues it again.
    """
    require_cli("lp-train")
    run_dir = tmp_path / "run"
    overrides = [*TRAIN_TINY, "trainer.max_steps=8", "callbacks.model_checkpoint.every_n_train_steps=2"]
    jid = slurm_cluster.sbatch(
        *sbatch_cpu(tmp_path), str(REPO / "slurm" / "train.sbatch"), *overrides, env=job_env(LP_RUN_DIR=str(run_dir))
    )
    ckpts = run_dir / "checkpoints"
    try:
        wait_running_until(slurm_cluster, jid, lambda: (ckpts / "step00000002.ckpt").exists(), 600)
        if trigger == "sigusr1":
            slurm_cluster.run("scancel", "--batch", "--signal=USR1", jid)
        else:
            slurm_cluster.run("scontrol", "requeue", jid)
        slurm_cluster.wait_requeued(jid)  # PENDING, Restarts=1, Reason=BeginTime
        preempted_step = read_ckpt(ckpts / "last.ckpt")["global_step"]
        assert 2 <= preempted_step < 8, preempted_step
        slurm_cluster.release_requeued(jid)
        slurm_cluster.wait(jid, 600)
    finally:
        log = job_log(tmp_path, jid)
    assert slurm_cluster.job_state(jid)["Restarts"] == "1"
    assert "restart 1 on" in log and f"resume=auto: resuming from {ckpts}/last.ckpt" in log, log[-4000:]
    if trigger == "sigusr1":  # the script forwarded SIGUSR2 to the ranks and requeued the job itself
        assert "signal 12 received: checkpointing step" in log and f"requeueing job {jid} to resume" in log
    else:  # SLURM's SIGTERM on requeue
        assert "signal 15 received: checkpointing step" in log
    assert read_ckpt(ckpts / "last.ckpt")["global_step"] == 8
    restarts = [
        json.loads(x)["slurm"].get("restart_count") for x in (run_dir / "runinfo.jsonl").read_text().splitlines()
    ]
    assert restarts == [None, "1"]
    # the CSV logger writes one version per (re)start: the second one must continue at the preempted step
    versions = sorted((run_dir / "csv").glob("version_*/metrics.csv"))
    assert len(versions) == 2, versions
    steps = [[int(r.split(",")[1]) for r in v.read_text().splitlines()[1:]] for v in versions]
    assert steps[0][0] == 0 and steps[1] == list(range(preempted_step, 8)), f"steps logged per start: {steps}"


def shard_members(out_dir: Path) -> dict[str, str]:
    """Every member of every shard under ``out_dir/shards``: name -> sha256 of its bytes."""
    members: dict[str, str] = {}
    for shard in sorted((out_dir / "shards").glob("*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf.getmembers():
                assert m.name not in members, f"duplicate member {m.name} in {shard}"
                members[m.name] = hashlib.sha256(tf.extractfile(m).read()).hexdigest()
    return members


@pytest.fixture(scope="module")
def single_process_curation(tmp_path_factory) -> Path:
    """The reference: the same curation as one process (no SLURM)."""
    if not FACES.is_dir():
        pytest.skip(f"test data {FACES} not found (../shared/data/faces beside the repo)")
    lp_prep = require_cli("lp-prep")
    single = tmp_path_factory.mktemp("prep") / "single"
    res = subprocess.run([lp_prep, *PREP_TINY, f"output.dir={single}"], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return single


def test_prep_array_with_dependent_merge_matches_single_process(
    slurm_cluster: LocalSlurmCluster, tmp_path: Path, single_process_curation: Path
) -> None:
    """Curation as a 2-task job array + afterok merge gives exactly the samples of a single-process run."""
    single = single_process_curation

    array_dir, logs = tmp_path / "array", tmp_path / "logs"
    logs.mkdir()
    env = job_env(LP_PREP_TASKS="2", LP_PREP_WORKERS="1", LP_SBATCH_ARGS=f"--cpus-per-task=1 --output={logs}/%x-%j.out")
    res = subprocess.run(
        [str(REPO / "slurm" / "submit_prep.sh"), *PREP_TINY, f"output.dir={array_dir}"],
        env={**slurm_cluster.env, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr
    ids = dict(kv.split("=") for kv in res.stdout.split())
    merge_state = slurm_cluster.job_state(ids["merge"])
    assert merge_state["Dependency"].startswith(f"afterok:{ids['array']}_*") or merge_state["JobState"] != "PENDING"

    slurm_cluster.wait(ids["merge"], 600)
    tasks = slurm_cluster.run("scontrol", "show", "job", "-o", ids["array"]).stdout.splitlines()
    assert len(tasks) == 2 and all("JobState=COMPLETED" in t for t in tasks), tasks
    assert {p.name.split("-")[1] for p in (array_dir / "shards").glob("*.tar")} == {"t0000", "t0001"}

    want, got = shard_members(single), shard_members(array_dir)
    assert len(want) > 20 and got == want, f"{len(want)} vs {len(got)} members; differ: {set(want) ^ set(got)}"
    index = json.loads((array_dir / "index.json").read_text())
    single_samples = sum(1 for name in want if name.endswith(".json"))
    assert index["num_samples"] == single_samples and index["incomplete_tasks"] == [] == index["missing_tasks"]
    assert {t["prefix"] for t in index["tasks"]} == {"faces-t0000", "faces-t0001"}


def test_prep_array_task_rerun_recovers_and_the_merge_refuses_missing_tasks(
    slurm_cluster: LocalSlurmCluster, tmp_path: Path, single_process_curation: Path
) -> None:
    """Task 1 of 2 never ran: the merge job refuses (fails, naming task 1) instead of indexing half the data.
    `submit_prep.sh --rerun 1` runs exactly slice 1 of 2 (before: `sbatch --array=1` ran "task 0 of 1", re-curated
    everything and the merge failed on duplicate keys) and its merge equals a single-process run."""
    require_cli("lp-prep")
    out, logs = tmp_path / "array", tmp_path / "logs"
    logs.mkdir()
    env = {**slurm_cluster.env, **job_env(LP_PREP_TASKS="2", LP_PREP_WORKERS="1",
                                          LP_SBATCH_ARGS=f"--cpus-per-task=1 --output={logs}/%x-%j.out")}  # fmt: skip
    submit = [str(REPO / "slurm" / "submit_prep.sh")]
    overrides = [*PREP_TINY, f"output.dir={out}"]

    def submit_tasks(task: str) -> dict[str, str]:
        res = subprocess.run([*submit, "--rerun", task, *overrides], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=60)  # fmt: skip
        assert res.returncode == 0, res.stderr
        return dict(kv.split("=") for kv in res.stdout.split())

    first = submit_tasks("0")  # as if task 1 had been lost
    slurm_cluster.wait(first["array"], 600)
    slurm_cluster.wait(first["merge"], 600, states=("FAILED",))
    merge_log = (logs / f"lp-prep-merge-{first['merge']}.out").read_text()
    assert "merge refused: array tasks missing [1]" in merge_log, merge_log[-2000:]
    assert not (out / "index.json").exists()

    again = submit_tasks("1")
    slurm_cluster.wait(again["merge"], 600)
    task_log = next(logs.glob(f"lp-prep-{again['array']}.out")).read_text()
    assert "task 1 of 2" in task_log, task_log[-2000:]
    assert shard_members(out) == shard_members(single_process_curation)
    index = json.loads((out / "index.json").read_text())
    assert index["missing_tasks"] == [] == index["incomplete_tasks"]
    assert {t["prefix"] for t in index["tasks"]} == {"faces-t0000", "faces-t0001"}

    # a merge over missing outputs, by hand: refused unless allow_incomplete=true, which records them
    shutil.rmtree(out / "journal" / "faces-t0001.jsonl", ignore_errors=True)
    (out / "journal" / "faces-t0001.jsonl").unlink(missing_ok=True)
    lp_prep = require_cli("lp-prep")
    res = subprocess.run([lp_prep, "mode=merge", *overrides], capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "missing [1]" in res.stderr, res.stderr[-2000:]
    res = subprocess.run([lp_prep, "mode=merge", "allow_incomplete=true", *overrides], capture_output=True,
                         text=True, timeout=300)  # fmt: skip
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((out / "index.json").read_text())["missing_tasks"] == [1]


def wandb_run_record(run_dir: Path) -> dict[str, str]:
    """id/group/name of the (single) offline wandb run under ``run_dir/wandb``, read from its .wandb log."""
    from wandb.proto import wandb_internal_pb2
    from wandb.sdk.internal import datastore

    files = sorted(run_dir.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, f"expected one offline wandb run in {run_dir}, found {files}"
    ds = datastore.DataStore()
    ds.open_for_scan(str(files[0]))
    while (data := ds.scan_data()) is not None:
        rec = wandb_internal_pb2.Record()
        rec.ParseFromString(data)
        if rec.WhichOneof("record_type") == "run":
            return {"id": rec.run.run_id, "group": rec.run.run_group, "name": rec.run.display_name}
    raise AssertionError(f"no run record in {files[0]}")


def test_hydra_sweep_through_submitit_launcher(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """`lp-train -m hydra/launcher=slurm_local`, 2 members: SLURM array tasks, each its own wandb run, one group."""
    lp_train = require_cli("lp-train")
    sweep = tmp_path / "sweep"
    cmd = [
        lp_train,
        "-m",
        "hydra/launcher=slurm_local",
        f"hydra.sweep.dir={sweep}",
        "experiment=stage1_tiny",
        "trainer.max_steps=2",
        "trainer.enable_progress_bar=false",
        "module.optimizer_g.lr=1e-4,2e-4",
    ]
    env = {**slurm_cluster.env, **job_env()}
    env.pop("WANDB_RUN_ID", None)
    res = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=840)
    assert res.returncode == 0, (res.stdout + res.stderr)[-4000:]

    infos, runs = [], []
    for num, lr in ((0, 1e-4), (1, 2e-4)):
        member = sweep / str(num)
        assert read_ckpt(member / "checkpoints" / "last.ckpt")["global_step"] == 2
        assert yaml.safe_load((member / "config_resolved.yaml").read_text())["module"]["optimizer_g"]["lr"] == lr
        infos.append(json.loads((member / "runinfo.json").read_text()))
        runs.append(wandb_run_record(member))
    assert [i["hydra"]["job_num"] for i in infos] == [0, 1]
    assert {i["slurm"]["array_job_id"] for i in infos} == {infos[0]["slurm"]["array_job_id"]}  # one array
    assert sorted(i["slurm"]["array_task_id"] for i in infos) == ["0", "1"]
    assert runs[0]["id"] != runs[1]["id"], "each sweep member must be its own wandb run"
    assert runs[0]["group"] == runs[1]["group"] == sweep_group(infos[0]) != ""


def test_sweep_member_preempted_with_usr2_checkpoints_and_is_requeued(
    slurm_cluster: LocalSlurmCluster, tmp_path: Path
) -> None:
    """`scancel --signal=USR2` (submitit's preemption / time-limit signal) on a sweep member: lp-train checkpoints at
    the end of that step, then submitit requeues the member, which resumes from exactly that step and finishes; the
    `lp-train -m` command exits 0. Before: submitit's handler requeued at once without a checkpoint (the member
    resumed from the last periodic one) and the command exited 1."""
    lp_train = require_cli("lp-train")
    sweep = tmp_path / "sweep"
    cmd = [
        lp_train, "-m", "hydra/launcher=slurm_local", f"hydra.sweep.dir={sweep}", "experiment=stage1_tiny",
        "trainer.max_steps=40", "trainer.enable_progress_bar=false", "callbacks.model_checkpoint.every_n_train_steps=2",
        "callbacks.model_checkpoint.keep_last=0", "module.optimizer_g.lr=1e-4",
    ]  # fmt: skip
    env = {**slurm_cluster.env, **job_env()}
    env.pop("WANDB_RUN_ID", None)
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    member = sweep / "0"
    try:
        wait_for(lambda: (member / "checkpoints" / "step00000004.ckpt").exists() or proc.poll() is not None, 600,
                 "the member's step-4 checkpoint")  # fmt: skip
        assert proc.poll() is None, proc.stdout.read()[-4000:]
        jid = json.loads((member / "runinfo.json").read_text())["slurm"]["job_id"]
        slurm_cluster.run("scancel", "--signal=USR2", jid)
        slurm_cluster.wait_requeued(jid)
        slurm_cluster.release_requeued(jid)
        out, _ = proc.communicate(timeout=600)
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = "\n".join(p.read_text(errors="replace") for p in sorted(sweep.glob(".submitit/*/*.out")))
    assert proc.returncode == 0, out[-4000:] + logs[-4000:]
    signalled = [int(x.split("checkpointing step ")[1].split()[0]) for x in logs.splitlines()
                 if "signal 12 received: checkpointing step" in x]  # fmt: skip
    assert len(signalled) == 1 and 4 <= signalled[0] < 40, logs[-4000:]
    step = signalled[0]
    assert f"resuming from {member}/checkpoints/last.ckpt (step {step})" in logs, logs[-4000:]
    assert read_ckpt(member / "checkpoints" / "last.ckpt")["global_step"] == 40 and (member / "model.pt").exists()
    assert slurm_cluster.job_state(jid).get("Restarts") == "1"
    ids = {(member / "wandb_run_id").read_text().strip()}
    assert len(ids) == 1 and len(list((member / "wandb").glob(f"offline-run-*-{ids.pop()}"))) == 2  # one run id


def tiny_model_file(path: Path) -> Path:
    """A randomly initialised tiny LivePortrait saved as our model file (what lp-train exports)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from lp_train.checkpoint import save_model

    with initialize_config_dir(str(REPO / "conf"), version_base="1.3"):
        cfg = compose("train", overrides=["model=tiny", "hydra.run.dir=.", "paths.output_dir=."])
    torch.manual_seed(0)
    save_model(instantiate(cfg.model), path, OmegaConf.to_container(cfg.model, resolve=True))
    return path


def test_eval_sbatch_runs_distributed_eval(slurm_cluster: LocalSlurmCluster, tmp_path: Path) -> None:
    """`sbatch slurm/eval.sbatch` with 2 tasks: both protocols split over 2 ranks, rank 0 writes the reports."""
    require_cli("lp-eval")
    if not FACES.is_dir():
        pytest.skip(f"test data {FACES} not found (../shared/data/faces beside the repo)")
    model = tiny_model_file(tmp_path / "model.pt")
    out = tmp_path / "eval"
    args = [
        "model=tiny",
        f"checkpoint={model}",
        "eval/data=faces",
        f"eval.data.videos={FACES}/videos",
        f"eval.data.sources={FACES}/images",
        "eval/protocols=tiny",
        "eval/metrics=tiny",
        "weights=random",
        "device=cpu",
        f"out_dir={out}",
    ]
    jid = slurm_cluster.sbatch(*sbatch_cpu(tmp_path), str(REPO / "slurm" / "eval.sbatch"), *args, env=job_env())
    try:
        slurm_cluster.wait(jid, 600)
    finally:
        log = job_log(tmp_path, jid)
    # protocols.tiny has 2 videos: with world size 2 each rank's progress bar counts 1 of them (rank 0 shows its bar)
    assert "self-reenactment: 100%|██████████| 1/1" in log, log[-3000:]
    rows = (out / "self_reenactment" / "per_video.csv").read_text().splitlines()
    assert len(rows) == 3, rows  # header + one video from each rank
    summary = json.loads((out / "summary.json").read_text())
    assert summary and json.loads((out / "runinfo.json").read_text())["slurm"]["ntasks"] == "2"
