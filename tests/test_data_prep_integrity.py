"""Curation does not turn damaged or wrong inputs into training data silently: frames decoded after a decoder error,
animal faces, one identity for a folder of different people, and paths a scan cannot use are each dropped or counted
with their own reason in the report, and the run goes on."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import skimage.data
from data_prep_fixtures import make_cfg, read_shard, write_face_clip
from PIL import Image

from data_prep.cli import execute
from data_prep.decode import VideoReader
from data_prep.demo_data import demo_photos
from data_prep.filters import FilterConfig, HumanFaceCheck
from data_prep.inputs import discover
from data_prep.probe import probe_video
from data_prep.process import ProcessConfig, process_input, read_samples
from lp_train.data.shard_format import SampleMeta

needs_dlib = pytest.mark.skipif(not HumanFaceCheck.available(), reason="dlib-bin + face_recognition_models missing")


def bit_rot(src: Path, dst: Path, fraction: float = 0.2) -> Path:
    """A copy of ``src`` whose middle ``fraction`` of bytes is overwritten with (seeded) random bytes."""
    data = bytearray(src.read_bytes())
    a, b = int(len(data) * (0.5 - fraction / 2)), int(len(data) * (0.5 + fraction / 2))
    data[a:b] = np.random.default_rng(0).integers(0, 256, b - a, dtype=np.uint8).tobytes()
    dst.write_bytes(bytes(data))
    return dst


def decode_all(path: Path, stop_at_error: bool = True, fps: float | None = None) -> tuple[list, VideoReader]:
    reader = VideoReader(str(path), probe_video(str(path)), fps=fps, stop_at_error=stop_at_error)
    return list(reader), reader


def first_garbled(clean: Path, rot: Path, fps: float | None = None) -> int:
    """Index of the first frame of ``rot`` that decodes differently from ``clean`` (every frame decoded)."""
    a, _ = decode_all(clean, False, fps)
    b, _ = decode_all(rot, False, fps)
    assert len(a) == len(b)
    return next(i for i, (x, y) in enumerate(zip(a, b, strict=True)) if not np.array_equal(x, y))


def sample_metas(samples_path: str | None) -> list[SampleMeta]:
    return [] if samples_path is None else [SampleMeta.from_json(s["json"]) for s in read_samples(samples_path)]


FAST = {"min_clip_frames": 4, "min_clip_seconds": 0.0, "identity": False, "human_face": False}


# --- decode integrity -----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synthetic_rot(tmp_path_factory) -> tuple[Path, Path]:
    """(clean, bit-rot copy) of a 40-frame synthetic face clip encoded by ffmpeg (no ../shared needed)."""
    d = tmp_path_factory.mktemp("rot")
    clean = write_face_clip(d / "clean.mp4", n=40, fps=10)
    return clean, bit_rot(clean, d / "rot.mp4")


def test_reader_yields_no_frame_decoded_after_an_error(synthetic_rot):
    clean, rot = synthetic_rot
    reference, _ = decode_all(clean)
    frames, reader = decode_all(rot)
    assert 0 < len(frames) < len(reference) == 40  # the garbled frames are held back ...
    for got, want in zip(frames, reference, strict=False):  # ... what is yielded is exactly the clean clip's start
        np.testing.assert_array_equal(got, want)
    assert reader.frames_read == 40 and reader.error_count > 0 and reader.corrupt_from == len(frames)
    # what is held back is garbage: concealment errors of 10+ grey levels on average
    garbled, _ = decode_all(rot, stop_at_error=False)
    diffs = [np.abs(a.astype(int) - b).mean() for a, b in zip(garbled, reference, strict=True)]
    assert max(diffs[: reader.corrupt_from]) == 0 and np.median(diffs[reader.corrupt_from :]) > 10
    assert all(" @ 0x" not in e for e in reader.errors)  # pointers stripped: records are reproducible


@pytest.fixture(scope="module")
def rot_curated(synthetic_rot, tmp_path_factory) -> tuple[dict, list[SampleMeta], dict]:
    """The bit-rot clip curated (tiny filters) and merged: (its journal record, its samples' metadata, report)."""
    _, rot = synthetic_rot
    root = tmp_path_factory.mktemp("rot_curated")
    (root / "raw").mkdir()
    shutil.copy(rot, root / "raw" / "rot.mp4")
    cfg = make_cfg(root / "out", "data_prep/filters=tiny", paths=[root / "raw"])
    execute(cfg)
    cfg.mode = "merge"
    report = execute(cfg)
    (rec,) = [r for line in (root / "out" / "journal" / "faces.jsonl").read_text().splitlines()
              for r in json.loads(line).get("inputs", [])]  # fmt: skip
    metas = []
    for shard in sorted((root / "out" / "shards").glob("*.tar")):
        metas += [SampleMeta.from_json(s["json"]) for s in read_shard(shard).values()]
    return rec, metas, report


def test_bitrot_clip_keeps_only_frames_before_the_first_error(synthetic_rot, rot_curated):
    rec, metas, _ = rot_curated
    kept = [i for m in metas for i in m.frame_indices]
    assert kept and max(kept) < first_garbled(*synthetic_rot)  # no garbled frame in the shards
    assert (rec["status"], rec["reason"]) == ("ok", "decode_errors"), rec["detail"]
    _, reader = decode_all(synthetic_rot[1])
    cut = reader.corrupt_from
    assert rec["notes"]["decode_errors"] == reader.error_count and rec["notes"]["corrupt_from_frame"] == cut
    assert rec["frames_decoded"] == 40 and rec["drop_frames"]["decode_errors"] == 40 - cut
    assert max(kept) < cut and rec["frames_kept"] == len(kept)


def test_report_counts_decode_errors(synthetic_rot, rot_curated):
    _, reader = decode_all(synthetic_rot[1])
    report = rot_curated[2]
    assert report["decode_errors"] == {
        "inputs": 1, "error_lines": reader.error_count, "frames_dropped": 40 - reader.corrupt_from,
    }  # fmt: skip
    assert report["input_reasons"] == {"decode_errors": 1} and report["inputs_by_status"] == {"ok": 1}
    assert [(s["status"], s["reason"]) for s in report["skipped"]] == [("ok", "decode_errors")]


def test_on_error_drop_skips_the_input(synthetic_rot, tmp_path):
    item = discover([str(synthetic_rot[1])])[0]
    cfg = ProcessConfig(decode={"on_error": "drop"}, filters=FilterConfig(**FAST))
    rec, samples = process_input(item, cfg, str(tmp_path))
    assert (rec["status"], rec["reason"], rec["samples"], samples) == ("skipped", "decode_errors", 0, None)
    assert rec["drop_frames"] == {"decode_errors": rec["frames_decoded"]} and rec["notes"]["decode_errors"] > 0


def test_real_bitrot_clip_is_not_curated_with_garbled_frames(lp_data_faces_dir, tmp_path):
    """A real talking-head clip with 20% of its middle bytes overwritten (ffmpeg logs ~180 error lines)."""
    clean = lp_data_faces_dir / "videos" / "d12.mp4"
    rot = bit_rot(clean, tmp_path / "d12_rot.mp4")
    item = discover([str(rot)])[0]
    cfg = ProcessConfig(decode={"fps": 5}, filters=FilterConfig(**FAST))  # 5 fps: 37 frames to detect
    rec, samples = process_input(item, cfg, str(tmp_path))
    kept = [i for m in sample_metas(samples) for i in m.frame_indices]
    assert kept and max(kept) < first_garbled(clean, rot, fps=5)  # no garbled frame in the samples
    assert (rec["status"], rec["reason"]) == ("ok", "decode_errors") and rec["notes"]["decode_errors"] > 50
    assert rec["drop_frames"]["decode_errors"] == rec["frames_decoded"] - rec["notes"]["corrupt_from_frame"]
    # at the source rate: every frame before the first error is the clean clip's, bit for bit
    frames, reader = decode_all(rot)
    reference, _ = decode_all(clean)
    assert 0 < reader.corrupt_from == len(frames) < reader.frames_read == len(reference)
    assert all(np.array_equal(a, b) for a, b in zip(frames, reference, strict=False))


def test_clean_clip_with_warnings_is_kept_whole(tmp_path):
    """Full-range (yuvj420p) H.264 makes swscale warn on every decode; warnings are not errors."""
    src = write_face_clip(tmp_path / "src.mp4", n=12, fps=10)
    clip = tmp_path / "fullrange.mp4"
    cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", str(src), "-c:v", "libx264", "-pix_fmt", "yuvj420p"]
    subprocess.run([*cmd, str(clip)], check=True)
    log = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "warning", "-i", str(clip), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
        capture_output=True,
    ).stderr.decode()
    assert log.strip(), "expected ffmpeg warnings for a yuvj420p clip"
    rec, _ = process_input(discover([str(clip)])[0], ProcessConfig(filters=FilterConfig(**FAST)), str(tmp_path))
    assert (rec["status"], rec["reason"], rec["frames_kept"]) == ("ok", None, 12)
    assert "decode_errors" not in rec["notes"]
    frames, reader = decode_all(clip)
    assert len(frames) == reader.frames_read == 12 and reader.error_count == 0 and reader.corrupt_from is None


# --- human faces ----------------------------------------------------------------------------------------------------
def cat_photos() -> dict[str, np.ndarray]:
    """skimage's cat photo in two forms mediapipe's face detector + mesh accept as a (human) face."""
    cat = skimage.data.chelsea()
    mirrored = np.ascontiguousarray(cat[:, ::-1])
    h, w = cat.shape[:2]
    tilted = cv2.warpAffine(mirrored, cv2.getRotationMatrix2D((w / 2, h / 2), -10, 1.0), (w, h), borderMode=4)
    small = cv2.resize(cat, None, fx=0.3, fy=0.3, interpolation=cv2.INTER_AREA)
    return {"cat_mirrored_tilted": tilted, "cat_small": small}


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory) -> Path:
    """One folder: 2 cat photos and 3 different people (the demo photos)."""
    d = tmp_path_factory.mktemp("photos") / "pets_and_people"
    d.mkdir()
    for name, rgb in {**cat_photos(), **demo_photos()}.items():
        Image.fromarray(rgb).save(d / f"{name}.png")
    return d


def _records(out: Path) -> dict[str, dict]:
    recs = {}
    for line in (out / "journal" / "faces.jsonl").read_text().splitlines():
        for r in json.loads(line).get("inputs", []):
            recs[Path(r["path"]).name] = r
    return recs


@needs_dlib
def test_cat_is_not_human_and_people_are(photo_folder, tmp_path):
    cfg = make_cfg(tmp_path, "filters.identity=false", paths=[photo_folder])
    execute(cfg)
    recs = _records(tmp_path)
    for name in cat_photos():
        assert (recs[f"{name}.png"]["status"], recs[f"{name}.png"]["reason"]) == ("empty", "not_human"), name
        assert recs[f"{name}.png"]["drop_clips"] == {"not_human": 1}
    for name in demo_photos():  # astronaut, cameraman (a small face), Grace Hopper
        assert (recs[f"{name}.png"]["status"], recs[f"{name}.png"]["reason"]) == ("ok", None), name


@needs_dlib
@pytest.mark.parametrize("override", ["human_face", "human_face_except"])
def test_human_face_check_can_be_switched_off(override, tmp_path):
    """Stylised art (anime, paintings) is training data: the check is off by a switch, or for named datasets."""
    Image.fromarray(cat_photos()["cat_mirrored_tilted"]).save(tmp_path / "cat.png")
    item = discover([str(tmp_path / "cat.png")], dataset="pets")[0]
    filters = {**FAST, "human_face": True}
    rec, _ = process_input(item, ProcessConfig(filters=FilterConfig(**filters)), str(tmp_path))
    assert rec["reason"] == "not_human"
    filters.update({"human_face": False} if override == "human_face" else {"human_face_except": ["pets"]})
    rec, _ = process_input(item, ProcessConfig(filters=FilterConfig(**filters)), str(tmp_path))
    assert (rec["status"], rec["reason"]) == ("ok", None)


@needs_dlib
def test_human_face_checks_few_frames_of_a_clip(tmp_path, monkeypatch):
    """A 2.4 s clip at 10 fps with human_every_s=1: its frames 0, 10 and 20 are checked, nothing else."""
    clip = write_face_clip(tmp_path / "person.mp4", n=24, fps=10)
    checked = []
    call = HumanFaceCheck.__call__

    def spy(self, crop, landmarks):
        checked.append(crop.shape)
        return call(self, crop, landmarks)

    monkeypatch.setattr(HumanFaceCheck, "__call__", spy)
    filters = FilterConfig(**{**FAST, "human_face": True, "human_every_s": 1.0})
    rec, _ = process_input(discover([str(clip)])[0], ProcessConfig(filters=filters), str(tmp_path))
    assert (rec["status"], rec["clip_lengths"]) == ("ok", [24]) and checked == [(512, 512, 3)] * 3
    assert rec["timings"]["human_face"] > 0


@pytest.mark.slow
@needs_dlib
def test_real_portraits_are_human(lp_data_faces_dir, tmp_path):
    """Every portrait of the shared test faces (photos, paintings, a statue, a 3D cartoon) passes the check."""
    images = sorted((lp_data_faces_dir / "images").glob("*.jpg"))
    filters = FilterConfig(**{**FAST, "human_face": True})
    for path in images:
        rec, _ = process_input(discover([str(path)])[0], ProcessConfig(filters=filters), str(tmp_path))
        assert (rec["status"], rec["reason"]) == ("ok", None), path.name


# --- identities -----------------------------------------------------------------------------------------------------
def test_each_file_is_its_own_identity_by_default(photo_folder, tmp_path):
    people = tmp_path / "people"
    people.mkdir()
    for name in demo_photos():
        shutil.copy(photo_folder / f"{name}.png", people / f"{name}.png")
    items = discover([str(people)])
    assert len({it.identity for it in items}) == 3 and all(it.identity == it.id for it in items)
    assert {it.identity for it in discover([str(people)], identity_from="parent")} == {"people"}
    cfg = make_cfg(tmp_path / "out", "data_prep/filters=tiny", paths=[people])
    execute(cfg)
    cfg.mode = "merge"
    assert execute(cfg)["identities_kept"] == 3


def test_nine_people_in_one_folder_are_nine_identities(lp_data_faces_dir, tmp_path):
    people = tmp_path / "portraits"
    people.mkdir()
    for name in ("d12", "d19", "d30", "d38", "d8", "d9", "s1", "s12", "s2"):  # nine different real people
        shutil.copy(lp_data_faces_dir / "images" / f"{name}.jpg", people / f"{name}.jpg")
    cfg = make_cfg(tmp_path / "out", "data_prep/filters=tiny", paths=[people])
    execute(cfg)
    cfg.mode = "merge"
    summary = execute(cfg)
    assert summary["inputs_by_status"] == {"ok": 9} and summary["identities_kept"] == 9


# --- scan anomalies -------------------------------------------------------------------------------------------------
ANOMALIES = {  # name in the scanned folder (or given path) -> reason recorded for it
    "self_loop.mp4": "symlink_loop",
    "sub/up": "symlink_loop",
    "gone.mp4": "dangling_link",
    "clip.mp4": "not_a_file",
    "pipe.jpg": "not_a_file",
    "missing_given.mp4": "missing",
    "notes.txt": "unknown_extension",
}


@pytest.fixture(scope="module")
def anomalies(tmp_path_factory) -> tuple[Path, dict[str, dict], dict]:
    """A folder with a symlink loop to itself and to a folder above, a dangling link, a folder and a fifo named like
    media, plus a missing and a non-media path given explicitly; curated and merged."""
    root = tmp_path_factory.mktemp("scan")
    raw = root / "raw"
    (raw / "sub").mkdir(parents=True)
    (raw / "clip.mp4").mkdir()
    face = skimage.data.astronaut()
    Image.fromarray(face).save(raw / "good.jpg")
    Image.fromarray(face[:, ::-1]).save(raw / "clip.mp4" / "inside.jpg")  # a folder named .mp4 is still scanned
    os.symlink("self_loop.mp4", raw / "self_loop.mp4")
    os.symlink("..", raw / "sub" / "up")
    os.symlink("nowhere.mp4", raw / "gone.mp4")
    os.mkfifo(raw / "pipe.jpg")
    (root / "notes.txt").write_text("not media\n")
    given = [raw, root / "missing_given.mp4", root / "notes.txt"]
    cfg = make_cfg(root / "out", "data_prep/filters=tiny", paths=given)
    summary = execute(cfg)
    cfg.mode = "merge"
    report = execute(cfg)
    recs = {}
    for line in (root / "out" / "journal" / "faces.jsonl").read_text().splitlines():
        for r in json.loads(line).get("inputs", []):
            inside = r["path"].startswith(str(raw.resolve()))
            recs[os.path.relpath(r["path"], raw.resolve()) if inside else Path(r["path"]).name] = r
    return raw, recs, {"run": summary, "report": report}


@pytest.mark.parametrize("name", list(ANOMALIES))
def test_scan_anomaly_is_recorded_with_its_reason(anomalies, name):
    _, recs, _ = anomalies
    assert (recs[name]["status"], recs[name]["reason"]) == ("skipped", ANOMALIES[name]), recs[name]["detail"]


def test_scan_anomalies_do_not_stop_the_run(anomalies):
    _, recs, out = anomalies
    assert recs["good.jpg"]["status"] == "ok" and recs["clip.mp4/inside.jpg"]["status"] == "ok"
    assert out["run"]["samples"] == 2 and out["report"]["inputs"] == len(ANOMALIES) + 2
    for reason in set(ANOMALIES.values()):
        assert out["report"]["input_reasons"][reason] >= 1


def _as_nobody(fn) -> dict:
    """``fn()`` (returning a JSON-able dict) in a forked child that has dropped root's rights (uid/gid 65534)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            os.write(w, json.dumps(fn()).encode())
        except BaseException as e:  # noqa: BLE001 - reported to the parent
            os.write(w, json.dumps({"child_error": repr(e)}).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = json.loads(f.read())
    os.waitpid(pid, 0)
    return out


def test_unreadable_file_is_not_a_corrupt_image():
    """A file the curating user may not read (mode 000) is `unreadable`, not `corrupt_image` (checked as user
    `nobody` when the tests run as root, who reads any file)."""
    work = Path(tempfile.mkdtemp(prefix="lp_unreadable_"))
    try:
        work.chmod(0o777)
        Image.fromarray(skimage.data.astronaut()).save(work / "locked.jpg")
        (work / "locked.jpg").chmod(0o000)

        def curate() -> dict:
            return process_input(discover([str(work / "locked.jpg")])[0], ProcessConfig(), str(work))[0]

        rec = _as_nobody(curate) if os.geteuid() == 0 else curate()
        assert (rec.get("status"), rec.get("reason")) == ("skipped", "unreadable"), rec
    finally:
        shutil.rmtree(work, ignore_errors=True)
