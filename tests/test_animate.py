"""lp-animate (issue 7): real portraits and clips from ../shared/data/faces -> mp4 with the driving clip's frame
count and fps (ffprobe), stitching on and off, paste-back, and clear errors for bad input."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lp_train.animate import animate
from lp_train.animate_io import AnimateError, demo_inputs, probe_video, read_video
from lp_train.checkpoint import save_model
from lp_train.face.crop import crop_affine, crop_params_from_landmarks, warp_crop
from lp_train.face.track import feather_mask, paste_back
from lp_train.lit.stage2 import init_head

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
FACES = ROOT / "../shared/data/faces"
PORTRAIT = FACES / "images/s0.jpg"  # 600x704 painting
CLIP = FACES / "videos/d0.mp4"  # 512², 25 fps, 78 frames: the shortest clip


pytestmark = pytest.mark.usefixtures("lp_data_one_thread")  # tiny networks: far faster on one thread


@pytest.fixture(scope="module")
def faces():
    if not CLIP.is_file() or not PORTRAIT.is_file():
        pytest.skip(f"real test faces not found at {FACES.resolve()} (the shared data folder beside the repo)")
    return FACES


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory) -> Path:
    """A tiny model file with random weights, stitching head made non-zero so that stitching changes the output."""
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(CONF / "model"), version_base="1.3"):
        model = instantiate(compose(config_name="tiny"))
    for net in (model.stitching_retargeting_module.stitching, model.stitching_retargeting_module.eye):
        init_head(net)  # hidden layers random, last layer zero
        last = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
        torch.nn.init.normal_(last.weight, std=0.02)
    path = tmp_path_factory.mktemp("animate") / "tiny.pt"
    save_model(model, path)
    return path


def config(ckpt: Path, out: Path, *overrides: str):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("animate", overrides=["model=tiny", f"checkpoint={ckpt}", f"output={out}", "device=cpu",
                                             *overrides])  # fmt: skip


def ffprobe(path: Path) -> dict:
    out = subprocess.run(
        ["ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0", "-show_entries",
         "stream=nb_read_frames,r_frame_rate,avg_frame_rate,width,height,codec_name", "-of", "json", str(path)],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return json.loads(out)["streams"][0]


def digest(path: Path) -> list[str]:
    return [hashlib.md5(f.tobytes()).hexdigest() for f in read_video(path)]


def test_portrait_driven_by_clip_capped_with_and_without_stitching(faces, tiny_ckpt, tmp_path):
    """Must-show 3 (capped): 8 driving frames -> an mp4 of 8 frames at the clip's 25 fps and the source's size
    (pasted back into the full frame), with stitching on and off (which changes the result)."""
    digests = []
    for stitching in (True, False):
        cfg = config(tiny_ckpt, tmp_path / f"s{stitching}.mp4", f"source={PORTRAIT}", f"driving={CLIP}", "max_frames=8",
                     f"stitching={stitching}")  # fmt: skip
        out = animate(cfg)
        info = ffprobe(out)
        assert int(info["nb_read_frames"]) == 8
        assert info["r_frame_rate"] == "25/1" == info["avg_frame_rate"] and info["codec_name"] == "h264"
        assert (int(info["width"]), int(info["height"])) == (600, 704)
        digests.append(digest(out))
    assert digests[0] != digests[1]


@pytest.fixture(scope="module")
def short_clip(faces, tmp_path_factory) -> Path:
    """The first 12 frames of the real d0 clip, re-encoded (25 fps kept)."""
    out = tmp_path_factory.mktemp("clip") / "short.mp4"
    cmd = [
        "ffmpeg",
        "-v",
        "error",
        "-i",
        str(CLIP),
        "-frames:v",
        "12",
        "-c:v",
        "libx264",
        "-pix_fmt",
        "yuv420p",
        str(out),
    ]
    subprocess.run(cmd, check=True)
    return out


def test_full_count_path_on_a_short_clip(tiny_ckpt, short_clip, tmp_path):
    """Must-show 3 (uncapped): every frame of the driving clip, its fps; side-by-side source | driving | result;
    eyes retargeted to the driving frame's own ratio, lips to a fixed target."""
    out = animate(config(tiny_ckpt, tmp_path / "full.mp4", f"source={PORTRAIT}", f"driving={short_clip}",
                         "side_by_side=true", "eye_ratio=driving", "lip_ratio=0.3"))  # fmt: skip
    info, src = ffprobe(out), probe_video(short_clip)
    assert int(info["nb_read_frames"]) == src.num_frames == 12
    assert Fraction(info["r_frame_rate"]) == Fraction(src.fps) == 25
    assert int(info["height"]) == 704 and int(info["width"]) == 600 + 704 + 600  # source | driving | result


@pytest.mark.slow
def test_full_real_clip_frame_count_and_fps(faces, tiny_ckpt, tmp_path):
    """The whole 78-frame d0 clip, uncapped."""
    out = animate(config(tiny_ckpt, tmp_path / "full.mp4", f"source={PORTRAIT}", f"driving={CLIP}"))
    info = ffprobe(out)
    assert int(info["nb_read_frames"]) == probe_video(CLIP).num_frames == 78
    assert Fraction(info["r_frame_rate"]) == 25


def test_offline_demo_inputs(tiny_ckpt, tmp_path):
    """``python -m lp_train.animate_io DIR`` inputs (no shared data): a pseudo clip of the bundled astronaut."""
    source, driving = demo_inputs(tmp_path / "in", frames=8)
    out = animate(config(tiny_ckpt, tmp_path / "demo.mp4", f"source={source}", f"driving={driving}"))
    assert int(ffprobe(out)["nb_read_frames"]) == 8 and Fraction(ffprobe(out)["r_frame_rate"]) == 25


def test_driving_image_writes_an_image(faces, tiny_ckpt, tmp_path):
    out = animate(config(tiny_ckpt, tmp_path / "one.png", f"source={PORTRAIT}", f"driving={FACES / 'images/d12.jpg'}"))
    assert out.is_file() and out.suffix == ".png"


def test_paste_back_of_the_crop_itself_restores_the_frame(faces):
    from lp_train.animate_io import read_image
    from lp_train.face.detect import FaceDetector

    rgb = read_image(PORTRAIT)
    with FaceDetector() as det:
        lmk = det.detect(rgb)[0].landmarks
    aff = crop_affine(crop_params_from_landmarks(lmk), 256)
    mask = feather_mask(256, 0.1)
    assert mask[128, 128] == 1 and mask[0, 0] < 0.01 and mask[128, 2] < mask[128, 20] <= 1
    out = paste_back(rgb, warp_crop(rgb, aff, 256), aff, mask)
    face = slice(int(lmk[:, 1].min()), int(lmk[:, 1].max())), slice(int(lmk[:, 0].min()), int(lmk[:, 0].max()))
    assert np.abs(out[face].astype(int) - rgb[face]).mean() < 6  # resampled twice, otherwise the same pixels
    far = out[-20:, :20]  # far from the face: untouched
    assert np.array_equal(far, rgb[-20:, :20])


def test_clear_errors(faces, tiny_ckpt, tmp_path):
    blank = tmp_path / "blank.png"
    from PIL import Image

    Image.fromarray(np.full((200, 200, 3), 128, np.uint8)).save(blank)
    with pytest.raises(AnimateError, match="no face found in source"):
        animate(config(tiny_ckpt, tmp_path / "a.mp4", f"source={blank}", f"driving={CLIP}", "max_frames=2"))
    fake = tmp_path / "fake.mp4"
    fake.write_text("not a video")
    with pytest.raises(AnimateError, match="unreadable video"):
        animate(config(tiny_ckpt, tmp_path / "b.mp4", f"source={PORTRAIT}", f"driving={fake}"))
    with pytest.raises(AnimateError, match="not found"):
        animate(config(tiny_ckpt, tmp_path / "c.mp4", f"source={tmp_path / 'nope.jpg'}", f"driving={CLIP}"))
    with pytest.raises(AnimateError, match="model="):  # a tiny checkpoint read as the official architecture
        animate(config(tiny_ckpt, tmp_path / "d.mp4", "model=official", f"source={PORTRAIT}", f"driving={CLIP}"))
    base_only = tmp_path / "base.pt"
    sd = {k: v for k, v in torch.load(tiny_ckpt, weights_only=True)["state_dict"].items() if "stitching_ret" not in k}
    torch.save({"format": "lp-train-model/1", "state_dict": sd, "config": {}}, base_only)
    with pytest.raises(AnimateError, match="no stitching/retargeting weights"):
        animate(config(base_only, tmp_path / "e.mp4", f"source={PORTRAIT}", f"driving={CLIP}", "max_frames=2"))
    assert not list(tmp_path.glob("*.mp4.tmp*")) and not list(tmp_path.glob(".*tmp*"))  # nothing half-written


def test_console_script_runs(faces, tiny_ckpt, tmp_path):
    """``python -m lp_train.animate`` (= the lp-animate console script) with Hydra overrides; errors exit non-zero."""
    out = tmp_path / "cli.mp4"
    args = [sys.executable, "-m", "lp_train.animate", "model=tiny", f"checkpoint={tiny_ckpt}", f"source={PORTRAIT}",
            f"driving={CLIP}", f"output={out}", "max_frames=3", "device=cpu", f"hydra.run.dir={tmp_path}"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(args, check=True, capture_output=True, env=env)
    assert int(ffprobe(out)["nb_read_frames"]) == 3
    missing = [*args[:6], f"driving={tmp_path / 'missing.mp4'}", *args[7:]]
    bad = subprocess.run(missing, capture_output=True, text=True, env=env)
    assert bad.returncode != 0 and "lp-animate: error: driving not found" in bad.stderr


def test_official_release_layout_and_lightning_checkpoint(tiny_ckpt, tmp_path):
    """The official five-.pth folder layout and a Lightning .ckpt (keys under ``model.``) both animate."""
    from lp_train.checkpoint import read_model_state, write_official_dir

    sd = read_model_state(tiny_ckpt)
    write_official_dir(sd, tmp_path / "official")
    assert len(list((tmp_path / "official").rglob("*.pth"))) == 5
    torch.save({"state_dict": {f"model.{k}": v for k, v in sd.items()}}, tmp_path / "run.ckpt")
    source, driving = demo_inputs(tmp_path / "in", frames=3)
    outs = [
        animate(config(ckpt, tmp_path / f"{name}.mp4", f"source={source}", f"driving={driving}", "paste_back=false"))
        for name, ckpt in (
            ("ours", tiny_ckpt),
            ("official", tmp_path / "official"),
            ("lightning", tmp_path / "run.ckpt"),
        )
    ]
    assert digest(outs[0]) == digest(outs[1]) == digest(outs[2])
