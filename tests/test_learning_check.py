"""Held-out self-reenactment tracking (``lp_train.lit.heldout``) and the learning check (``lp_train.learning_check``):
the split keeps held-out frames out of training, the scores equal hand-computed L1s, and a (resumed) run writes the
curve, the table and the plot."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from lp_train.data.sample_shards import synthetic_samples
from lp_train.learning_check import first_frame_pairs, main, split_samples
from lp_train.lit.heldout import heldout_scalars, load_pairs, reenactment_l1
from lp_train.metrics.controls import blur_matched_sigma, gaussian_blur, large_motion_mask, low_res

pytestmark = pytest.mark.usefixtures("lp_data_one_thread")


def test_split_holds_out_clip_tails_and_unseen_identities_without_overlap(caplog):
    samples = list(synthetic_samples(num_identities=3, frames_per_clip=12, num_images=2, size=32))
    train, held, groups = split_samples(samples, unseen=["synthetic-2"], tail=0.3, gap=2)
    assert groups == ["seen", "seen", "unseen"]
    by_key = {m.key: (m, fr) for m, fr, _ in train}
    for (meta, frames, lmks), group in zip(held, groups, strict=True):
        full = next(s for s in samples if s[0].identity == meta.identity)
        if group == "unseen":  # the whole clip, and nothing of it in training
            assert len(frames) == 12 and not any(m.identity == meta.identity for m, _ in by_key.values())
            continue
        head = next(m for m, _ in by_key.values() if m.identity == meta.identity)
        assert head.num_frames == 8 and meta.frame_indices == [10, 11]  # 12 * 0.7 -> 8 frames train, gap 2
        assert head.key != meta.key and meta.chunk_index == 1
        np.testing.assert_array_equal(frames[0], full[1][10])
        np.testing.assert_array_equal(lmks[1], full[2][11])
    assert sum(1 for m, _ in by_key.values() if m.kind == "image") == 2
    with pytest.raises(ValueError, match="not there"):
        split_samples(samples, unseen=["nobody"])
    train, held, groups = split_samples(samples, tail=0.3, gap=3, min_frames=2)  # 12 - 8 - 3 = 1 frame < 2
    assert held == [] and len(train) == len(samples) and "too short" in caplog.text


class _Copy(nn.Module):
    """Predicts the source (or the driving) frame: its L1 is copy-the-source (or 0)."""

    def __init__(self, use_driving: bool = False):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.use_driving = use_driving

    def forward(self, source, driving):
        return {"image": (driving if self.use_driving else source) + self.w}


def test_reenactment_l1_matches_hand_computed_values_and_restores_train_mode():
    g = torch.Generator().manual_seed(0)
    pairs = {
        name: {
            "group": group,
            "source": torch.rand(n, 3, 8, 8, generator=g),
            "driving": torch.rand(n, 3, 8, 8, generator=g),
        }
        for name, group, n in (("a", "seen", 3), ("b", "unseen", 5))
    }
    model = _Copy().train()
    res = reenactment_l1(model, pairs, batch_size=2)
    assert model.training
    for name, clip in pairs.items():
        copy = (clip["source"] - clip["driving"]).abs().mean().item()
        assert res["clips"][name]["l1_copy_source"] == pytest.approx(copy, rel=1e-6)
        assert res["clips"][name]["l1"] == pytest.approx(copy, rel=1e-5)  # the copy model is the copy baseline
    a, b = (pairs[k]["source"].sub(pairs[k]["driving"]).abs().mean().item() for k in "ab")
    assert res["groups"]["all"]["l1_copy_source"] == pytest.approx((3 * a + 5 * b) / 8, rel=1e-6)
    assert res["groups"]["seen"]["pairs"] == 3 and res["groups"]["all"]["ratio"] == pytest.approx(1.0, abs=1e-5)
    bf16 = reenactment_l1(_Copy().to(torch.bfloat16), pairs)  # DeepSpeed bf16 weights: inputs follow their dtype
    assert bf16["groups"]["all"]["l1"] == pytest.approx(res["groups"]["all"]["l1"], rel=1e-2)
    perfect = reenactment_l1(_Copy(use_driving=True), pairs)
    assert perfect["groups"]["all"]["l1"] < 1e-6 and perfect["groups"]["all"]["ratio"] < 1e-5


class _Blur(nn.Module):
    """Reproduces the source blurred at a fixed sigma, whatever the driving frame: appearance, no motion."""

    def __init__(self, sigma: float):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(()))
        self.sigma = sigma

    def forward(self, source, driving):
        return {"image": gaussian_blur(source, self.sigma) + self.w}


def _pairs(size: int = 16) -> dict:
    """Two clips in the paper's layout (one source repeated, different driving frames); the driving frames are a
    shifted source, so the copy baseline has a motion error that grows with the pair index."""
    g = torch.Generator().manual_seed(0)
    pairs = {}
    for name, group, n in (("a", "seen", 4), ("b", "unseen", 6)):
        src = gaussian_blur(torch.rand(1, 3, size, size, generator=g), 0.7)
        drv = torch.cat([torch.roll(src, shifts=(k % 3, k), dims=(2, 3)) for k in range(1, n + 1)])
        pairs[name] = {"group": group, "source": src.expand(n, -1, -1, -1).clone(), "driving": drv}
    return pairs


def test_controls_copy_model_equals_copy_source_blur_model_equals_blur_matched_and_perfect_beats_both():
    pairs = _pairs()
    copy = reenactment_l1(_Copy(), pairs, batch_size=3)
    for e in [*copy["clips"].values(), *copy["groups"].values()]:
        assert e["model"] == e["copy_source"]  # exactly: the same frames, the same arithmetic
        assert e["large_motion"]["model"] == e["large_motion"]["copy_source"]
        assert e["reconstruction_floor"] == 0.0 and e["blur_matched_copy_source"] == e["copy_source"]
    blur = reenactment_l1(_Blur(1.3), pairs, batch_size=4)
    for name, c in blur["clips"].items():
        assert c["blur_sigma"] == pytest.approx(1.3, abs=1e-3) and not c["blur_saturated"]
        for k in ("l1", "l1_low"):
            assert c["model"][k] == pytest.approx(c["blur_matched_copy_source"][k], rel=1e-4)
            assert c["large_motion"]["model"][k] == pytest.approx(c["large_motion"]["blur_matched_copy_source"][k],
                                                                  rel=1e-4)  # fmt: skip
        floor = (gaussian_blur(pairs[name]["source"], 1.3) - pairs[name]["source"]).abs().mean().item()
        assert c["reconstruction_floor"] == pytest.approx(floor, rel=1e-5)
    perfect = reenactment_l1(_Copy(use_driving=True), pairs)
    for e in [*perfect["clips"].values(), *perfect["groups"].values()]:
        assert e["model"]["l1"] < 1e-6 < e["copy_source"]["l1"]
        assert e["blur_matched_copy_source"] == e["copy_source"]  # it copies the source perfectly: floor 0
        if e["large_motion"]["pairs"]:
            assert e["large_motion"]["model"]["l1"] < 1e-6 < e["large_motion"]["copy_source"]["l1"]
    scalars = heldout_scalars(blur)
    assert scalars["heldout/blur_matched_copy_source/l1"] == blur["groups"]["all"]["blur_matched_copy_source"]["l1"]
    assert "heldout/unseen/large_motion/copy_source/l1" in scalars and "heldout/clip/a/copy_source/l1_low" in scalars


def test_large_motion_subset_is_the_top_third_of_copy_source_l1_per_group():
    copy = torch.tensor([0.1, 0.5, 0.2, 0.9, 0.3, 0.4])
    assert large_motion_mask(copy).tolist() == [False, True, False, True, False, False]
    res = reenactment_l1(_Copy(), _pairs())
    a, b, everything = res["clips"]["a"], res["clips"]["b"], res["groups"]["all"]
    assert (a["large_motion"]["pairs"], b["large_motion"]["pairs"], everything["large_motion"]["pairs"]) == (2, 2, 4)
    assert a["large_motion"]["copy_source"]["l1"] > a["copy_source"]["l1"]  # the shifts grow: the end of each clip


def test_blur_matched_sigma_bisects_to_the_target_and_saturates_beyond_reach():
    x = torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(1))
    target = (gaussian_blur(x, 2.2) - x).abs().mean().item()
    sigma, saturated = blur_matched_sigma(x, target)
    assert sigma == pytest.approx(2.2, abs=1e-3) and not saturated
    assert blur_matched_sigma(x, 10.0) == (12.0, True) and blur_matched_sigma(x, 0.0) == (0.0, False)
    assert low_res(x).shape == (2, 3, 3, 3) and torch.allclose(low_res(x)[0, 0, 0, 0], x[0, 0, :8, :8].mean())


def test_load_pairs_names_the_missing_file_and_rejects_bad_content(tmp_path):
    with pytest.raises(FileNotFoundError, match="learning_check"):
        load_pairs(tmp_path / "none.pt")
    torch.save({"a": {"source": torch.zeros(2, 3, 8, 8), "driving": torch.zeros(3, 3, 8, 8)}}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="'a'"):
        load_pairs(tmp_path / "bad.pt")


def test_first_frame_pairs_follow_the_paper_protocol():
    samples = list(synthetic_samples(num_identities=2, frames_per_clip=6, num_images=0, size=32))
    pairs = first_frame_pairs(samples, ["seen", "unseen"])
    assert set(pairs) == {"synthetic-0-tail", "synthetic-1"}
    clip = pairs["synthetic-1"]
    assert clip["source"].shape == (5, 3, 16, 16) and clip["group"] == "unseen"
    assert torch.equal(clip["source"][0], clip["source"][4])  # frame 0 drives nothing: it is every pair's source
    assert not torch.equal(clip["driving"][0], clip["driving"][1])


def test_learning_check_cli_writes_curve_table_plot_and_resumes(tmp_path):
    args = [str(tmp_path), "--synthetic", "--frames-per-clip", "12", "--unseen", "synthetic-3", "--every", "2",
            "data.batch_size=2", "~logger.wandb", "trainer.enable_progress_bar=false", "module.image_every=0",
            "trainer.limit_val_batches=0", "callbacks.model_checkpoint.every_n_train_steps=2",
            "callbacks.model_checkpoint.keep_last=10"]  # fmt: skip
    main([*args, "trainer.max_steps=4"])
    history = json.loads((tmp_path / "run" / "heldout.json").read_text())["history"]
    assert [h["step"] for h in history] == [0, 2, 4]
    assert set(history[0]["groups"]) == {"seen", "unseen", "all"} and history[-1]["groups"]["all"]["pairs"] == 3 + 11
    assert history[-1]["groups"]["all"]["l1"] != history[0]["groups"]["all"]["l1"]  # 4 steps move it off the init
    table = (tmp_path / "learning.md").read_text()
    for method in ("model", "copy_source", "blur_matched_copy_source"):  # the controls are rows beside the model
        assert f"| synthetic-3 | unseen | {method} | 11 |" in table and f"| **all** |  | {method} | 14 |" in table
    assert history[-1]["groups"]["all"]["large_motion"]["pairs"] == 5  # top third of 3 + top third of 11
    assert (tmp_path / "learning.png").stat().st_size > 10_000
    with open(next((tmp_path / "run" / "csv").glob("version_*/metrics.csv"))) as f:
        logged = [r for r in csv.DictReader(f) if r.get("heldout/l1")]
    assert [int(r["step"]) for r in logged] == [0, 2, 4]
    assert float(logged[-1]["heldout/unseen/l1"]) == pytest.approx(history[-1]["groups"]["unseen"]["l1"], rel=1e-6)

    # --prepared: trains on the shards and pairs already in OUT; resume=auto continues from step 4, no duplicate
    main([str(tmp_path), "--prepared", *args[2:], "trainer.max_steps=6"])
    history2 = json.loads((tmp_path / "run" / "heldout.json").read_text())["history"]
    assert [h["step"] for h in history2] == [0, 2, 4, 6]
    assert history2[2] == history[2]

    # rescore: the kept checkpoints (steps 2, 4, 6) give the numbers the callback recorded, the run is untouched
    kept = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("step*.ckpt"))
    assert kept == ["step00000002.ckpt", "step00000004.ckpt", "step00000006.ckpt"]
    before = (tmp_path / "run" / "heldout.json").read_text()
    out = main(["rescore", str(tmp_path), "--dest", str(tmp_path / "rescored")])
    assert (tmp_path / "run" / "heldout.json").read_text() == before
    rescored = json.loads(out["heldout"].read_text())["history"]
    assert [h["step"] for h in rescored] == [0, 2, 4, 6]  # step 0 has no checkpoint: kept from the run's record
    for old, new in zip(history2[1:], rescored[1:], strict=True):
        for k in ("l1", "l1_copy_source", "reconstruction_floor"):
            assert new["groups"]["all"][k] == pytest.approx(old["groups"]["all"][k], rel=1e-5)
    assert "blur_matched_copy_source" in out["report"].read_text() and out["plot"].stat().st_size > 10_000


def test_prepare_only_writes_the_data_and_prepared_requires_it(tmp_path):
    """Prepare on one machine (face detection), train on another: ``--prepare-only`` then ``--prepared``."""
    with pytest.raises(SystemExit, match="run --prepare-only first"):
        main([str(tmp_path / "empty"), "--prepared"])
    out = main([str(tmp_path), "--synthetic", "--unseen", "synthetic-3", "--frames-per-clip", "8", "--prepare-only"])
    assert out["pairs"].is_file() and sorted(p.name for p in out["shards"].glob("val-*.tar"))
    assert not (tmp_path / "run").exists()  # nothing trained
