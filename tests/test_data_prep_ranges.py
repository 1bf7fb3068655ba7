"""Time-ranged manifest rows: curation decodes exactly the frames of each range (checked against a full decode),
keys are stable and unique per range, and a crash + rerun still gives the shards of an uninterrupted run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from data_prep_fixtures import FACES, decode_jpeg, make_cfg, read_shard, shard_digests, write_face_clip

from data_prep.cli import execute
from data_prep.decode import VideoReader, frame_range
from data_prep.inputs import discover, parse_range
from data_prep.probe import probe_video
from data_prep.writer import Journal
from lp_train.data.shard_format import CROP_SIZE, SampleMeta
from lp_train.face.crop import warp_crop

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = ("data_prep/filters=tiny", "data_prep/output=tiny", "output.chunk_frames=8")


def _samples(out: Path) -> dict[str, dict]:
    return {k: v for s in sorted((out / "shards").glob("*.tar")) for k, v in read_shard(s).items()}


def test_parse_range_units_suffixes_and_errors():
    assert parse_range({"start": "1.5", "end": "3"}) == {"start": 1.5, "end": 3.0, "unit": "s"}
    assert parse_range({"start": "30f", "end": "45f"}) == {"start": 30.0, "end": 45.0, "unit": "frames"}
    assert parse_range({"start": 30, "end": 45, "unit": "frames"})["unit"] == "frames"
    assert parse_range({"start": "", "end": "2s"}) == {"start": None, "end": 2.0, "unit": "s"}
    assert parse_range({}) == {"start": None, "end": None, "unit": "s"}
    for bad, match in (
        ({"start": "2", "end": "1"}, "must be after start"),
        ({"start": "-1"}, ">= 0"),
        ({"start": "1.5", "end": "3", "unit": "frames"}, "integers"),
        ({"start": "10f", "unit": "s"}, "unit is s"),
        ({"start": "x"}, "must be a number"),
        ({"start": "1", "unit": "minutes"}, "unit must be"),
    ):
        with pytest.raises(ValueError, match=match):
            parse_range(bad, "m.csv row 1")


def test_frame_range_maps_seconds_and_frames():
    assert frame_range(1.0, 2.0, "s", 25.0, 25.0) == (25, 50)
    assert frame_range(30, 45, "frames", 30.0, 30.0) == (30, 45)
    assert frame_range(30, 45, "frames", 30.0, 10.0) == (10, 15)  # source frames -> seconds -> decoded frames
    assert frame_range(None, None, "s", 25.0, 25.0) == (0, None)


def test_ranges_of_one_file_are_distinct_inputs(tmp_path):
    clip = tmp_path / "long.mp4"
    clip.write_bytes(b"x")
    m = tmp_path / "m.csv"
    m.write_text(
        "path,identity,clip_id,start,end,unit\n"
        "long.mp4,a,c1,0,1.5,s\nlong.mp4,a,c2,1.5,3,s\nlong.mp4,a,c1b,0,1.5,s\nlong.mp4,a,,,,\nlong.mp4,a,c3,10,20,frames\n"
    )
    items = discover(manifest=str(m))
    ids = {it.id for it in items if not it.duplicate_of}
    assert len(items) == 5 and len(ids) == 4  # the same range listed twice is a duplicate, the rest are distinct
    dup = [it for it in items if it.duplicate_of]
    assert len(dup) == 1 and dup[0].clip_id == "c1b" and dup[0].uid.endswith(".dup1")
    whole = next(it for it in items if not it.range_tag)
    assert whole.id == discover([str(clip)])[0].id  # a whole-file row keeps the key of a scanned file
    assert [it.clip_id for it in items if not it.duplicate_of] == ["", "c1", "c2", "c3"]  # sorted by path, range
    assert discover(manifest=str(m))[1].id == items[1].id  # stable across listings


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    """3 s of a real talking-head clip at 160², re-encoded with one keyframe (seeking must decode from it)."""
    src = FACES / "videos" / "d0.mp4"
    if not src.is_file():
        pytest.skip(f"real test faces not found at {FACES} (../shared/data/faces)")
    out = tmp_path_factory.mktemp("ranges") / "talk.mp4"
    cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(src), "-t", "3", "-vf", "scale=160:160", "-an",
           "-c:v", "libx264", "-g", "250", "-bf", "2", "-pix_fmt", "yuv420p", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True)
    return out


def test_ranged_curation_keeps_exactly_the_frames_of_each_range(long_clip, tmp_path):
    m = tmp_path / "manifest.csv"
    m.write_text(
        "path,identity,dataset,clip_id,start,end,unit\n"
        f"{long_clip},p,corpus,sec,0.4,1.2,s\n"  # frames [10, 30) at 25 fps
        f"{long_clip},p,corpus,frm,45f,61f,\n"  # frames [45, 61)
    )
    summary = execute(make_cfg(tmp_path / "out", *OVERRIDES, manifest=m))
    assert summary["inputs"] == 2 and summary["frames"] == 20 + 16 and summary["frames_kept"] == 36
    samples = _samples(tmp_path / "out")
    by_clip: dict[str, list[SampleMeta]] = {}
    for s in samples.values():
        meta = SampleMeta.from_json(s["json"])
        by_clip.setdefault(meta.extra["clip_id"], []).append(meta)
    got = {c: sorted(i for meta in metas for i in meta.frame_indices) for c, metas in by_clip.items()}
    assert got == {"sec": list(range(10, 30)), "frm": list(range(45, 61))}
    assert by_clip["frm"][0].extra["range"] == {"start": 45.0, "end": 61.0, "unit": "frames"}
    prefixes = {meta.key.rsplit("_", 2)[0] for metas in by_clip.values() for meta in metas}
    assert len(prefixes) == 2  # one key prefix per range
    # every stored crop is the warp of the frame its index names in a full decode (not a neighbour)
    info = probe_video(str(long_clip))
    full = list(VideoReader(str(long_clip), info))
    for key, s in samples.items():
        meta = SampleMeta.from_json(s["json"])
        for i in (0, meta.num_frames - 1):
            crop = decode_jpeg(s[f"{i:04d}.jpg"]).astype(float)
            k = meta.frame_indices[i]
            diffs = [np.abs(warp_crop(full[j], np.array(meta.crop_affines[i]), CROP_SIZE) - crop).mean()
                     for j in (k - 1, k, k + 1)]  # fmt: skip
            assert diffs[1] < 3.0 and diffs[1] < min(diffs[0], diffs[2]), (key, i, diffs)
    # keys are derived from the path and the range only: listing the manifest again gives the same prefixes
    assert prefixes == {it.id for it in discover(manifest=str(m))}


def test_a_range_outside_the_video_is_skipped_with_its_reason(long_clip, tmp_path):
    m = tmp_path / "manifest.csv"
    m.write_text(f"path,clip_id,start,end\n{long_clip},late,10,12\n")
    out = tmp_path / "out"
    execute(make_cfg(out, *OVERRIDES, manifest=m))
    rec = next(r for rec in Journal(out / "journal" / "faces.jsonl").records if rec.get("type") == "commit"
               for r in rec["inputs"])  # fmt: skip
    assert rec["status"] == "skipped" and rec["reason"] == "bad_range" and "starts at frame 250" in rec["detail"]


@pytest.fixture(scope="module")
def ranged_raw(tmp_path_factory) -> Path:
    """One 24-frame synthetic face clip cut into 4 ranges (seconds, frames, suffixes, an open end)."""
    d = tmp_path_factory.mktemp("ranged_raw")
    clip = write_face_clip(d / "long.mp4", n=24, fps=10, size=160, face_px=80)
    rows = [("r0", "0", "0.6", "s"), ("r1", "6", "12", "frames"), ("r2", "1.2s", "1.8s", ""), ("r3", "18f", "", "")]
    lines = ["path,identity,clip_id,start,end,unit"] + [f"{clip},p,{c},{a},{b},{u}" for c, a, b, u in rows]
    (d / "manifest.csv").write_text("\n".join(lines) + "\n")
    return d / "manifest.csv"


def test_crash_and_rerun_of_a_ranged_manifest_is_exactly_once(ranged_raw, tmp_path, monkeypatch):
    overrides = (*OVERRIDES, "output.max_shard_samples=2", "output.chunk_frames=4")
    ref = tmp_path / "ref"
    summary = execute(make_cfg(ref, *overrides, manifest=ranged_raw))
    assert summary["samples"] == 8 and summary["frames_kept"] == 24  # 4 ranges x 6 frames, 2 chunks each
    real_append, calls = Journal.append, {"n": 0}

    def crashing_append(self, record):
        if record.get("shard"):
            calls["n"] += 1
            if calls["n"] == 3:
                raise KeyboardInterrupt("simulated crash after the 3rd shard was renamed")
        real_append(self, record)

    out = tmp_path / "crashed"
    monkeypatch.setattr(Journal, "append", crashing_append)
    with pytest.raises(KeyboardInterrupt):
        execute(make_cfg(out, *overrides, manifest=ranged_raw))
    monkeypatch.setattr(Journal, "append", real_append)
    execute(make_cfg(out, *overrides, manifest=ranged_raw))
    _assert_same_as_uninterrupted(out, ref)


def _assert_same_as_uninterrupted(out, ref) -> None:
    """The rerun's shards are byte-identical to the uninterrupted run's; 8 unique keys; exactly each range's frames."""
    assert shard_digests(out / "shards") == shard_digests(ref / "shards")  # byte-identical shard set
    keys = [k for s in sorted((out / "shards").glob("*.tar")) for k in read_shard(s)]
    assert len(keys) == len(set(keys)) == 8
    metas = [SampleMeta.from_json(s["json"]) for s in _samples(out).values()]
    frames = sorted((m.extra["clip_id"], i) for m in metas for i in m.frame_indices)
    expect = sorted((c, i) for c, lo in (("r0", 0), ("r1", 6), ("r2", 12), ("r3", 18)) for i in range(lo, lo + 6))
    assert frames == expect


@pytest.mark.slow
def test_sigkill_and_rerun_of_a_ranged_manifest_is_exactly_once(ranged_raw, tmp_path):
    """``kill -9`` of the whole job after 2 committed shards, then a rerun: the shard set of an uninterrupted run."""
    overrides = (*OVERRIDES, "output.max_shard_samples=1", "output.chunk_frames=4")
    ref = tmp_path / "ref"
    summary = execute(make_cfg(ref, *overrides, manifest=ranged_raw))
    assert summary["samples"] == 8 and summary["frames_kept"] == 24  # 4 ranges x 6 frames, 2 chunks each
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "data_prep", f"output.dir={out}", f"inputs.manifest={ranged_raw}", *overrides]
    log = open(tmp_path / "run.log", "wb")  # noqa: SIM115 - the child writes to it until killed
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    journal = out / "journal" / "faces.jsonl"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.exists() and sum('"shard": "faces-' in line for line in journal.read_text().splitlines()) >= 2:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the run finished before it could be killed: " + (tmp_path / "run.log").read_text()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 2 <= len(Journal(journal).shards()) < 8
    execute(make_cfg(out, *overrides, manifest=ranged_raw))
    _assert_same_as_uninterrupted(out, ref)
