"""Exactly-once curation: SIGKILL mid-run + rerun gives the same shards as an uninterrupted run; crashes between
shard rename and journal write, torn journal lines, worker pools and SLURM array slices change nothing."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import skimage.data
from data_prep_fixtures import make_cfg, read_shard, shard_digests, write_face_clip
from PIL import Image

from data_prep.cli import execute
from data_prep.run import task_of
from data_prep.writer import Journal

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = (
    "data_prep/filters=tiny", "data_prep/output=tiny", "output.max_shard_samples=2", "output.chunk_frames=4",
)  # fmt: skip


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """5 synthetic face clips (16 frames) + 3 stills -> 23 samples, 12 shards of <= 2 samples."""
    d = tmp_path_factory.mktemp("resume_raw")
    for i in range(5):
        write_face_clip(d / f"person{i}" / f"clip{i}.mp4", n=16, fps=10, size=224, face_px=90 + 5 * i, seed=i)
    astro = skimage.data.astronaut()
    for i in range(3):
        Image.fromarray(astro[:, 30 * i : 30 * i + 400]).save(d / f"still{i}.jpg", quality=92)
    return d


@pytest.fixture(scope="module")
def reference(raw, tmp_path_factory) -> Path:
    """An uninterrupted single-process run."""
    out = tmp_path_factory.mktemp("resume_ref")
    summary = execute(make_cfg(out, *OVERRIDES, paths=[raw]))
    assert summary["samples"] == 23 and summary["shards"] == 12
    return out


def _merge(out: Path) -> dict:
    cfg = make_cfg(out, *OVERRIDES, "mode=merge")
    execute(cfg)  # raises on duplicate keys or a missing shard
    return json.loads((out / "index.json").read_text())


def _keys(out: Path) -> list[str]:
    return [k for shard in sorted((out / "shards").glob("*.tar")) for k in read_shard(shard)]


def test_sigkill_then_rerun_gives_identical_shards(raw, reference, tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "data_prep", f"output.dir={out}", f"inputs.paths=[{raw}]", *OVERRIDES]
    log = open(tmp_path / "run.log", "wb")
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    journal = out / "journal" / "faces.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and sum('"shard": "faces-' in line for line in journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run finished before it could be killed: " + (tmp_path / "run.log").read_text()
    os.killpg(proc.pid, signal.SIGKILL)  # the whole job, like SLURM cancelling it
    proc.wait()
    records = Journal(journal).records
    assert not any(r["type"] == "done" for r in records)
    committed = len(Journal(journal).shards())
    assert 3 <= committed < 12
    # rerun (with a worker pool this time): finishes the job
    summary = execute(make_cfg(out, *OVERRIDES, "workers=2", paths=[raw]))
    assert summary["shards"] == 12
    assert shard_digests(out / "shards") == shard_digests(reference / "shards")  # byte-identical shard set
    keys = _keys(out)
    assert len(keys) == len(set(keys)) == 23
    assert _merge(out)["shards"] == _merge(reference)["shards"]
    assert not list((out / "shards").glob("*.tmp"))


def test_crash_between_rename_and_journal_and_torn_line(raw, reference, tmp_path, monkeypatch):
    """Crash right after a shard was renamed (before its journal line), leaving a torn line too: the orphan shard
    is rewritten, the partial input resumes after its committed samples."""
    out = tmp_path / "crash"
    real_append = Journal.append
    calls = {"n": 0}

    def crashing_append(self, record):
        if record.get("shard"):
            calls["n"] += 1
            if calls["n"] == 4:
                with open(self.path, "a") as f:
                    f.write('{"type": "commit", "shard": "faces-0000')  # torn write
                raise KeyboardInterrupt("simulated crash")
        real_append(self, record)

    monkeypatch.setattr(Journal, "append", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        execute(make_cfg(out, *OVERRIDES, paths=[raw]))
    assert (out / "shards" / "faces-000003.tar").exists()  # renamed but not journalled: an orphan
    last = Journal(out / "journal" / "faces.jsonl").last_shard_commit()
    assert last["index"] == 2 and last["partial"]["written"] == 2  # clip1 is split across shards 2 and 3
    monkeypatch.setattr(Journal, "append", real_append)
    execute(make_cfg(out, *OVERRIDES, paths=[raw]))
    assert shard_digests(out / "shards") == shard_digests(reference / "shards")
    # a finished task reruns as a no-op
    again = execute(make_cfg(out, *OVERRIDES, paths=[raw]))
    assert again["samples"] == 0 and shard_digests(out / "shards") == shard_digests(reference / "shards")


def test_changed_config_refuses_to_resume(raw, reference):
    with pytest.raises(RuntimeError, match="different config"):
        execute(make_cfg(reference, *OVERRIDES, "crop.scale=2.0", paths=[raw]))


def test_slurm_array_slices_merge_to_the_same_samples(raw, reference, tmp_path, monkeypatch):
    out = tmp_path / "array"
    for k in range(3):  # task index from the SLURM environment, as in an sbatch --array=4-6 job
        monkeypatch.setenv("SLURM_ARRAY_TASK_ID", str(4 + k))
        monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "4")
        monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "3")
        cfg = make_cfg(out, *OVERRIDES, paths=[raw])
        assert task_of(cfg) == (k, 3)
        execute(cfg)
    names = sorted(p.name for p in (out / "shards").glob("*.tar"))
    assert {n[: len("faces-t0000")] for n in names} == {"faces-t0000", "faces-t0001", "faces-t0002"}
    index = _merge(out)
    assert index["num_samples"] == 23 and not index["incomplete_tasks"] and len(index["tasks"]) == 3
    assert sorted(_keys(out)) == sorted(_keys(reference))
    # same frames for the same key, whichever task wrote it
    ref = {k: v for s in sorted((reference / "shards").glob("*.tar")) for k, v in read_shard(s).items()}
    arr = {k: v for s in sorted((out / "shards").glob("*.tar")) for k, v in read_shard(s).items()}
    assert all(ref[k]["0000.jpg"] == arr[k]["0000.jpg"] for k in ref)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["inputs"] == 8 and report["samples"] == 23


def test_task_of_validates(monkeypatch):
    monkeypatch.delenv("SLURM_ARRAY_TASK_ID", raising=False)
    monkeypatch.delenv("SLURM_ARRAY_TASK_COUNT", raising=False)
    cfg = make_cfg(Path("/tmp/unused"))
    assert task_of(cfg) == (0, 1)
    cfg.task.index, cfg.task.count = 2, 2
    with pytest.raises(ValueError, match="task index 2"):
        task_of(cfg)


def test_pool_survives_a_worker_dying():
    from data_prep_crashy import job

    from data_prep.pool import ordered_map

    out = list(ordered_map(job, [1, 2, "boom", 3, 4, 5, 6], workers=2, on_crash=lambda x: f"crashed:{x}"))
    assert out == [2, 4, "crashed:boom", 6, 8, 10, 12]
