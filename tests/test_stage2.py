"""Stage 2 (issue 7): MLP I/O composition, Δ = 0 at start, frozen base, heads one at a time, losses that fall."""

from __future__ import annotations

import functools
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from train_helpers import module_settings

from lp_train.checkpoint import save_model
from lp_train.data.synthetic import SyntheticPairs
from lp_train.face import landmarks as lm
from lp_train.keypoints import apply_stitching, retarget_input, stitching_input
from lp_train.lit.stage2 import BASE_NETS, Stage2Module, init_head
from lp_train.models.stitching import StitchingRetargeting, StitchingRetargetingNetwork
from lp_train.teachers.landmark_regressor import LandmarkRegressor

CONF = Path(__file__).resolve().parents[1] / "conf"


pytestmark = pytest.mark.usefixtures("lp_data_one_thread")  # tiny networks: far faster on one thread


def tiny_model():
    with initialize_config_dir(config_dir=str(CONF / "model"), version_base="1.3"):
        return instantiate(compose(config_name="tiny"))


def tiny_landmarks() -> LandmarkRegressor:
    return LandmarkRegressor(input_size=64, widths=(8, 16, 32), decoder_width=16)


class BrightnessLandmarks(torch.nn.Module):
    """A user-supplied differentiable landmark network (protocol demo, no ``indices``: the full 478-point mesh).

    It places the ratio points so that eye-open ratio = 0.4 + gain x (mean brightness of the upper image half minus
    its value on a reference image), lip-open ratio the same on the lower half: a condition that a *random* tiny
    generator can reach (its brightness moves only a little with the keypoints), so the test can check that the
    retargeting heads learn to hit their targets.
    """

    def __init__(self, gain: float = 20.0):
        super().__init__()
        self.gain = gain
        self.register_buffer("ref", torch.full((2,), 0.5))

    def halves(self, image: torch.Tensor) -> torch.Tensor:
        h = image.shape[-2]
        return torch.stack([image[:, :, : h // 2].mean((1, 2, 3)), image[:, :, h // 2 :].mean((1, 2, 3))], 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        r = 0.4 + self.gain * (self.halves(image) - self.ref)  # (B, 2): eyes, lips
        mesh = image.new_zeros(image.shape[0], 478, 2)
        for corners, pairs, cx, cy, k in (
            (lm.LEFT_EYE_CORNERS, lm.LEFT_EYE_LIDS, 0.65, 0.4, 0),
            (lm.RIGHT_EYE_CORNERS, lm.RIGHT_EYE_LIDS, 0.35, 0.4, 0),
            (lm.MOUTH_CORNERS, lm.INNER_LIP_PAIRS, 0.5, 0.75, 1),
        ):
            mesh[:, corners[0]] = torch.tensor([cx - 0.1, cy])
            mesh[:, corners[1]] = torch.tensor([cx + 0.1, cy])
            for j, (up, low) in enumerate(pairs):
                mesh[:, up, 0] = mesh[:, low, 0] = cx - 0.05 + 0.05 * j
                mesh[:, up, 1], mesh[:, low, 1] = cy - 0.1 * r[:, k], cy + 0.1 * r[:, k]
        return mesh


def stage2(model, optimizer, landmark_model, **kw) -> Stage2Module:
    """A Stage2Module with conf/module/stage2.yaml's settings (random landmark weights, no base) and ``kw``."""
    kw = {"base_checkpoint": None, "landmark_weights": "random", **kw}
    return Stage2Module(model, optimizer, landmark_model, **module_settings("stage2", **kw))


def make_module(heads=("stitching", "eye", "lip"), lr: float = 1e-3, landmarks=None, **kw) -> Stage2Module:
    torch.manual_seed(0)
    lmk = tiny_landmarks() if landmarks is None else landmarks
    kw.setdefault("batch_cross_identity_prob", 0.5)  # these tests exercise the in-batch cross-identity driving
    return stage2(tiny_model(), functools.partial(torch.optim.Adam, lr=lr), lmk, heads=heads, **kw)


@pytest.fixture(scope="module")
def batch():
    ds = SyntheticPairs(length=4, size=64, cross_identity_prob=0.0, seed=3)
    return SyntheticPairs.collate([ds[i] for i in range(2)])


def test_mlp_io_composition_matches_the_paper():
    """S: x_s ⧺ x_d (126) -> 65 = Δ for 21x3 keypoints + (Δtx, Δty); R_eyes 66 -> 63; R_lip 65 -> 63."""
    heads = StitchingRetargeting(num_kp=21, zero_init=False)
    b = 3
    x_s, x_d = torch.randn(b, 21, 3), torch.randn(b, 21, 3)
    s_in = stitching_input(x_s, x_d)
    assert (
        s_in.shape == (b, 126)
        and torch.equal(s_in[:, :63], x_s.flatten(1))
        and torch.equal(s_in[:, 63:], x_d.flatten(1))
    )
    assert heads.stitching(s_in).shape == (b, 65)
    eye_in = retarget_input(x_s, torch.rand(b, 3))  # 2 source eye ratios + 1 target
    lip_in = retarget_input(x_s, torch.rand(b, 2))  # 1 source lip ratio + 1 target
    assert eye_in.shape == (b, 66) and heads.eye(eye_in).shape == (b, 63)
    assert lip_in.shape == (b, 65) and heads.lip(lip_in).shape == (b, 63)
    # the last 2 outputs of S shift every keypoint's x and y; the first 63 are per-keypoint offsets
    delta = torch.zeros(b, 65)
    delta[:, 63], delta[:, 64] = 0.25, -0.5
    shifted = apply_stitching(x_d, delta)
    assert torch.allclose(shifted[..., 0], x_d[..., 0] + 0.25) and torch.allclose(shifted[..., 1], x_d[..., 1] - 0.5)
    assert torch.equal(shifted[..., 2], x_d[..., 2])
    delta = torch.randn(b, 65)
    assert torch.allclose(apply_stitching(x_d, delta) - x_d - delta[:, :63].view(b, 21, 3), torch.cat(
        [delta[:, None, 63:].expand(b, 21, 2), torch.zeros(b, 21, 1)], -1), atol=1e-6)  # fmt: skip
    with pytest.raises(ValueError, match="expected"):
        heads.eye(torch.zeros(b, 65))


def test_zero_initialised_heads_leave_the_output_unchanged(batch):
    mod = make_module()
    enc = mod.encode(batch, torch.zeros(2, dtype=torch.bool))
    x_s, x_d = enc["x_s"], enc["x_d"]
    x_st, d_st = mod.stitch(x_s, x_d)
    x_eye, d_eye = mod.retarget("eye", x_s, torch.cat([batch["source_eye_ratio"], torch.full((2, 1), 0.8)], 1))
    x_lip, d_lip = mod.retarget("lip", x_s, torch.cat([batch["source_lip_ratio"], torch.zeros(2, 1)], 1))
    assert d_st.abs().max() == 0 and d_eye.abs().max() == 0 and d_lip.abs().max() == 0
    assert torch.equal(x_st, x_d) and torch.equal(x_eye, x_s) and torch.equal(x_lip, x_s)
    with torch.no_grad():
        base = mod.model.warp_decode(enc["f_s"], x_s, x_d)["image"]
        stitched = mod.decode(enc["f_s"], x_s, [x_st])[0]
    assert torch.equal(base, stitched)
    # Δ = 0 yet trainable: the hidden layers are not zero (an all-zero MLP never becomes input dependent)
    hidden = [m for m in mod.head("eye").mlp if isinstance(m, torch.nn.Linear)][:-1]
    assert all(m.weight.abs().sum() > 0 for m in hidden)


def test_zero_init_heads_start_at_zero_and_learn_an_input_dependence():
    """An all-zero MLP would only ever train its last bias; ``zero_init`` zeroes the output layer alone, so the
    heads start as exact no-ops and still learn input-dependent Δ (as ``init_head`` does)."""
    torch.manual_seed(0)
    x = torch.randn(16, 66)
    y = x[:, :1].repeat(1, 63)  # target depends on the input
    for use_init_head in (False, True):
        net = StitchingRetargetingNetwork(66, [32, 32], 63, zero_init=True)
        if use_init_head:
            init_head(net)
        assert net(x).abs().max() == 0
        start = (net(x) - y).abs().mean().item()
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(100):
            opt.zero_grad()
            (net(x) - y).abs().mean().backward()
            opt.step()
        out = net(x).detach()
        assert out.std(0).max() > 0.1  # the output varies with the input
        assert (out - y).abs().mean() < 0.5 * start


def test_frozen_base_gets_no_updates_and_heads_train(batch):
    mod = make_module()
    before = {k: v.clone() for k, v in mod.model.state_dict().items()}  # incl. BatchNorm running stats
    lmk_before = {k: v.clone() for k, v in mod.landmark_model.state_dict().items()}
    opt = mod.configure_optimizers()["optimizer"]
    trained = {id(p) for g in opt.param_groups for p in g["params"]}
    assert trained == {id(p) for n in ("stitching", "eye", "lip") for p in mod.head(n).parameters()}
    mod.train()
    for _ in range(2):
        assert not any(getattr(mod.model, n).training for n in BASE_NETS) and not mod.landmark_model.training
        loss, _ = mod.compute_losses(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = mod.model.state_dict()
    for k, v in before.items():
        if k.startswith("stitching_retargeting_module."):
            continue
        assert torch.equal(v, after[k]), f"frozen base changed: {k}"
    for name in BASE_NETS:
        assert all(not p.requires_grad and p.grad is None for p in getattr(mod.model, name).parameters()), name
    assert all(torch.equal(v, mod.landmark_model.state_dict()[k]) for k, v in lmk_before.items())
    for name in ("stitching", "eye", "lip"):
        last = f"stitching_retargeting_module.{name}.mlp.{len(mod.head(name).mlp) - 1}.weight"
        assert not torch.equal(before[last], after[last]), f"{name} head did not train"


def test_one_head_at_a_time(batch):
    mod = make_module(heads=["eye"])
    opt = mod.configure_optimizers()["optimizer"]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in mod.head("eye").parameters()}
    loss, logs = mod.compute_losses(batch)
    assert set(k for k in logs if "/" in k and not k.endswith("max")) == {"eye/condition", "eye/region", "eye/delta"}
    loss.backward()
    assert all(p.grad is None for n in ("stitching", "lip") for p in mod.head(n).parameters())
    with pytest.raises(ValueError, match="landmark_model"):
        stage2(tiny_model(), functools.partial(torch.optim.Adam), None, heads=["lip"])
    with pytest.raises(ValueError, match="heads"):
        stage2(tiny_model(), functools.partial(torch.optim.Adam), None, heads=["shoulders"])
    stage2(tiny_model(), functools.partial(torch.optim.Adam), None, heads=["stitching"])  # no landmarks needed


def test_base_checkpoint_loads_base_and_keeps_heads_at_zero(tmp_path, batch):
    base = tiny_model()
    save_model(base, tmp_path / "base.pt")
    mod = stage2(tiny_model(), functools.partial(torch.optim.Adam), tiny_landmarks(),
                       base_checkpoint=str(tmp_path / "base.pt"))  # fmt: skip
    for k, v in base.state_dict().items():
        if not k.startswith("stitching_retargeting_module."):
            assert torch.equal(v, mod.model.state_dict()[k]), k
    enc = mod.encode(batch, torch.zeros(2, dtype=torch.bool))
    assert torch.equal(mod.stitch(enc["x_s"], enc["x_d"])[0], enc["x_d"])


def calibrated_module(batch, **kw) -> tuple[Stage2Module, dict]:
    """Stage-2 module on a random tiny base with ``BrightnessLandmarks`` referenced to the Δ = 0 reconstruction."""
    lmk = BrightnessLandmarks()
    mod = make_module(landmarks=lmk, landmark_weights=None, **kw)
    enc = mod.encode(batch, torch.zeros(len(batch["key"]), dtype=torch.bool))
    with torch.no_grad():
        lmk.ref.copy_(lmk.halves(mod.decode(enc["f_s"], enc["x_s"], [enc["x_s"]])[0]).mean(0))
    return mod, enc


def test_losses_decrease_on_tiny_models(batch):
    """Must-show 2: a short CPU run where the stitching loss and the eye / lip condition losses fall.

    The base is a random tiny model, so the stitching reference is made reachable: the source target is the base's
    own output for driving keypoints shifted by (0.08, -0.05), which S has to learn to undo. The condition model
    is ``BrightnessLandmarks`` (a plugged-in user network); the targets are fixed across steps.
    """
    mod, enc = calibrated_module(batch, batch_cross_identity_prob=0.0, lr=3e-3)
    with torch.no_grad():
        shifted = enc["x_d"] + torch.tensor([0.08, -0.05, 0.0])
        batch = dict(batch, source_hr=mod.decode(enc["f_s"], enc["x_s"], [shifted])[0])
    opt = mod.configure_optimizers()["optimizer"]
    history = []
    for _ in range(14):
        loss, logs = mod.compute_losses(batch, torch.Generator().manual_seed(0))  # the same targets every step
        opt.zero_grad()
        loss.backward()
        opt.step()
        history.append({k: float(v.detach()) for k, v in logs.items()})
    first, last = history[0], {k: min(h[k] for h in history[-3:]) for k in history[0]}
    assert first["stitching/delta"] == first["eye/delta"] == first["lip/delta"] == 0
    assert last["stitching/region"] < 0.5 * first["stitching/region"], (first, last)
    assert last["eye/condition"] < 0.6 * first["eye/condition"], (first, last)
    assert last["lip/condition"] < 0.8 * first["lip/condition"], (first, last)
    assert last["loss"] < 0.8 * first["loss"]


def test_grid_shows_ratios_and_stitching(batch, tmp_path):
    mod = make_module(grid_ratios=(0.0, 0.4, 0.8))
    grid = mod.grid_images(batch)
    # 3 rows x 4 tiles of 128 px (2S) + 2 px padding
    assert grid.shape == (3, 3 * 130 + 2, 4 * 130 + 2)
    assert 0 <= grid.min() and grid.max() <= 1


def test_stage2_tiny_experiment_runs_through_lp_train(tmp_path):
    """``lp-train experiment=stage2_tiny`` on a stage-1 model file: logs every term and the grids, exports a
    model.pt whose base equals the input and whose heads are trained."""
    import csv

    from lp_train.checkpoint import read_model_state
    from lp_train.train import train

    base = tiny_model()
    save_model(base, tmp_path / "stage1.pt")
    overrides = [
        "experiment=stage2_tiny", f"module.base_checkpoint={tmp_path}/stage1.pt", f"paths.output_dir={tmp_path}/run",
        "data.batch_size=2", "data.train_length=6", "data.val_length=2", "trainer.max_steps=3",
        "trainer.val_check_interval=3", "trainer.limit_val_batches=1", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "trainer.log_every_n_steps=1", "module.image_every=2", "~logger.wandb",
    ]  # fmt: skip
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides)
    result = train(cfg)
    assert result["trainer"].global_step == 3
    sd = read_model_state(result["model"])
    for k, v in base.state_dict().items():
        if not k.startswith("stitching_retargeting_module."):
            assert torch.equal(v, sd[k]), f"base changed: {k}"
    assert all(sd[f"stitching_retargeting_module.{h}.mlp.6.bias"].abs().sum() > 0 for h in ("stitching", "lip"))
    rows = list(csv.DictReader(open(next((tmp_path / "run" / "csv").rglob("metrics.csv")))))
    logged = {k for r in rows for k, v in r.items() if v}
    for term in ("stitching/region", "stitching/delta", "eye/condition", "eye/region", "eye/delta", "lip/condition",
                 "lip/region", "lip/delta", "stitching/delta_abs_max", "loss"):  # fmt: skip
        assert f"train/{term}" in logged and f"val/{term}" in logged, term
    images = sorted(p.name for p in (tmp_path / "run" / "images").glob("*.png"))
    assert any(n.startswith("train_images") for n in images) and any(n.startswith("val_images") for n in images)


@pytest.mark.slow
def test_eye_head_learns_to_follow_its_target():
    """Trained on random targets (as in stage 2), R_eyes becomes conditional: for one source, targets 0 / 0.4 / 0.8
    give increasing measured ratios close to the targets (random tiny base, ``BrightnessLandmarks``)."""
    ds = SyntheticPairs(length=8, size=64, cross_identity_prob=0.0, seed=3)
    batch = SyntheticPairs.collate([ds[i] for i in range(4)])
    mod, enc = calibrated_module(batch, heads=("eye",), lr=3e-3, loss_weights={"eye_region": 0.0, "eye_delta": 0.0})
    opt = mod.configure_optimizers()["optimizer"]
    for _ in range(250):
        loss, _ = mod.compute_losses(batch)  # a new random target per sample and step
        opt.zero_grad()
        loss.backward()
        opt.step()
    measured = []
    with torch.no_grad():
        for target in (0.0, 0.4, 0.8):
            ratios = torch.cat([batch["source_eye_ratio"], torch.full((4, 1), target)], 1)
            image = mod.decode(enc["f_s"], enc["x_s"], [mod.retarget("eye", enc["x_s"], ratios)[0]])[0]
            measured.append(mod.measure("eye", image).mean().item())
    assert measured[0] < measured[1] < measured[2], measured
    assert measured[2] - measured[0] > 0.4, measured
