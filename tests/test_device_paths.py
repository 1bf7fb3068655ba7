"""CPU-side regression tests for paths that only a GPU run used to exercise (issue 17, item 2):

- placement: the stage-1 networks, losses and discriminators build on the ``meta`` device, and a whole stage-1
  step (batch finalisation, forward, every loss term, backward, discriminator losses) runs on it. A tensor made on
  the CPU inside that step breaks the run on a GPU; an op whose output shape depends on the data (``nonzero``,
  boolean indexing, ``.any()`` / ``.item()`` to branch) is a host sync on a GPU and cannot run on ``meta`` at all;
- dtype: stage 1 under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (what ``trainer.precision=bf16-mixed``
  does on a GPU) has no dtype mismatch, and its keypoints stay float32;
- memory format: ``module.channels_last`` converts F's and W's Conv3d weights too (it used to raise on a GPU).
"""

from __future__ import annotations

import pytest
import torch
from hydra.utils import instantiate
from train_helpers import compose_train

from bench.gpu_check import convolutions_in_fp32
from lp_train.data.batch import collate_compact, finalize_batch
from lp_train.data.synthetic import SyntheticPairs
from lp_train.keypoints import MotionInfo, keypoints_from_motion, parse_motion, relative_motion
from lp_train.lit.stage1 import Stage1Module, to_channels_last
from lp_train.losses import discriminator_loss
from lp_train.losses.priors import KeypointPriorLoss

pytestmark = pytest.mark.usefixtures("lp_data_one_thread")


def _module(tmp_path, *overrides: str) -> Stage1Module:
    cfg = compose_train(tmp_path, "weights.pose_teacher=random", *overrides)  # every loss term, the pose teacher too
    return instantiate(cfg.module, _convert_="all")


def _compact_batch(n: int = 2) -> dict:
    data = SyntheticPairs(n, size=64, seed=0, p_image=0.5)
    return collate_compact([data[i] for i in range(n)])


def _stage1_step(module: Stage1Module, batch: dict) -> dict[str, torch.Tensor]:
    """Forward, every generator term, backward, then every discriminator's loss and backward."""
    out = module.model(batch["source"], batch["driving"])
    terms = module.loss.generator_losses(module.model, batch, out, module.discriminators)
    module.loss.total(terms).backward()
    for name, disc in module.discriminators.items():
        fake, real = module.loss.gan_inputs(name, out["image"].detach(), batch["driving_hr"], batch["driving_boxes"])
        terms[f"d_{name}"] = discriminator_loss(disc(real), disc(fake))
        terms[f"d_{name}"].backward()
    return terms | {"x_s": out["x_s"], "image": out["image"]}


def test_stage1_builds_and_steps_on_the_meta_device(tmp_path):
    """Fails on a CPU-made tensor in the step, a data-dependent shape (GPU host sync) or a build that reads data
    (it did: MotionExtractor's drop-path rates, KeypointPriorLoss's boolean index, warp_images' ``.any()``)."""
    with torch.device("meta"):
        module = _module(tmp_path)
    tensors = dict(module.named_parameters()) | dict(module.named_buffers())
    assert len(tensors) > 500 and [k for k, t in tensors.items() if not t.is_meta] == []
    compact = {k: v.to("meta") if torch.is_tensor(v) else v for k, v in _compact_batch(1).items()}
    batch = finalize_batch(compact)  # the loader's on-device step (homography warps, colour jitter, masks)
    results = _stage1_step(module, batch)
    assert len(results) >= 19 and all(v.is_meta for v in results.values())
    grads = [p.grad for p in module.generator_parameters() if p.requires_grad]
    assert grads and all(g is not None and g.is_meta for g in grads)


def test_stage1_under_bf16_autocast_keeps_keypoints_float32(tmp_path):
    """bf16 autocast: no dtype mismatch anywhere in the step; M's outputs are parsed and the keypoint transform
    runs in float32 (as the official code does), so x_s matches the fp32 run to bf16 input noise only.
    The convolutions stay fp32 (``convolutions_in_fp32``: bf16 convolutions are 50-200x slower on CPUs without
    native bf16); M's heads, the identity embedding's linear layers and all loss code run under bf16 autocast."""
    torch.manual_seed(0)
    module = _module(tmp_path)
    assert convolutions_in_fp32(module) > 50
    state = {k: v.clone() for k, v in module.state_dict().items()}
    batch = finalize_batch(_compact_batch(1))
    torch.manual_seed(1)
    ref = _stage1_step(module, batch)
    module.load_state_dict(state)  # spectral-norm power iterations moved the u vectors
    module.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = _stage1_step(module, batch)
    assert low["x_s"].dtype == torch.float32
    for term in ("keypoint_prior", "guide", "head_pose", "equivariance", "deformation"):
        assert low[term].dtype == torch.float32, term
    assert (low["x_s"] - ref["x_s"]).abs().max() < 0.05  # keypoints in [-1, 1]; bf16 only in M's convolutions
    for term in ("keypoint_prior", "guide", "perceptual_full", "l1"):
        assert low[term].item() == pytest.approx(ref[term].item(), rel=0.05), term
    grads = [p.grad for p in module.generator_parameters() if p.requires_grad]
    assert all(g is not None and g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_channels_last_converts_conv3d_weights_and_keeps_outputs(tmp_path):
    """``net.to(memory_format=torch.channels_last)`` raises on W's and F's 5-D Conv3d weights (what
    ``module.channels_last=true`` did on a GPU); ``to_channels_last`` converts 4-D and 5-D tensors."""
    torch.manual_seed(0)
    module = _module(tmp_path, "module.channels_last=true")
    model = module.model.eval()
    src, drv = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        before = model(src, drv)["image"]
    with pytest.raises(RuntimeError, match="rank 4"):
        model.warping_module.to(memory_format=torch.channels_last)
    module.configure_model()  # module.channels_last=true path
    for name in ("appearance_feature_extractor", "warping_module", "spade_generator"):
        weights = [p for p in getattr(model, name).parameters() if p.dim() in (4, 5)]
        assert weights and all(
            p.is_contiguous(memory_format=torch.channels_last if p.dim() == 4 else torch.channels_last_3d)
            for p in weights
        ), name
    with torch.no_grad():
        after = model(src, drv)["image"]
    torch.testing.assert_close(after, before, atol=1e-4, rtol=0)  # other convolution kernels: float rounding only


def test_channels_last_and_compile_options_are_checked(tmp_path):
    with pytest.raises(Exception, match="unknown networks"):
        _module(tmp_path, "module.compile=[warping_module,spade]")
    module = _module(tmp_path, "module.compile=[warping_module,spade_generator]", "module.compile_backend=eager")
    assert module.compile_names == ("warping_module", "spade_generator")
    module.configure_model()
    module.configure_model()  # idempotent (Lightning calls it once per fit / validate)
    assert module.model.warping_module._compiled_call_impl is not None
    assert module.model.appearance_feature_extractor._compiled_call_impl is None
    net = to_channels_last(torch.nn.Conv3d(2, 4, 3))
    assert net.weight.is_contiguous(memory_format=torch.channels_last_3d)


def test_keypoint_prior_without_boolean_indexing_equals_the_pair_sum():
    kp = torch.rand(3, 5, 3) * 0.6 - 0.3
    loss = KeypointPriorLoss(distance_threshold=0.1, depth_target=0.33)
    d2 = (kp[:, :, None] - kp[:, None]).pow(2).sum(-1)
    spread = torch.tensor([sum(max(0.0, 0.1 - d2[b, i, j].item()) for i in range(5) for j in range(5) if i != j)
                           for b in range(3)])  # fmt: skip
    depth = (kp[:, :, 2].mean(1) - 0.33).abs()
    torch.testing.assert_close(loss(kp), (spread + depth).mean(), atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_keypoint_math_runs_in_float32_under_autocast(dtype):
    """Half-precision animation (autocast): relative motion and stitching inputs stay float32; the rotation product
    of relative motion used to run in half precision and then failed in the float32 keypoint transform."""
    g = torch.Generator().manual_seed(0)

    def motion() -> MotionInfo:
        raw = {"kp": torch.randn(2, 63, generator=g), "exp": torch.randn(2, 63, generator=g) * 0.05,
               "t": torch.randn(2, 3, generator=g) * 0.1, "scale": 1 + torch.rand(2, 1, generator=g)}  # fmt: skip
        raw |= {k: torch.randn(2, 66, generator=g) for k in ("pitch", "yaw", "roll")}
        return parse_motion({k: v.to(dtype) for k, v in raw.items()})  # as M's heads return them under autocast

    src, drv, drv0 = motion(), motion(), motion()
    ref = relative_motion(src, drv, drv0)  # no autocast: half inputs stay half
    assert ref.dtype == dtype
    with torch.autocast("cpu", dtype=dtype):
        src, drv, drv0 = motion(), motion(), motion()
        x_d = relative_motion(src, drv, drv0)
        x_s = keypoints_from_motion(src)
    assert x_d.dtype == x_s.dtype == src.kp.dtype == torch.float32
