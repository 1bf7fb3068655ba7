"""The batch contract of the training loader: one (source, driving) pair -> network inputs, targets and the
landmark-derived supervision of paper Sec. 3.2-3.3 (regions for the cascaded losses, eye/lip ratios for
retargeting, pseudo head pose for L_H).

Two steps, so loader workers do the least work and the GPU gets uint8 pixels:

1. ``compact_pair`` (in the loader workers): the decoded uint8 frames at 2S, their moved landmarks, the pixel
   homographies and colour-jitter parameters still to apply, flags and ids; ``collate_compact`` stacks them and
   computes the landmark-derived targets for the whole batch (boxes, eye/lip ratios, pose).
2. ``finalize_batch`` (after the transfer to the device; ``LivePortraitDataModule.on_after_batch_transfer``):
   uint8 -> float, the homographies (image-pair warp, flip; ``kornia``), colour jitter, the 2x box-filter (area)
   downsample to S, region masks from the boxes. Its output is the contract documented in ``lp_train.data`` and
   asserted by ``check_batch``.

``collate_pairs`` does both at once (``SyntheticPairs``, tests, CPU use).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from lp_train.data.augment import NO_JITTER, color_jitter, warp_images
from lp_train.face import landmarks as lm

SIDES = ("source", "driving")
FRAME_KEYS = ("landmarks", "boxes", "masks", "eye_ratio", "lip_ratio", "pose")
BATCH_KEYS = (
    ("source", "driving", "source_hr", "driving_hr")
    + tuple(f"{side}_{k}" for side in SIDES for k in FRAME_KEYS)
    + ("is_image", "same_identity", "identity", "key")
)


def landmark_targets(landmarks: np.ndarray) -> dict[str, torch.Tensor]:
    """Landmark-derived targets of ``(..., 478, 2)`` landmarks: ``boxes (..., 3, 4)``, ``eye_ratio (..., 2)``,
    ``lip_ratio (..., 1)``, ``pose (..., 3)`` as float32 tensors (masks come from the boxes in ``finalize_batch``)."""
    lmk = np.asarray(landmarks, dtype=np.float32)
    out = {
        "boxes": lm.region_boxes(lmk),
        "eye_ratio": lm.eye_open_ratio(lmk),
        "lip_ratio": lm.lip_open_ratio(lmk),
        "pose": lm.head_pose_from_landmarks(lmk),
    }
    return {k: torch.from_numpy(np.ascontiguousarray(v, dtype=np.float32)) for k, v in out.items()}


def compact_pair(
    source: torch.Tensor,
    driving: torch.Tensor,
    source_landmarks: np.ndarray,
    driving_landmarks: np.ndarray,
    warps: np.ndarray | None,
    color: np.ndarray | None,
    is_image: bool,
    same_identity: bool,
    identity: str,
    key: str,
) -> dict:
    """One pair in the loader's compact form (``collate_compact`` + ``finalize_batch`` make the contract).

    Args:
        source: ``(3, 2S, 2S)`` uint8 decoded source frame (float in [0, 1] is converted).
        driving: same for the driving frame.
        source_landmarks: ``(478, 2)`` normalised landmarks, already moved by ``warps[0]`` (and index-remapped).
        driving_landmarks: same for the driving frame.
        warps: ``(2, 3, 3)`` pixel homographies still to apply to [source, driving] (None: identity).
        color: ``(2, 4)`` colour-jitter parameters of [source, driving] (``augment.jitter_params``; None: none).
        is_image: the pair is a still image and a warp of itself.
        same_identity: source and driving show the same person (False for stage-2 cross-identity pairs).
        identity: identity id of the source.
        key: ``"{source key}:{frame}|{driving key}:{frame}"``.
    """
    if source.shape != driving.shape or source.shape[0] != 3 or source.shape[1] != source.shape[2]:
        raise ValueError(f"frames must be (3, 2S, 2S) alike, got {tuple(source.shape)} and {tuple(driving.shape)}")
    to_u8 = lambda x: x if x.dtype == torch.uint8 else x.mul(255.0).round_().clamp_(0, 255).to(torch.uint8)  # noqa: E731
    warps = np.broadcast_to(np.eye(3), (2, 3, 3)) if warps is None else warps
    color = np.asarray(NO_JITTER * 2 if color is None else color).reshape(2, 4)
    return {
        "source_u8": to_u8(source),
        "driving_u8": to_u8(driving),
        "source_landmarks": torch.from_numpy(np.asarray(source_landmarks, dtype=np.float32)),
        "driving_landmarks": torch.from_numpy(np.asarray(driving_landmarks, dtype=np.float32)),
        "warp": torch.from_numpy(np.asarray(warps, dtype=np.float32)),
        "color": torch.from_numpy(np.asarray(color, dtype=np.float32)),
        "is_image": bool(is_image),
        "same_identity": bool(same_identity),
        "identity": str(identity),
        "key": str(key),
    }


def collate_compact(items: list[dict]) -> dict:
    """Stack compact pairs (tensors stacked, flags as bool tensors, ids as lists of str) and add the landmark
    targets of the whole batch at once."""
    if not items:
        raise ValueError("collate_compact got an empty list of pairs")
    batch = {}
    for k in items[0]:
        vals = [it[k] for it in items]
        if k in ("identity", "key"):
            batch[k] = vals
        elif k in ("is_image", "same_identity"):
            batch[k] = torch.tensor(vals, dtype=torch.bool)
        else:
            batch[k] = torch.from_numpy(np.stack([v.numpy() for v in vals]))  # ~8x faster than torch.stack on uint8
    for side in SIDES:
        batch.update({f"{side}_{k}": v for k, v in landmark_targets(batch[f"{side}_landmarks"].numpy()).items()})
    return batch


def finalize_batch(batch: dict) -> dict:
    """Compact batch (any device) -> the contract: float frames in [0, 1] warped by their homographies and colour-
    jittered, inputs at S by 2x2 area averaging (the exact antialiased 2x downsample), {0, 1} region masks at 2S.
    Idempotent."""
    if "source_u8" not in batch:
        return batch
    out = dict(batch)
    for i, side in enumerate(SIDES):
        hr = out.pop(f"{side}_u8").float().div_(255.0)  # (B, 3, 2S, 2S)
        hr = color_jitter(warp_images(hr, batch["warp"][:, i]), batch["color"][:, i])
        out[f"{side}_hr"], out[side] = hr, F.avg_pool2d(hr, 2)
        out[f"{side}_masks"] = lm.boxes_to_masks(out[f"{side}_boxes"], hr.shape[-1])  # (B, 3, 2S, 2S)
    return {k: out[k] for k in BATCH_KEYS}


def collate_pairs(items: list[dict]) -> dict:
    """Compact pairs -> a contract batch on the CPU (``collate_compact`` + ``finalize_batch``)."""
    return finalize_batch(collate_compact(items))


def check_batch(batch: dict, size: int) -> None:
    """Raise ``AssertionError`` naming the first key that breaks the contract (shapes, dtypes, ranges)."""
    missing = set(BATCH_KEYS) - batch.keys()
    assert not missing, f"batch lacks {sorted(missing)}"
    b, hr = len(batch["key"]), 2 * size
    for side in ("source", "driving"):
        expect = {
            side: (b, 3, size, size),
            f"{side}_hr": (b, 3, hr, hr),
            f"{side}_landmarks": (b, lm.NUM_LANDMARKS, 2),
            f"{side}_boxes": (b, 3, 4),
            f"{side}_masks": (b, 3, hr, hr),
            f"{side}_eye_ratio": (b, 2),
            f"{side}_lip_ratio": (b, 1),
            f"{side}_pose": (b, 3),
        }
        for k, shape in expect.items():
            v = batch[k]
            assert isinstance(v, torch.Tensor) and v.dtype == torch.float32, f"{k}: {type(v)} {getattr(v, 'dtype', '')}"
            assert tuple(v.shape) == shape, f"{k}: shape {tuple(v.shape)}, expected {shape}"
            assert torch.isfinite(v).all(), f"{k}: non-finite values"
        for k in (side, f"{side}_hr", f"{side}_boxes", f"{side}_masks"):
            assert batch[k].min() >= 0 and batch[k].max() <= 1, f"{k}: values outside [0, 1]"
        assert set(batch[f"{side}_masks"].unique().tolist()) <= {0.0, 1.0}, f"{side}_masks: not binary"
    for k in ("is_image", "same_identity"):
        assert batch[k].dtype == torch.bool and batch[k].shape == (b,), f"{k}: {batch[k].dtype} {batch[k].shape}"
    for k in ("identity", "key"):
        assert len(batch[k]) == b and all(isinstance(s, str) for s in batch[k]), f"{k}: expected {b} strings"
