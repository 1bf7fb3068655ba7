"""Curation end to end on the real clips and portraits of ../shared/data/faces (few frames), plus unit tests of the
stages (inputs, slicing, chunking, streamed smoothing)."""

from __future__ import annotations

import json
import subprocess

import cv2
import numpy as np
import pytest
import skimage.data
import webdataset as wds
from data_prep_fixtures import FACES, decode_jpeg, face_frames, make_cfg, read_shard

from data_prep.cli import execute
from data_prep.clips import ClipBuilder, CropConfig, chunk_bounds
from data_prep.decode import VideoReader
from data_prep.demo_data import write_mp4
from data_prep.filters import FilterConfig, IdentityEncoder, identity_consistent
from data_prep.inputs import discover, read_manifest, task_slice
from data_prep.probe import probe_video
from data_prep.process import ProcessConfig, process_input, read_samples
from lp_train.data.shard_format import CROP_SIZE, NUM_LANDMARKS, SampleMeta, decode_npy
from lp_train.face.crop import crop_params_from_landmarks, smooth_crop_params, warp_crop
from lp_train.face.detect import FaceDetector
from lp_train.face.landmarks import LEFT_EYE_CORNERS, MOUTH_CORNERS, RIGHT_EYE_CORNERS

needs_faces = pytest.mark.skipif(
    not (FACES / "videos").is_dir(), reason=f"real test faces not found at {FACES} (../shared/data/faces)"
)
VIDEOS = ("d0.mp4", "s13.mp4", "s18.mp4")  # a face-cropped clip, a 720x1080 portrait shot, a 1280x720 shot
IMAGES = ("s0.jpg", "d12.jpg", "s8.jpg")


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    """Curate 3 real clips (8 frames at 5 fps each) + 3 portraits, then merge."""
    root = tmp_path_factory.mktemp("curated")
    manifest = root / "manifest.jsonl"
    rows = [{"path": str(FACES / "videos" / v), "identity": v[:-4], "dataset": "shared"} for v in VIDEOS]
    rows += [{"path": str(FACES / "images" / i), "identity": i[:-4], "dataset": "shared"} for i in IMAGES]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = make_cfg(
        root / "out", "data_prep/filters=tiny", "data_prep/output=tiny", "output.max_shard_samples=3", "decode.fps=5",
        "decode.max_frames=8",
        manifest=manifest,
    )  # fmt: skip
    summary = execute(cfg)
    cfg.mode = "merge"
    report = execute(cfg)
    return root / "out", summary, report


@needs_faces
def test_real_clips_produce_decodable_shards(curated):
    out, summary, report = curated
    assert summary["samples"] > 0 and report["inputs_by_status"] == {"ok": 6}
    index = json.loads((out / "index.json").read_text())
    urls = [str(out / s["url"]) for s in index["shards"]]
    assert index["num_samples"] == summary["samples"] and len(urls) >= 2
    # readable with plain tar ...
    listing = subprocess.run(["tar", "-tf", urls[0]], capture_output=True, text=True, check=True).stdout.split()
    assert any(n.endswith(".0000.jpg") for n in listing) and any(n.endswith(".landmarks.npy") for n in listing)
    # ... and with webdataset alone
    n = frames = 0
    for sample in wds.WebDataset(urls, shardshuffle=False).decode("rgb"):
        meta = SampleMeta.from_json(sample["json"])
        lmk = sample["landmarks.npy"]
        imgs = [sample[k] for k in sorted(k for k in sample if k.endswith(".jpg"))]
        assert len(imgs) == meta.num_frames == len(meta.frame_indices) == len(meta.crop_affines) == lmk.shape[0]
        assert lmk.shape == (meta.num_frames, NUM_LANDMARKS, 2) and lmk.dtype == np.float32
        assert all(im.shape == (CROP_SIZE, CROP_SIZE, 3) for im in imgs)
        assert meta.kind == ("image" if meta.source_path.endswith(".jpg") else "video")
        assert meta.identity in {v[:-4] for v in VIDEOS + IMAGES} and meta.dataset == "shared"
        n, frames = n + 1, frames + meta.num_frames
    assert n == index["num_samples"] and frames == index["num_frames"]


@needs_faces
def test_crops_contain_the_face_upright(curated):
    out = curated[0]
    for shard in sorted((out / "shards").glob("*.tar")):
        for key, s in read_shard(shard).items():
            lmk = decode_npy(s["landmarks.npy"])
            assert (lmk > 0).all() and (lmk < 1).all(), key  # every landmark inside the crop
            eyes = lmk[:, [RIGHT_EYE_CORNERS[0], LEFT_EYE_CORNERS[0]]]
            mouth = lmk[:, list(MOUTH_CORNERS)].mean(1)
            assert (eyes[:, :, 1].max(1) < mouth[:, 1]).all(), key  # eyes above the mouth
            assert (eyes[:, 0, 0] < eyes[:, 1, 0]).all()  # roll removed: subject's right eye on the left
            tilt = np.degrees(np.arctan2(eyes[:, 1, 1] - eyes[:, 0, 1], eyes[:, 1, 0] - eyes[:, 0, 0]))
            assert np.abs(tilt).max() < 12, key
            centre = lmk.mean(1)  # the face sits in the middle, a bit low (crop shifted up by 1/8)
            assert (np.abs(centre[:, 0] - 0.5) < 0.1).all() and (np.abs(centre[:, 1] - 0.56) < 0.12).all(), key


@needs_faces
def test_landmarks_align_with_stored_frames(curated):
    """Re-detect landmarks on the stored JPEG crops: they agree with the stored landmarks."""
    out = curated[0]
    errs = []
    with FaceDetector() as det:
        for shard in sorted((out / "shards").glob("*.tar"))[:3]:
            for s in read_shard(shard).values():
                lmk = decode_npy(s["landmarks.npy"])
                for i in (0, lmk.shape[0] - 1):
                    faces = det.detect(decode_jpeg(s[f"{i:04d}.jpg"]))
                    assert faces, "no face found again in a stored crop"
                    errs.append(np.median(np.linalg.norm(faces[0].landmarks / CROP_SIZE - lmk[i], axis=1)))
    assert np.median(errs) < 0.01 and max(errs) < 0.03  # < 1% (5 px) typical, 3% worst of the crop side


@needs_faces
def test_crop_affines_reproduce_stored_frames(curated):
    """Warping the decoded source frame with the stored affine gives the stored crop (affines, indices, sizes)."""
    out = curated[0]
    checked = 0
    for shard in sorted((out / "shards").glob("*.tar")):
        for s in read_shard(shard).values():
            meta = SampleMeta.from_json(s["json"])
            if meta.kind != "video" or checked >= 2:
                continue
            info = probe_video(meta.source_path)
            assert meta.orig_size == [info.width, info.height]
            frames = list(VideoReader(meta.source_path, info, fps=meta.fps, max_frames=meta.frame_indices[-1] + 1))
            for i in (0, meta.num_frames - 1):
                src = frames[meta.frame_indices[i]]
                crop = warp_crop(src, np.array(meta.crop_affines[i]), CROP_SIZE)
                diff = np.abs(crop.astype(float) - decode_jpeg(s[f"{i:04d}.jpg"]).astype(float)).mean()
                assert diff < 4.0, (meta.key, diff)  # JPEG q90 noise only
            checked += 1
    assert checked == 2


@needs_faces
def test_report_has_plots_and_contact_sheets(curated):
    from PIL import Image

    out = curated[0]
    rep = out / "report"
    for name in ("clip_lengths.png", "face_sizes.png", "contact_sheet_00.png", "report.md", "report.json"):
        assert (rep / name).is_file(), name
    sheet = np.asarray(Image.open(rep / "contact_sheet_00.png"))
    assert sheet.shape[2] == 3 and sheet[:128, :128].std() > 10  # first tile holds a real crop
    # sized to its tiles: no empty background rows below the crops (a few samples make a small sheet)
    assert sheet.shape[1] <= 8 * 128 and all(sheet[y : y + 128, :128].std() > 10 for y in range(0, sheet.shape[0], 128))
    data = json.loads((rep / "report.json").read_text())
    assert data["identities_kept"] == 6 and data["frames_kept"] > 20


# --- stage units --------------------------------------------------------------------------------------------------
def test_discover_manifests_duplicates_and_slices(tmp_path):
    d = tmp_path / "raw" / "id 1"
    d.mkdir(parents=True)
    for name in ("a.mp4", "b.jpg", "c.txt", "d.PNG"):
        (d / name).write_bytes(b"x")
    csv_path = tmp_path / "m.csv"
    csv_path.write_text("path,identity,split\nraw/id 1/a.mp4,alice,test\n/nonexistent/z.webm,,\n")
    jsonl = tmp_path / "m.jsonl"
    jsonl.write_text(json.dumps({"path": "raw/id 1/a.mp4", "dataset": "vox"}) + "\n")
    assert read_manifest(csv_path)[0]["path"] == str(d / "a.mp4")
    items = discover([str(tmp_path / "raw")], str(csv_path), split="train")
    items += discover(manifest=str(jsonl))
    kinds = {(i.path.rsplit("/", 1)[-1], i.kind) for i in items}
    assert ("c.txt", "video") not in kinds and ("d.PNG", "image") in kinds
    dups = [i for i in discover([str(tmp_path / "raw")], str(csv_path)) if i.duplicate_of]
    assert len(dups) == 1 and dups[0].path == str(d / "a.mp4") and dups[0].uid.endswith(".dup1")
    first = discover([str(tmp_path / "raw")])[0]
    assert first.identity == first.id and first.dataset == "raw" and first.id == discover([str(d / "a.mp4")])[0].id
    assert discover([str(tmp_path / "raw")], identity_from="parent")[0].identity == "id 1"
    # SLURM slices: a partition, deterministic, balanced
    all_items = discover([str(tmp_path / "raw")], str(csv_path))
    slices = [task_slice(all_items, k, 3) for k in range(3)]
    assert sorted(i.uid for s in slices for i in s) == sorted(i.uid for i in all_items)
    assert max(map(len, slices)) - min(map(len, slices)) <= 1
    assert [i.uid for i in task_slice(all_items, 1, 3)] == [i.uid for i in slices[1]]
    with pytest.raises(ValueError):
        task_slice(all_items, 3, 3)


def test_chunk_bounds():
    assert chunk_bounds(0, 64) == []
    assert chunk_bounds(64, 64) == [(0, 64)]
    assert chunk_bounds(100, 64) == [(0, 50), (50, 100)]
    b = chunk_bounds(1000, 64)
    assert b[0][0] == 0 and b[-1][1] == 1000 and all(0 < e - s <= 64 for s, e in b)


def test_streamed_smoothing_equals_batch_smoothing():
    """ClipBuilder crops each frame as soon as 4 sigma of look-ahead is known; result = smoothing the whole clip."""
    frames = face_frames(20, size=256, face_px=90)
    with FaceDetector(video=True) as det:
        faces = [det.detect(f)[0] for f in frames]
    cfg = CropConfig(size=128, smooth_seconds=0.2)
    builder = ClipBuilder(cfg, fps=10.0)
    for i, (f, face) in enumerate(zip(frames, faces, strict=True)):
        builder.add(i, f, face)
        assert len(builder._pending) <= builder.radius + 1  # bounded memory: only the look-ahead is held
    clip = builder.end()
    raw = np.stack([crop_params_from_landmarks(f.landmarks) for f in faces])
    smooth = smooth_crop_params(raw, sigma=2.0)
    for t, cf in enumerate(clip.frames):
        a = cf.affine[:, :2]
        size = 128 / np.sqrt(abs(np.linalg.det(a)))
        assert size == pytest.approx(smooth[t, 2], rel=1e-6)
        centre = np.linalg.solve(a, np.array([64.0, 64.0]) - cf.affine[:, 2])
        np.testing.assert_allclose(centre, smooth[t, :2], atol=1e-6)
    assert builder.end() is None and builder.segment == 1


def _photo_frames(rgb: np.ndarray, n: int, size: int = 256) -> list[np.ndarray]:
    """``n`` frames of a photo's face centred in a ``size``² frame (face ~100 px), with a slight drift."""
    with FaceDetector() as det:
        f = det.detect(rgb)[0]
    cx, cy = (f.box[:2] + f.box[2:]) / 2
    out = []
    for t in range(n):
        m = np.array([[100 / f.size, 0, 0], [0, 100 / f.size, 0]])
        m[:, 2] = np.array([size / 2 + t, size * 0.45]) - m[:, :2] @ np.array([cx, cy])
        out.append(cv2.warpAffine(rgb, m, (size, size), borderMode=cv2.BORDER_REFLECT))
    return out


def test_scene_cuts_and_max_clip_length_split_clips(tmp_path):
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    frames = _photo_frames(skimage.data.astronaut(), 10) + _photo_frames(hopper, 10)
    write_mp4(frames, tmp_path / "cut.mp4", 10)
    item = discover([str(tmp_path / "cut.mp4")])[0]
    base = {"min_clip_frames": 4, "min_clip_seconds": 0.0, "identity": False}
    cfg = ProcessConfig(decode={"scene_cut": True}, filters=FilterConfig(**base))
    rec, path = process_input(item, cfg, str(tmp_path))
    assert rec["status"] == "ok" and rec["clip_lengths"] == [10, 10] and rec["drop_frames"] == {}
    keys = [s["__key__"] for s in read_samples(path)]
    assert keys == [f"{item.id}_000_000", f"{item.id}_001_000"]
    # clips stay shorter than max_clip_seconds: 20 frames at 10 fps with a 0.5 s limit -> clips of 4 frames
    cfg = ProcessConfig(decode={"scene_cut": True, "max_clip_seconds": 0.5}, filters=FilterConfig(**base))
    rec, _ = process_input(item, cfg, str(tmp_path))
    assert rec["clip_lengths"] == [4, 4, 4, 4] and rec["drop_clips"] == {"too_short": 2}  # 4 + 4 + 2 per scene
    assert sum(rec["clip_lengths"]) + rec["drop_frames"].get("too_short", 0) == 20


@pytest.mark.skipif(not IdentityEncoder.available(), reason="dlib-bin + face_recognition_models not installed")
def test_identity_descriptors_separate_people():
    import matplotlib.cbook as cbook
    from PIL import Image

    with cbook.get_sample_data("grace_hopper.jpg") as f:
        hopper = np.asarray(Image.open(f).convert("RGB"))
    enc = IdentityEncoder()
    with FaceDetector() as det:
        desc = []
        for img in (
            _photo_frames(skimage.data.astronaut(), 6)[0],
            _photo_frames(skimage.data.astronaut(), 6)[5],
            hopper,
        ):
            desc.append(enc.encode(img, det.detect(img)[0].landmarks))
    assert identity_consistent(desc[:2], 0.6)[0]
    ok, dist = identity_consistent(desc, 0.6)
    assert not ok and dist > 0.6
