"""lp-eval end to end (issue 5, Must show 3): both protocols on the shared real faces with an untrained tiny model ->
per-video CSV, summary JSON, paper-layout Markdown, offline wandb run, sample grid PNG, mp4, metric-*.jsonl;
resume skips finished videos; an oracle model scores perfectly through the whole pipeline; compare builds one
table across runs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import hydra
import pytest
import torch
from hydra import compose, initialize_config_dir
from lp_eval import protocols as P
from lp_eval.cli import CONF_DIR, evaluate, main
from lp_eval.compare import compare_runs
from lp_eval.registry import PROTOCOLS, get_protocol, register_protocol
from lp_eval.report import markdown_tables, protocol_summary
from omegaconf import OmegaConf

from lp_train.checkpoint import save_model
from lp_train.metrics.controls import gaussian_blur

ROOT = Path(__file__).resolve().parents[1]
FACES = ROOT / "../shared/data/faces"


def compose_eval(overrides: list[str]):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("eval", overrides=overrides)


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """An untrained tiny model saved with lp_train.checkpoint.save_model (stand-in for a trained one)."""
    cfg = compose_eval(["model=tiny", "checkpoint=x"])
    torch.manual_seed(0)
    model = hydra.utils.instantiate(cfg.model)
    path = tmp_path_factory.mktemp("ckpt") / "tiny_untrained.pt"
    save_model(model, path, OmegaConf.to_container(cfg.model))
    return path


def tiny_overrides(ckpt: Path, out: Path, cache: Path) -> list[str]:
    return [
        "model=tiny", "weights=random", "eval/data=faces", "eval/protocols=tiny", "eval/metrics=tiny", "device=cpu",
        f"checkpoint={ckpt}", f"out_dir={out}", f"eval.cache_dir={cache}", f"eval.data.videos={FACES / 'videos'}",
        f"eval.data.sources={FACES / 'images'}", "eval.protocols.self_reenactment.max_frames=2",
        "eval.protocols.cross_reenactment.max_frames=2", "eval.report.grid_frames=2", "eval.report.mp4_videos=1",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_checkpoint):
    if not (FACES / "videos").is_dir():
        pytest.skip(f"real test faces not found at {FACES.resolve()}")
    out = tmp_path_factory.mktemp("eval_run")
    cfg = compose_eval(tiny_overrides(tiny_checkpoint, out, out / "cache"))
    return out, evaluate(cfg), cfg


def test_both_protocols_write_every_report(tiny_run, tiny_checkpoint):
    out, summary, _ = tiny_run
    # per-video CSVs: self = 2 videos, cross = 2 sources x 1 video
    for proto, n in (("self_reenactment", 2), ("cross_reenactment", 2)):
        lines = (out / proto / "per_video.csv").read_text().splitlines()
        assert len(lines) == n + 1 and lines[0].startswith("key,source,driving,frames,seconds")
        grid = cv2.imread(str(out / proto / "samples_grid.png"))
        assert grid is not None and grid.shape[0] == 2 * n * 256 and grid.shape[1] == 3 * 256
        assert list((out / proto / "videos").glob("*.mp4"))
    # summary JSON: values, frame counts, calibration and provenance
    s = json.loads((out / "summary.json").read_text())
    assert s["checkpoint"] == str(tiny_checkpoint.resolve()) and s["run_name"] == "tiny_untrained"
    self_m, cross_m = s["protocols"]["self_reenactment"]["metrics"], s["protocols"]["cross_reenactment"]["metrics"]
    assert set(self_m) == {"psnr", "ssim", "lpips", "l1", "csim", "mae_gaze"}
    assert set(cross_m) == {"fid", "csim", "aed_expression", "apd_pose", "mae_gaze"}
    assert self_m["psnr"]["frames"] == 4 and 0 < self_m["psnr"]["value"] < 40 and self_m["psnr"]["calibrated"]
    assert self_m["lpips"]["calibrated"] is False and cross_m["fid"]["calibrated"] is False  # weights=random
    assert cross_m["fid"]["info"]["settings"]["n_generated"] == 4 and cross_m["fid"]["value"] >= 0
    assert "source images (2 from" in s["protocols"]["cross_reenactment"]["settings"]["fid_reference_used"]
    assert s["environment"]["packages"]["lpips"] and (out / "runinfo.json").is_file()
    # Markdown in the paper's layout: uncalibrated metrics never in the headline table
    md = (out / "report.md").read_text()
    head, _, rest = md.partition("Uncalibrated")
    assert "| Method | PSNR ↑ | SSIM ↑ | L1 ↓ | CSIM ↑ | MAE (gaze °) ↓ |" in head and "LPIPS ↓" not in head
    assert "| LPIPS ↓ |" in rest and "| FID ↓ |" in rest
    # offline wandb run with the tables
    runs = list((out / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("run-*.wandb"))
    assert summary["wandb_dir"] and Path(summary["wandb_dir"]).is_dir()
    # metric-<name>.jsonl with the checkpoint and exact settings
    line = json.loads((out / "metric-ssim.jsonl").read_text().splitlines()[-1])
    assert line["checkpoint"] == str(tiny_checkpoint.resolve()) and line["info"]["settings"]["sigma"] == 1.5


def test_resume_skips_finished_videos(tiny_run, tiny_checkpoint, monkeypatch):
    out, summary, _ = tiny_run
    resumed = out.parent / "resumed"
    shutil.copytree(out, resumed)
    csv = resumed / "self_reenactment" / "per_video.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("\n".join(lines[:-1]) + "\n")  # "preempted" before the last video finished
    calls = []
    real = P._run_item
    monkeypatch.setattr(P, "_run_item", lambda *a, **k: calls.append(1) or real(*a, **k))
    cfg = compose_eval(tiny_overrides(tiny_checkpoint, resumed, out / "cache") + [
        "eval.protocols.cross_reenactment.enabled=false", "eval.wandb.enabled=false"])  # fmt: skip
    again = evaluate(cfg)
    assert len(calls) == 1  # only the missing video was evaluated
    strip = lambda rows: [r.split(",")[:4] + r.split(",")[5:] for r in rows]  # noqa: E731 - all but "seconds"
    assert strip(csv.read_text().splitlines()) == strip(lines)
    for k, v in summary["protocols"]["self_reenactment"]["metrics"].items():
        assert again["protocols"]["self_reenactment"]["metrics"][k]["value"] == pytest.approx(v["value"], nan_ok=True)


class OracleReenactor:
    """A perfect model: returns the driving frames (all sizes equal, so generated == ground truth)."""

    relative, stitching = True, False

    def set_source(self, source):
        pass

    def drive(self, driving):
        return driving


def test_oracle_model_scores_perfectly(tmp_path):
    """Identical generated and ground-truth frames through the protocol: PSNR inf, SSIM 1, LPIPS / L1 / AED / APD /
    MAE / FID 0, CSIM 1 (Must show 2 inside the pipeline, on real faces)."""
    if not (FACES / "videos").is_dir():
        pytest.skip(f"real test faces not found at {FACES.resolve()}")
    cfg = compose_eval(
        [
            "weights=random",
            "eval/data=faces",
            "eval/protocols=tiny",
            "eval/metrics=tiny",
            "checkpoint=x",
            f"out_dir={tmp_path}",
            "eval.report.mp4_videos=0",
        ]
    )
    pcfg = cfg.eval.protocols.self_reenactment
    pcfg.videos, pcfg.max_videos, pcfg.max_frames = str(FACES / "videos"), 1, 2
    pcfg.metrics = ["psnr", "ssim", "lpips", "l1", "csim", "aed_expression", "apd_pose", "mae_gaze", "fid"]
    ctx = P.EvalContext(cfg, OracleReenactor(), torch.device("cpu"), tmp_path, 256, 256, 256, 4)
    res = get_protocol("self_reenactment")(ctx, pcfg)
    v = {k: s["value"] for k, s in res.summary.items()}
    assert v["psnr"] == float("inf") and v["ssim"] == pytest.approx(1.0) and v["csim"] == pytest.approx(1.0)
    for k in ("lpips", "l1", "aed_expression", "apd_pose", "mae_gaze", "fid"):  # FID: vs the ground-truth frames
        assert v[k] == pytest.approx(0.0, abs=1e-5), k
    assert res.summary["aed_expression"]["frames"] == 2  # faces found in both frames


class SourceReenactor(OracleReenactor):
    """Returns the source frame (``sigma`` 0) or the source blurred at ``sigma``, whatever the driving frame."""

    def __init__(self, sigma: float = 0.0):
        self.sigma = sigma

    def set_source(self, source):
        self.source = gaussian_blur(source, self.sigma)

    def drive(self, driving):
        return self.source.expand(len(driving), -1, -1, -1)


@pytest.fixture(scope="module")
def cached_crops():
    """``face_crops`` memoised for the module: the three control models read the same clips once."""
    cache, real = {}, P.face_crops

    def crops(clip, *args):
        key = (str(clip.path), *map(str, args))
        if key not in cache:
            cache[key] = real(clip, *args)
        return cache[key]

    return crops


@pytest.mark.parametrize("kind", ["oracle", "copy", "blur"])
def test_self_reenactment_reports_the_model_beside_its_controls(tmp_path, kind, cached_crops, monkeypatch):
    """A copy model equals ``copy_source`` exactly, a blur model equals ``blur_matched_copy_source``, a perfect
    model beats both; the controls reach summary.json's layout and report.md."""
    if not (FACES / "videos").is_dir():
        pytest.skip(f"real test faces not found at {FACES.resolve()}")
    cfg = compose_eval(["weights=random", "eval/data=faces", "eval/protocols=tiny", "eval/metrics=tiny", "checkpoint=x",
                        f"out_dir={tmp_path}", "eval.report.mp4_videos=0"])  # fmt: skip
    pcfg = cfg.eval.protocols.self_reenactment
    pcfg.videos, pcfg.max_videos, pcfg.max_frames, pcfg.metrics = str(FACES / "videos"), 2, 4, ["l1"]
    reenactor = {"oracle": OracleReenactor(), "copy": SourceReenactor(), "blur": SourceReenactor(1.5)}[kind]
    monkeypatch.setattr(P, "face_crops", cached_crops)
    ctx = P.EvalContext(cfg, reenactor, torch.device("cpu"), tmp_path, 256, 256, 256, 3)
    res = get_protocol("self_reenactment")(ctx, pcfg)
    table = res.controls
    assert set(table["clips"]) == {r["key"] for r in res.rows} and table["groups"]["all"]["pairs"] == 8
    assert table["groups"]["all"]["large_motion"]["pairs"] == 3  # the top third of 8 frames
    assert table["groups"]["all"]["model"]["l1"] == pytest.approx(res.summary["l1"]["value"], rel=1e-6)
    for e in [table["groups"]["all"], *table["clips"].values()]:
        model, copy, blur = e["model"], e["copy_source"], e["blur_matched_copy_source"]
        if kind == "copy":
            assert model == copy and e["large_motion"]["model"] == e["large_motion"]["copy_source"]
        elif kind == "blur":
            assert model["l1"] == pytest.approx(blur["l1"], rel=1e-3) and model["l1"] > copy["l1"]
            assert model["l1_low"] == pytest.approx(blur["l1_low"], rel=1e-3)
        else:
            assert model["l1"] < 1e-6 < copy["l1"] and model["l1"] < blur["l1"]
            if e["large_motion"]["pairs"]:
                assert e["large_motion"]["model"]["l1"] < 1e-6 < e["large_motion"]["copy_source"]["l1"]
    if kind == "blur":
        assert all(c["blur_sigma"] == pytest.approx(1.5, abs=0.02) for c in table["clips"].values())
    summary = {"run_name": kind, "protocols": {"self_reenactment": protocol_summary(res)}}
    assert summary["protocols"]["self_reenactment"]["controls"] == table
    md = markdown_tables({kind: summary}, "self_reenactment")
    for name in ("**all**", *table["clips"]):
        for method in ("model", "copy_source", "blur_matched_copy_source"):
            assert f"| {name} | {method} |" in md
    row = next(iter(res.rows))
    assert {"copy_source_l1", "blur_matched_copy_source_l1", "l1_low", "reconstruction_floor"} <= set(row)


def test_compare_builds_one_table(tiny_run, tmp_path, capsys):
    out, _, _ = tiny_run
    other = json.loads((out / "summary.json").read_text())
    other["run_name"] = "better"
    for m in other["protocols"]["self_reenactment"]["metrics"].values():
        m["value"] = m["value"] * (1.1 if m["higher_is_better"] else 0.9)
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "summary.json").write_text(json.dumps(other))
    text = compare_runs([str(out), str(tmp_path / "b")])
    assert "| tiny_untrained |" in text and "| better |" in text and "**" in text
    psnr_better = [ln for ln in text.splitlines() if ln.startswith("| better |")][1]  # [0]: the runs list
    assert psnr_better.split("|")[2].strip().startswith("**")  # PSNR ↑: the higher one is bold
    main(["compare", str(out), str(tmp_path / "b"), "--names", "a", "b", "--out", str(tmp_path / "cmp.md")])
    assert "| a |" in (tmp_path / "cmp.md").read_text() and "| b |" in capsys.readouterr().out


def test_registry_and_config_groups():
    assert {"self_reenactment", "cross_reenactment"} <= set(PROTOCOLS) or get_protocol("self_reenactment")
    with pytest.raises(KeyError, match="registered"):
        get_protocol("nope")

    @register_protocol("my_bench")
    def my_bench(ctx, cfg):
        return None

    assert get_protocol("my_bench") is my_bench
    for group in ("default", "tiny", "arcface", "smirk"):
        cfg = compose_eval([f"eval/metrics={group}", "checkpoint=x", "eval/data=faces"])
        assert set(cfg.eval.metrics.metrics) >= {"psnr", "ssim", "fid", "csim"}
    cfg = compose_eval(["eval/data=shards", "eval.data.shards=/s", "eval.data.sources=/i", "checkpoint=x"])
    assert cfg.eval.protocols.self_reenactment.shards == "/s"


def test_shard_inputs(tmp_path):
    from lp_eval.inputs import list_shard_clips

    from lp_train.data.sample_shards import synthetic_samples, write_shards

    write_shards(synthetic_samples(num_identities=2, frames_per_clip=3, num_images=1, size=64), tmp_path)
    clips = list_shard_clips(tmp_path)
    assert len(clips) == 2 and all(c.kind == "shard" for c in clips)  # the one-frame image sample is not a video
    frames = clips[0].read(max_frames=2)
    assert len(frames) == 2 and frames[0].shape == (64, 64, 3)


def test_uncropped_video_is_face_cropped():
    from lp_eval.inputs import face_crops, list_videos

    clip = next((c for c in list_videos(FACES / "videos") if c.name == "s13"), None) if FACES.is_dir() else None
    if clip is None:
        pytest.skip("s13.mp4 not in the shared faces")
    first = clip.read(max_frames=1)[0]
    assert first.shape[0] != first.shape[1]
    crops = face_crops(clip, "auto", 128, max_frames=2, stride=5)
    assert len(crops) == 2 and crops[0].shape == (128, 128, 3)


def test_cli_composes(tmp_path):
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "lp_eval",
            "model=tiny",
            "checkpoint=x",
            "eval/data=faces",
            f"out_dir={tmp_path}",
            "--cfg",
            "job",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert "cross_reenactment" in r.stdout and "fid_reference" in r.stdout
