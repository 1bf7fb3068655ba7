"""Run control of ``lp-train`` and the error surface of every CLI: resume by the highest global step (read from the
checkpoints, not their file times; unreadable ones skipped), a deterministic run folder that a re-run resumes, exit
status 128+N for a run stopped early by a signal, wandb dying under SIGTERM, one-line user errors (exit 2) and
shareable (0644) checkpoint files."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from train_helpers import FAST, compose_train

from lp_train.checkpoint import save_model
from lp_train.ckpt_cli import main as ckpt_main
from lp_train.fileio import atomic_torch_save, atomic_write_text
from lp_train.lit.checkpointing import AtomicCheckpointIO, checkpoint_step, find_resume_checkpoint
from lp_train.train import train

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


class SignalAt(L.Callback):
    """Sends ``sig`` to this process at the start of training step ``step`` (0-based); with ``kill_children`` first
    SIGTERMs every child process too (wandb's service), as SLURM does to all processes of a job."""

    def __init__(self, step: int, sig: int, kill_children: bool = False):
        self.step, self.sig, self.kill_children = step, sig, kill_children

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        if trainer.global_step == self.step:
            if self.kill_children:
                for pid in _children(os.getpid()):
                    os.kill(pid, signal.SIGTERM)
            os.kill(os.getpid(), self.sig)


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _probe(step: int, sig: int, **kw) -> str:
    extra = "".join(f", {k}: {str(v).lower()}" for k, v in kw.items())
    return f"+callbacks.signal={{_target_: test_run_control.SignalAt, step: {step}, sig: {int(sig)}{extra}}}"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A 6-step run: checkpoints/step00000004.ckpt (periodic) and last.ckpt (final, step 6), and model.pt."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(compose_train(run, "trainer.max_steps=6", "callbacks.model_checkpoint.every_n_train_steps=4"))
    return run


def test_copied_run_resumes_from_its_highest_step_whatever_the_file_times(finished_run, tmp_path, caplog):
    """`cp -r` (new mtimes), then last.ckpt made the oldest file: resume=auto still picks step 6; with last.ckpt
    truncated it warns naming it and falls back to the newest intact checkpoint (step 4), and training resumes
    there. Before: the newest mtime won (step00000004.ckpt), and a truncated last.ckpt stopped the run."""
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(finished_run), str(copy)], check=True)
    ckpts = copy / "checkpoints"
    os.utime(ckpts / "last.ckpt", (1_000_000, 1_000_000))  # 1970: the oldest file of the folder
    assert {p.name: checkpoint_step(p) for p in ckpts.glob("*.ckpt")} == {"last.ckpt": 6, "step00000004.ckpt": 4}
    assert find_resume_checkpoint(copy) == ckpts / "last.ckpt"

    last = ckpts / "last.ckpt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])  # a disk that filled up mid-copy
    with caplog.at_level(logging.WARNING, logger="lp_train.lit.checkpointing"):
        assert find_resume_checkpoint(copy) == ckpts / "step00000004.ckpt"
    assert f"skipping {last}: unreadable checkpoint" in caplog.text

    shutil.rmtree(copy / "csv")
    resumed = train(compose_train(copy, "trainer.max_steps=6", "trainer.log_every_n_steps=1"))
    assert resumed["trainer"].global_step == 6 and resumed["stopped_by"] is None
    rows = (copy / "csv" / "version_0" / "metrics.csv").read_text().splitlines()[1:]
    assert sorted({int(r.split(",")[1]) for r in rows}) == [4, 5], rows  # steps 5 and 6 (0-based 4, 5) retrained


def test_no_readable_checkpoint_means_a_fresh_start(tmp_path, caplog):
    (tmp_path / "checkpoints").mkdir()
    assert find_resume_checkpoint(tmp_path) is None
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"not a checkpoint")
    (tmp_path / "hpc_ckpt_1.ckpt").write_bytes(b"")
    with caplog.at_level(logging.WARNING):
        assert find_resume_checkpoint(tmp_path) is None
    assert "last.ckpt: unreadable checkpoint" in caplog.text and "hpc_ckpt_1.ckpt: unreadable" in caplog.text


def _lp_train(runs: Path, *overrides: str, wandb: bool = False) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LP_DEBUG", "WANDB_RUN_ID")}
    env.update(LP_RUNS_DIR=str(runs), PYTHONPATH=str(ROOT / "tests"), WANDB_MODE="offline", OMP_NUM_THREADS="1",
               WANDB_SILENT="true")  # fmt: skip
    cmd = [str(BIN / "lp-train"), *FAST, *([] if wandb else ["~logger.wandb"]), *overrides]
    return subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


def test_sigterm_before_max_steps_exits_143_and_the_same_command_resumes(tmp_path):
    """SIGTERM during step 2 of 4: checkpoint at step 2, no model.pt, exit 128+15 (before: exit 0, so
    `lp-train && lp-eval` went on). The run folder is runs/<name>: running the command again resumes from step 2
    (before: a new timestamped folder, from step 0)."""
    runs = tmp_path / "runs"
    cmd = ["name=ctl", "trainer.max_steps=4"]
    first = _lp_train(runs, *cmd, _probe(1, signal.SIGTERM))
    assert first.returncode == 128 + signal.SIGTERM, first.stderr[-3000:]
    run = runs / "ctl"
    assert "stopped by signal 15 at step 2" in first.stderr
    assert f"lp-train: run dir {run}; resume=auto: starting at step 0" in first.stdout
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 2 and not (run / "model.pt").exists()

    again = _lp_train(runs, *cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"resume=auto: resuming from {run}/checkpoints/last.ckpt (step 2)" in again.stdout
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 4 and (run / "model.pt").is_file()
    assert sorted(p.name for p in runs.iterdir()) == ["ctl"]


def test_sigterm_during_the_final_step_still_finishes_the_run(tmp_path):
    """A signal in the last step: the run is complete — model.pt written, not reported as stopped (exit 0)."""
    result = train(compose_train(tmp_path, "trainer.max_steps=2", _probe(1, signal.SIGTERM)))
    assert result["stopped_by"] is None and (tmp_path / "model.pt").is_file()
    assert checkpoint_step(tmp_path / "checkpoints" / "last.ckpt") == 2


def test_wandb_killed_by_sigterm_keeps_the_checkpoint_and_the_metrics(tmp_path):
    """SLURM's SIGTERM reaches wandb's service process too (here: killed with the run). Before: the next wandb call
    raised (connection reset), the run crashed after its checkpoint with a traceback and the CSV lost the step's
    row. Now: a warning, a clean signal stop (exit 143), the step's metrics in the CSV, one wandb id in the folder."""
    runs = tmp_path / "runs"
    probe = _probe(1, signal.SIGTERM, kill_children=True)
    res = _lp_train(runs, "name=w", "trainer.max_steps=4", "trainer.log_every_n_steps=1", "logger.wandb.offline=null",
                    probe, wandb=True)  # fmt: skip
    assert res.returncode == 128 + signal.SIGTERM, res.stderr[-3000:]
    out = res.stdout + res.stderr
    # (whether wandb makes another call on the dead connection before the stop, and so logs the reset as a warning,
    # depends on timing: on a loaded CI machine it may not; either way no traceback and a clean signal stop)
    assert "Traceback" not in out and "wandb" in out, out[-3000:]
    run = runs / "w"
    assert checkpoint_step(run / "checkpoints" / "last.ckpt") == 2
    rows = (run / "csv" / "version_0" / "metrics.csv").read_text().splitlines()
    assert sorted({int(r.split(",")[1]) for r in rows[1:]}) == [0, 1], rows
    run_id = (run / "wandb_run_id").read_text().strip()
    assert run_id and [p.name.endswith(run_id) for p in (run / "wandb").glob("offline-run-*")] == [True]


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_checkpoints_and_model_files_follow_the_umask(tmp_path, umask):
    """Atomic writes give the mode a plain open() would (0644 under umask 022); before: mkstemp's 0600."""
    old = os.umask(umask)
    try:
        save_model(torch.nn.Linear(2, 2), tmp_path / "model.pt")
        AtomicCheckpointIO().save_checkpoint({"global_step": 3}, tmp_path / "c" / "last.ckpt")
        atomic_torch_save({"a": 1}, tmp_path / "w.pt")
        atomic_write_text(tmp_path / "r.json", "{}")
    finally:
        os.umask(old)
    for name in ("model.pt", "c/last.ckpt", "w.pt", "r.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert checkpoint_step(tmp_path / "c" / "last.ckpt") == 3
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_lp_ckpt_inspect_of_a_pth_holding_a_list_is_one_clear_error(tmp_path, capsys):
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    assert ckpt_main(["inspect", str(tmp_path / "list.pth"), "--model", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "lp-ckpt: error:" in err and "holds a list" in err, err


def _run(prog: str, *args: str, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HYDRA_FULL_ERROR", "LP_DEBUG")}
    env.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", **(env_extra or {}))
    return subprocess.run([str(BIN / prog), *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)


CASES = {
    "train-shard-glob": ("lp-train", ["experiment=stage1_tiny", "~logger.wandb", "data=tiny", "module.image_every=0",
                                      "data.train_shards=/nonexistent/*.tar", "trainer.enable_progress_bar=false",
                                      "paths.output_dir=${oc.env:TMPDIR,/tmp}/lp-cli-err"], "matches no file"),
    "train-bad-value": ("lp-train", [*FAST, "~logger.wandb", "trainer.precision=17",
                                     "paths.output_dir=${oc.env:TMPDIR,/tmp}/lp-cli-err2"], "17 is invalid"),
    "train-bad-override": ("lp-train", ["no_such_key=1"], "no_such_key"),
    "eval-missing-checkpoint": ("lp-eval", ["model=tiny", "checkpoint=/nonexistent/model.pt", "weights=random",
                                            "out_dir=/tmp/lp-cli-err3"], "/nonexistent/model.pt"),
    "prep-bad-mode": ("lp-prep", ["mode=nope", "output.dir=/tmp/lp-cli-err5"], "mode must be run, merge or stats"),
    "animate-missing-checkpoint": ("lp-animate", ["model=tiny", "checkpoint=/nonexistent.pt", "source=/none.jpg",
                                                  "driving=/none.mp4", "hydra.run.dir=/tmp/lp-cli-err6"],
                                   "neither an existing file or folder nor a pretrained short name"),
    "animate-missing-source": ("lp-animate", ["model=tiny", "checkpoint=stage1_tiny_faces", "stitching=false",
                                              "source=/none.jpg", "driving=/none.mp4",
                                              "hydra.run.dir=/tmp/lp-cli-err7"], "not found"),
}  # fmt: skip


@pytest.mark.parametrize("case", sorted(CASES))
def test_cli_user_errors_are_one_line_and_exit_2(case):
    """Before: lp-train / lp-eval / lp-prep printed a 28-46 line Hydra traceback and exited 1."""
    prog, args, needle = CASES[case]
    res = _run(prog, *args)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert res.returncode == 2, res.stderr[-3000:]
    # the error is one line, the last one (Lightning's own start-up notes may come before it)
    assert len(errors) == 1 and lines[-1] == errors[0] and needle in errors[0], res.stderr[-3000:]
    assert "Traceback" not in res.stderr and "Error executing job" not in res.stderr


@pytest.mark.parametrize("how", ["--debug", "HYDRA_FULL_ERROR=1"])
def test_debug_shows_the_traceback(how):
    args = ["mode=nope", "output.dir=/tmp/lp-cli-err7"]
    if how == "--debug":
        res = _run("lp-prep", *args, "--debug")
    else:
        res = _run("lp-prep", *args, env_extra={"HYDRA_FULL_ERROR": "1"})
    assert res.returncode == 1 and "Traceback (most recent call last)" in res.stderr
    assert "ValueError: mode must be run, merge or stats" in res.stderr


def test_the_makefile_does_not_force_tracebacks():
    """make targets used to export HYDRA_FULL_ERROR=1, so every user error under make showed a traceback."""
    assert "HYDRA_FULL_ERROR" not in (ROOT / "Makefile").read_text()


@pytest.mark.parametrize(("mode", "offline"), [(None, True), ("offline", True), ("online", False)])
def test_wandb_follows_wandb_mode_and_keeps_one_run_id_per_folder(tmp_path, monkeypatch, mode, offline):
    """Before: `logger.wandb.offline: true` ignored WANDB_MODE=online, and every restart made a new wandb run."""
    from lp_train.train import _configure_wandb

    monkeypatch.delenv("WANDB_RUN_ID", raising=False)
    if mode is None:
        monkeypatch.delenv("WANDB_MODE", raising=False)
    else:
        monkeypatch.setenv("WANDB_MODE", mode)
    ids = []
    for _ in range(2):  # a first start and a restart of the same run folder
        cfg = compose_train(tmp_path, wandb=True)
        _configure_wandb(cfg, tmp_path)
        assert cfg.logger.wandb.offline is offline
        ids.append(cfg.logger.wandb.id)
    assert ids[0] == ids[1] == (tmp_path / "wandb_run_id").read_text().strip() and len(ids[0]) == 8
    forced = compose_train(tmp_path, "logger.wandb.offline=true", wandb=True)
    _configure_wandb(forced, tmp_path)
    assert forced.logger.wandb.offline is True
