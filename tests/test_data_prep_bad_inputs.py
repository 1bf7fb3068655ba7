"""Every kind of bad input gets a recorded reason in the curation report, and never stops the job."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
import skimage.data
from data_prep_fixtures import face_frames, make_cfg, write_face_clip
from PIL import Image

from data_prep.cli import execute
from data_prep.demo_data import write_mp4


def _ffmpeg(*args: str) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *args], check=True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """A raw folder with one file per bad-input case (plus good controls); returns (dir, manifest, expectations)."""
    root = tmp_path_factory.mktemp("bad")
    raw = root / "raw"
    raw.mkdir()
    expect: dict[str, tuple[str, str | None]] = {}  # file name -> (status, reason)

    good = write_face_clip(raw / "good.mp4", n=12, fps=10)
    expect["good.mp4"] = ("ok", None)
    odd = write_face_clip(raw / "dir with space/ünïcødé clip 名前.mp4", n=12, fps=10, seed=3)
    expect[odd.name] = ("ok", None)

    (raw / "zero.mp4").write_bytes(b"")
    expect["zero.mp4"] = ("skipped", "empty_file")
    (raw / "text.mp4").write_text("this is not a video\n" * 20)
    expect["text.mp4"] = ("skipped", "not_media")
    # truncated: moov at the end (index lost) and moov at the start (frames lost)
    data = good.read_bytes()
    (raw / "truncated_noindex.mp4").write_bytes(data[: len(data) // 2])
    expect["truncated_noindex.mp4"] = ("skipped", "truncated")
    _ffmpeg("-i", str(good), "-c", "copy", "-movflags", "+faststart", str(root / "fs.mp4"))
    fs = (root / "fs.mp4").read_bytes()
    (raw / "truncated_frames.mp4").write_bytes(fs[: len(fs) // 2])
    expect["truncated_frames.mp4"] = ("skipped", "truncated")
    # unsupported codec: an AVI whose video FourCC no decoder knows
    _ffmpeg("-i", str(good), "-c:v", "copy", str(root / "h264.avi"))
    (raw / "codec.avi").write_bytes(
        (root / "h264.avi").read_bytes().replace(b"avc1", b"QQQQ").replace(b"H264", b"QQQQ")
    )
    expect["codec.avi"] = ("skipped", "unsupported_codec")
    _ffmpeg("-f", "lavfi", "-i", "sine=d=1", "-c:a", "aac", str(raw / "audio_only.mp4"))
    expect["audio_only.mp4"] = ("skipped", "audio_only")
    _ffmpeg("-f", "lavfi", "-i", "testsrc=d=1.2:s=256x256:r=10", "-pix_fmt", "yuv420p", str(raw / "no_face.mp4"))
    expect["no_face.mp4"] = ("empty", "no_face")
    left, right = face_frames(12, 256, 100), face_frames(12, 256, 90, seed=1)
    two = [np.concatenate([a, b], axis=1) for a, b in zip(left, right, strict=True)]
    write_mp4(two, raw / "two_people.mp4", 10)
    expect["two_people.mp4"] = ("empty", "multiple_faces")
    write_face_clip(raw / "small_face.mp4", n=12, fps=10, size=256, face_px=55)
    expect["small_face.mp4"] = ("empty", "face_too_small")
    write_face_clip(raw / "short.mp4", n=3, fps=10)
    expect["short.mp4"] = ("empty", "too_short")

    astro = skimage.data.astronaut()
    Image.fromarray(astro).save(raw / "portrait.jpg", quality=95)
    expect["portrait.jpg"] = ("ok", None)
    jpg = (raw / "portrait.jpg").read_bytes()
    (raw / "corrupt.jpg").write_bytes(jpg[: len(jpg) // 3])
    expect["corrupt.jpg"] = ("skipped", "corrupt_image")
    (raw / "garbage.jpg").write_bytes(bytes(range(256)) * 4)
    expect["garbage.jpg"] = ("skipped", "corrupt_image")
    Image.new("RGB", (1, 1), (128, 0, 0)).save(raw / "one_pixel.png")
    expect["one_pixel.png"] = ("skipped", "image_too_small")
    Image.fromarray(astro).convert("L").save(raw / "gray.png")
    Image.fromarray(astro).convert("CMYK").save(raw / "cmyk.jpg")
    rgba = Image.fromarray(astro).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.where(np.arange(512)[None, :] < 40, 0, 255).astype(np.uint8).repeat(512, 0)))
    rgba.save(raw / "alpha.png")
    Image.fromarray(astro).convert("I;16").save(raw / "sixteen_bit.png")
    for name in ("gray.png", "cmyk.jpg", "alpha.png", "sixteen_bit.png"):
        expect[name] = ("ok", None)  # converted, not dropped
    Image.fromarray(cv2.GaussianBlur(astro, (0, 0), 3)).save(raw / "blurry.jpg")
    expect["blurry.jpg"] = ("empty", "blurry")

    manifest = root / "manifest.csv"  # the good clip listed again (and found by the directory walk)
    manifest.write_text(f"path,identity\n{good},astronaut\n{odd},astronaut\n")
    return raw, manifest, expect


@pytest.fixture(scope="module")
def report(corpus, tmp_path_factory):
    raw, manifest, _ = corpus
    out = tmp_path_factory.mktemp("bad_out")
    cfg = make_cfg(out, "output.max_shard_samples=4", "filters.identity=false", paths=[raw], manifest=manifest)
    summary = execute(cfg)
    cfg.mode = "merge"
    execute(cfg)
    return out, summary, json.loads((out / "report" / "report.json").read_text())


def test_every_bad_input_has_its_reason(corpus, report):
    _, _, expect = corpus
    out, summary, rep = report
    records = {}
    for line in (out / "journal" / "faces.jsonl").read_text().splitlines():
        rec = json.loads(line)
        for r in rec.get("inputs", []):
            records.setdefault(r["path"].rsplit("/", 1)[-1], []).append(r)
    for name, (status, reason) in expect.items():
        got = records[name]
        first = [r for r in got if not r["uid"].split(".")[-1].startswith("dup")][0]
        assert (first["status"], first["reason"]) == (status, reason), (name, first["detail"])
    # the duplicate listing (directory walk + manifest) is processed once, recorded once as `duplicate`
    assert sorted(r["status"] for r in records["good.mp4"]) == ["ok", "skipped"]
    assert [r["reason"] for r in records["good.mp4"] if r["status"] == "skipped"] == ["duplicate"]
    # conversions are recorded, not dropped
    conv = {n: records[n][0]["notes"].get("converted_from") for n in ("gray.png", "cmyk.jpg", "alpha.png")}
    assert conv == {"gray.png": "L", "cmyk.jpg": "CMYK", "alpha.png": "RGBA"}
    assert rep["image_conversions"] == {"L": 1, "CMYK": 1, "RGBA": 1, "I;16": 1}
    # the report counts every reason
    reasons = rep["input_reasons"]
    for reason in ("empty_file", "not_media", "truncated", "unsupported_codec", "audio_only", "no_face",
                   "multiple_faces", "face_too_small", "too_short", "corrupt_image", "image_too_small", "duplicate",
                   "blurry"):  # fmt: skip
        assert reasons.get(reason, 0) >= 1, reason
    assert reasons["truncated"] == 2 and reasons["corrupt_image"] == 2
    assert rep["drop_frames"]["no_face"] >= 12 and rep["drop_clips"]["too_short"] >= 1
    md = (out / "report" / "report.md").read_text()
    assert "| input | unsupported_codec | 1 |" in md and "| input | duplicate | 2 |" in md


def test_unicode_path_kept_with_its_path(report):
    out = report[0]
    import tarfile

    metas = []
    for shard in sorted((out / "shards").glob("*.tar")):
        with tarfile.open(shard) as tar:
            metas += [json.loads(tar.extractfile(m).read()) for m in tar if m.name.endswith(".json")]
    paths = {m["source_path"] for m in metas}
    assert any("dir with space/ünïcødé clip 名前.mp4" in p for p in paths)
    kinds = {m["source_path"].rsplit("/", 1)[-1] for m in metas}
    assert {"gray.png", "cmyk.jpg", "alpha.png", "portrait.jpg", "good.mp4"} <= kinds
    assert len({m["key"] for m in metas}) == len(metas)
