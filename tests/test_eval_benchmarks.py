"""The paper's benchmark sets as eval/data choices: ``lp-eval eval/data=talkinghead1kh eval.data.root=...`` runs on a
folder laid out as TalkingHead-1KH's scripts leave it (clips cut by ffmpeg from the shared real faces), with FFHQ's
first images as cross-reenactment sources; vfhq has no cross-reenactment (as in the paper)."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from lp_eval.cli import CONF_DIR, evaluate
from omegaconf import OmegaConf
from PIL import Image

from lp_train.checkpoint import save_model

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "../shared/data/faces"
TUBES = ("0ZfSOArZaP8_0003_S12_E29_L810_T170_R1290_B650", "1a2B3c4D5e6_0000_S0_E40_L700_T150_R1180_B630")


def compose_eval(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("eval", overrides=overrides)


def test_benchmark_configs_compose():
    th = compose_eval(["checkpoint=x", "eval/data=talkinghead1kh", "eval.data.root=/d/th", "eval.data.ffhq_root=/d/f"])
    p = th.eval.protocols
    assert p.self_reenactment.videos == "/d/th/val/cropped_clips" and p.self_reenactment.dataset == "talkinghead1kh"
    assert p.cross_reenactment.enabled and p.cross_reenactment.num_sources == 50
    assert p.cross_reenactment.sources == "/d/f/images1024x1024/00000"
    th = compose_eval(["checkpoint=x", "eval/data=talkinghead1kh", "eval.data.root=/d/th"])  # no FFHQ: Table 2 only
    assert not th.eval.protocols.cross_reenactment.enabled and th.eval.protocols.self_reenactment.enabled
    OmegaConf.to_container(th, resolve=True)  # nothing left unresolvable (the reports resolve the whole config)
    assert th.eval.eval_size == 256  # the paper compares at 256²
    vf = compose_eval(["checkpoint=x", "eval/data=vfhq", "eval.data.root=/d/vfhq_test"])
    assert vf.eval.protocols.self_reenactment.videos == "/d/vfhq_test"
    assert vf.eval.protocols.cross_reenactment.enabled is False  # Table 3 is TalkingHead-1KH only
    folders = compose_eval(["checkpoint=x", "eval/data=faces"])  # other data choices keep both protocols
    assert folders.eval.protocols.cross_reenactment.enabled is True
    assert folders.eval.protocols.self_reenactment.dataset is None


@pytest.fixture(scope="module")
def layout(tmp_path_factory) -> tuple[Path, Path]:
    """<th>/val/cropped_clips/<tube>.mp4 (1 s, 128², cut by ffmpeg) and <ffhq>/images1024x1024/00000/0000N.png."""
    if not (FACES / "videos").is_dir():
        pytest.skip(f"real test faces not found at {FACES.resolve()}")
    base = tmp_path_factory.mktemp("bench")
    clips = base / "th1kh" / "val" / "cropped_clips"
    clips.mkdir(parents=True)
    for tube, src in zip(TUBES, ("d0.mp4", "d11.mp4"), strict=True):
        cmd = ["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(FACES / "videos" / src), "-t", "1",
               "-vf", "scale=128:128", "-an", "-c:v", "libx264", "-pix_fmt", "yuv420p"]  # fmt: skip
        cmd.append(str(clips / f"{tube}.mp4"))
        subprocess.run(cmd, check=True)
    images = base / "ffhq" / "images1024x1024" / "00000"
    images.mkdir(parents=True)
    for i, src in enumerate(("s0.jpg", "s1.jpg", "s2.jpg")):
        Image.open(FACES / "images" / src).convert("RGB").resize((256, 256)).save(images / f"{i:05d}.png")
    return base / "th1kh", base / "ffhq"


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A just-initialised tiny model."""
    cfg = compose_eval(["model=tiny", "checkpoint=x"])
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_init.pt"
    save_model(hydra.utils.instantiate(cfg.model), path, OmegaConf.to_container(cfg.model))
    return path


def _overrides(th: Path, ffhq: Path | None, ckpt: Path, out: Path) -> list[str]:
    """The benchmark choice (as a user types it) + a just-initialised tiny model and cheap metrics."""
    return [
        "eval/data=talkinghead1kh", f"eval.data.root={th}", *([f"eval.data.ffhq_root={ffhq}"] if ffhq else []),
        "model=tiny", f"checkpoint={ckpt}", "weights=random", "eval/protocols=tiny", "eval/metrics=tiny", "device=cpu",
        f"out_dir={out}", f"eval.cache_dir={out.parent / 'cache'}", "eval.protocols.self_reenactment.max_frames=2",
        "eval.protocols.cross_reenactment.max_frames=2", "eval.protocols.self_reenactment.metrics=[psnr,l1]",
        "eval.protocols.cross_reenactment.metrics=[psnr]", "eval.report.grid_frames=2", "eval.report.mp4_videos=0",
        "eval.wandb.enabled=false",
    ]  # fmt: skip


def _check_reports(out: Path, th: Path, cross: bool = True) -> None:
    self_rows = list(csv.DictReader((out / "self_reenactment" / "per_video.csv").open()))
    assert sorted(row["driving"] for row in self_rows) == sorted(TUBES)  # the val tubes, found by the layout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["protocols"]["self_reenactment"]["metrics"]["psnr"]["frames"] == 4
    if not cross:
        assert list(summary["protocols"]) == ["self_reenactment"]
        return
    cross_rows = list(csv.DictReader((out / "cross_reenactment" / "per_video.csv").open()))
    assert sorted(row["source"] for row in cross_rows) == ["00000", "00001"]  # FFHQ's first images, by name
    for proto in ("self_reenactment", "cross_reenactment"):
        settings = summary["protocols"][proto]["settings"]
        assert settings["dataset"] == "talkinghead1kh" and settings["videos"] == str(th / "val" / "cropped_clips")


def test_evaluate_on_a_talkinghead1kh_layout(layout, tiny_checkpoint, tmp_path):
    """What ``lp-eval eval/data=talkinghead1kh eval.data.root=...`` runs (its main only composes and calls this)."""
    th, ffhq = layout
    evaluate(compose_eval(_overrides(th, ffhq, tiny_checkpoint, tmp_path / "eval")))
    _check_reports(tmp_path / "eval", th)


@pytest.mark.slow
def test_lp_eval_cli_on_a_talkinghead1kh_layout(layout, tiny_checkpoint, tmp_path):
    """``lp-eval eval/data=talkinghead1kh eval.data.root=<folder>`` as typed (a fresh process: ~1 min of imports on a
    busy 2-core machine): without FFHQ sources, Table 2 (self-reenactment) alone."""
    th, _ = layout
    cmd = [sys.executable, "-m", "lp_eval", *_overrides(th, None, tiny_checkpoint, tmp_path / "eval")]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    _check_reports(tmp_path / "eval", th, cross=False)
