"""Synthetic-motion sanity check (``lp_train.data.synthetic_motion`` + ``learning_check --portraits``): real
portraits moved by known smooth motions, identities split into training and held-out; the fast tests check the
generator (the motion is the known one, the split is disjoint) and that a few steps reduce the held-out loss, the
slow test that the tiny model beats copy-the-source on held-out identities by a wide margin."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from lp_train.data.synthetic_motion import (
    CENTRES,
    Motion,
    held_out_identities,
    motion_samples,
    move_landmarks,
    portrait_crops,
    render,
    smooth_motions,
)
from lp_train.learning_check import main, split_samples

pytestmark = pytest.mark.usefixtures("lp_data_one_thread")
FACES = Path(__file__).resolve().parents[1] / "../shared/data/faces"


@pytest.fixture(scope="module")
def crops():
    """The embedded photos (astronaut, Grace Hopper) cropped at 64²: no files needed."""
    return portrait_crops(None, 64)


def test_render_applies_the_known_motion_to_pixels_and_landmarks():
    rng = np.random.default_rng(0)
    img = (rng.random((32, 32, 3)) * 255).astype(np.uint8)
    shift = Motion(np.eye(2), np.array([2 * 3 / 32, 0.0]), np.zeros((len(CENTRES), 2)))  # samples 3 px to the right
    np.testing.assert_array_equal(render(img, shift)[:, :-3], img[:, 3:])
    lmk = np.array([[0.5, 0.25]], dtype=np.float32)
    np.testing.assert_allclose(move_landmarks(lmk, shift), [[0.5 - 3 / 32, 0.25]], atol=1e-6)
    for m in smooth_motions(12, np.random.default_rng(1)):  # the landmark map inverts the pixel map
        p = np.random.default_rng(2).uniform(-0.8, 0.8, size=(50, 2))
        np.testing.assert_allclose(m(m.inverse(p)), p, atol=1e-6)
        assert abs(np.linalg.det(m.A)) > 0.5 and np.abs(m.w).max() <= 0.06
    ms = smooth_motions(24, np.random.default_rng(3))
    steps = [np.abs(ms[i + 1].b - ms[i].b).max() for i in range(23)]
    assert max(steps) < 0.05 < np.abs(ms[0].b - ms[12].b).max() + np.abs(ms[0].A - ms[12].A).max()  # smooth, moving


def test_motion_samples_are_the_portraits_along_their_seeded_motion(crops):
    samples = list(motion_samples(crops, frames_per_clip=6, seed=5))
    assert [m.identity for m, _, _ in samples] == sorted(crops) and all(len(f) == 6 for _, f, _ in samples)
    for n, (meta, frames, lmks) in enumerate(samples):
        crop, base = crops[meta.identity]
        motions = smooth_motions(6, np.random.default_rng([5, n]))
        for t in (0, 5):
            np.testing.assert_array_equal(frames[t], render(crop, motions[t]))
            np.testing.assert_allclose(lmks[t], move_landmarks(base, motions[t]), atol=1e-6)
        assert np.abs(frames[0].astype(int) - frames[5]).mean() > 3  # the face moved
    again = list(motion_samples(crops, frames_per_clip=6, seed=5))
    assert all(np.array_equal(a[1][3], b[1][3]) for a, b in zip(samples, again, strict=True))


def test_identity_split_is_disjoint(crops):
    names = [f"p{i:02d}" for i in range(10)]
    held = held_out_identities(names)
    assert held == ["p03", "p07"] and held_out_identities(["a", "b"]) == ["b"]
    samples = list(motion_samples(crops, frames_per_clip=12))
    train, held_samples, groups = split_samples(samples, unseen=["hopper"], tail=0.3, gap=1)
    assert [m.identity for m, _, _ in held_samples] == ["astronaut", "hopper"] and groups == ["seen", "unseen"]
    assert "hopper" not in {m.identity for m, _, _ in train}


def test_a_few_steps_reduce_the_held_out_loss(tmp_path):
    """learning_check --portraits (embedded photos; astronaut trains, hopper is held out; 8 frames leave no
    astronaut tail): 8 steps of the CPU recipe lower the held-out L1 and reconstruction floor of the initial model."""
    main([str(tmp_path), "--portraits", "--unseen", "hopper", "--frames-per-clip", "8", "--every", "8",
          "experiment=stage1_cpu", "trainer.max_steps=8", "data.batch_size=2", "~logger.wandb",
          "trainer.enable_progress_bar=false", "module.image_every=0", "trainer.limit_val_batches=0"])  # fmt: skip
    history = json.loads((tmp_path / "run" / "heldout.json").read_text())["history"]
    assert [h["step"] for h in history] == [0, 8] and set(history[0]["clips"]) == {"hopper"}
    first, last = history[0]["groups"]["unseen"], history[-1]["groups"]["unseen"]
    assert last["l1"] < first["l1"] and last["reconstruction_floor"] < first["reconstruction_floor"]
    assert "| hopper | unseen | blur_matched_copy_source | 7 |" in (tmp_path / "learning.md").read_text()


SLOW_STEPS = 1500  # experiment=stage1_cpu, batch 4: about 12-17 minutes on one CPU core (about 1.5-2 steps/s)
SLOW_MARGIN = 0.95  # held-out model L1 / copy-the-source L1 must be below this (measured 0.887 at 1500 steps)
SLOW_MARGIN_LARGE = 0.9  # the same on the large-motion third (measured 0.814)


@pytest.mark.slow
def test_tiny_model_beats_copy_source_on_held_out_identities(tmp_path):
    """The 19 real portraits moved along known smooth motions (every 4th identity held out whole, 32 frames each):
    after ``SLOW_STEPS`` steps of the CPU recipe the model beats copy-the-source by ``SLOW_MARGIN`` and the
    blur-matched copy on the held-out identities, and copy-the-source by ``SLOW_MARGIN_LARGE`` on their large-motion
    third: the keypoint -> warp path moves faces it has never seen.

    Measured (1 thread on a shared 2-core machine, seed 0, ``--every 250``; unseen identities, model /
    copy-the-source / blur-matched / floor): step 250 0.137 / 0.121, 500 0.120, 750 0.115, 1000 0.114,
    1250 0.109 / 0.121 / 0.115 / 0.073, 1500 0.1075 / 0.1212 / 0.1149 / 0.072 (ratio 0.887); large-motion third
    at 1500: 0.126 vs copy 0.155 (0.814) and blur-matched 0.138. Wall time 17 min beside other jobs."""
    if not (FACES / "images").is_dir():
        pytest.skip(f"real test portraits not found at {(FACES / 'images').resolve()}")
    main([str(tmp_path), "--portraits", str(FACES / "images"), "--frames-per-clip", "32", "--every", str(SLOW_STEPS),
          "experiment=stage1_cpu", f"trainer.max_steps={SLOW_STEPS}", "~logger.wandb",
          "trainer.enable_progress_bar=false", "module.image_every=0", "trainer.limit_val_batches=0"])  # fmt: skip
    history = json.loads((tmp_path / "run" / "heldout.json").read_text())["history"]
    unseen = history[-1]["groups"]["unseen"]
    assert set(history[-1]["clips"]) >= {"d38", "s1", "s2", "s6"}  # the held-out identities, scored whole
    assert unseen["l1"] < SLOW_MARGIN * unseen["l1_copy_source"]
    assert unseen["l1"] < unseen["blur_matched_copy_source"]["l1"]
    large = unseen["large_motion"]
    assert large["model"]["l1"] < SLOW_MARGIN_LARGE * large["copy_source"]["l1"]
