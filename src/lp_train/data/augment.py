"""Pair augmentations of the training loader (paper Sec. 3.1 "mixed image and video training": a still image is
paired with a randomly warped copy of itself), with landmarks moved by exactly the same transform.

Split so that loader workers only decode JPEGs and do landmark arithmetic, while pixels are transformed in one
batched pass on the training device (``lp_train.data.batch.finalize_batch``):

- geometry: every frame gets one 3×3 homography on pixel-index coordinates (identity, a random affine + optional
  perspective warp for the driving frame of an image pair, a horizontal flip, or their product). Workers apply it
  to the landmarks (and remap left/right indices after a flip, ``lp_train.face.landmarks.FLIP_PERMUTATION``); the
  device applies it to the pixels with ``kornia.geometry.transform.warp_perspective``.
- colour: brightness, contrast, saturation, hue drawn once per pair (both frames of a same-identity pair get the
  same change) and applied on the device as one affine colour map per image (``color_jitter``).

Randomness comes only from the ``numpy.random.Generator`` passed in, so a seeded pipeline is reproducible.
Landmark coordinates are normalised with 0 = the left/top image edge: pixel index i has its centre at (i + 0.5) / N.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import kornia.geometry.transform as KT
import numpy as np
import torch

from lp_train.face import landmarks as lm

NO_JITTER = (1.0, 1.0, 1.0, 0.0)
# RGB -> YIQ (NTSC); a hue shift is a rotation of the (I, Q) chroma plane, which keeps the gray axis fixed.
_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=torch.float64)
_YIQ_INV = torch.linalg.inv(_YIQ)  # once here: linalg.inv checks for singularity, a host sync on a GPU


@dataclass
class AugmentConfig:
    """Augmentation options (``conf/data/*.yaml: augment``)."""

    hflip_prob: float = 0.5  # probability of mirroring a pair (both frames together)
    brightness: float = 0.2  # brightness factor drawn from [1 - b, 1 + b]
    contrast: float = 0.2  # contrast factor drawn from [1 - c, 1 + c]
    saturation: float = 0.2  # saturation factor drawn from [1 - s, 1 + s]
    hue: float = 0.02  # hue shift drawn from [-h, h] (fraction of the colour circle)
    warp_scale: tuple[float, float] = (0.9, 1.1)  # image pairs: isotropic scale range
    warp_rotation: float = 15.0  # image pairs: rotation range ±degrees
    warp_translate: float = 0.06  # image pairs: translation range ±fraction of the side
    warp_perspective: float = 0.04  # image pairs: corner displacement ±fraction of the side (0 disables)


def random_warp(rng: np.random.Generator, size: int, cfg: AugmentConfig) -> np.ndarray:
    """A random homography ``(3, 3)`` float64 on pixel-index coordinates of a ``size × size`` image.

    Affine part: rotation and scale about the image centre, then a translation; perspective part: the four image
    corners displaced independently (``cv2.getPerspectiveTransform``), applied first.
    """
    c = (size - 1) / 2.0
    scale = rng.uniform(*cfg.warp_scale)
    angle = math.radians(rng.uniform(-cfg.warp_rotation, cfg.warp_rotation))
    tx, ty = rng.uniform(-cfg.warp_translate, cfg.warp_translate, size=2) * size
    ca, sa = scale * math.cos(angle), scale * math.sin(angle)
    affine = np.array([[ca, -sa, c - ca * c + sa * c + tx], [sa, ca, c - sa * c - ca * c + ty], [0.0, 0.0, 1.0]])
    if cfg.warp_perspective <= 0:
        return affine
    corners = np.array([[0.0, 0.0], [size - 1.0, 0.0], [size - 1.0, size - 1.0], [0.0, size - 1.0]], np.float32)
    moved = corners + (rng.uniform(-1, 1, size=(4, 2)) * cfg.warp_perspective * size).astype(np.float32)
    return affine @ cv2.getPerspectiveTransform(corners, moved)


def flip_matrix(size: int) -> np.ndarray:
    """The horizontal flip x -> size - 1 - x as a pixel homography."""
    return np.array([[-1.0, 0.0, size - 1.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])


def warp_landmarks(landmarks: np.ndarray, homography: np.ndarray, size: int) -> np.ndarray:
    """Move normalised ``(N, 2)`` landmarks with a pixel homography of a side-``size`` image (what ``warp_images``
    does to the pixels)."""
    pix = np.asarray(landmarks, dtype=np.float64) * size - 0.5
    out = np.concatenate([pix, np.ones_like(pix[:, :1])], 1) @ np.asarray(homography, dtype=np.float64).T
    return ((out[:, :2] / out[:, 2:] + 0.5) / size).astype(np.float32)


def warp_images(images: torch.Tensor, homographies: torch.Tensor) -> torch.Tensor:
    """Warp ``(B, 3, H, W)`` float images by per-image ``(B, 3, 3)`` source->destination pixel homographies
    (bilinear, reflected borders). Images whose homography is the identity are copied, not resampled."""
    eye = torch.eye(3, dtype=homographies.dtype, device=homographies.device)
    moved = (homographies - eye).abs().amax((1, 2)) > 1e-6  # (B,)
    if images.device.type != "cpu":  # warp all and select: a data-dependent subset would be a host sync on a GPU
        return torch.where(moved[:, None, None, None], _warp(images, homographies), images)
    if not moved.any():
        return images
    out = images.clone()
    out[moved] = _warp(images[moved], homographies[moved])
    return out


def _warp(images: torch.Tensor, homographies: torch.Tensor) -> torch.Tensor:
    h = homographies.to(images.dtype)
    return KT.warp_perspective(images, h, dsize=images.shape[-2:], padding_mode="reflection").clamp(0, 1)


def jitter_params(rng: np.random.Generator, cfg: AugmentConfig) -> tuple[float, float, float, float]:
    """Draw (brightness, contrast, saturation, hue) factors; ``NO_JITTER`` is the identity."""
    b, c, s = (rng.uniform(1 - v, 1 + v) for v in (cfg.brightness, cfg.contrast, cfg.saturation))
    return b, c, s, rng.uniform(-cfg.hue, cfg.hue)


@functools.lru_cache(maxsize=8)
def _yiq_on(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The YIQ matrix and its inverse on ``device``: copied once per device (a blocking copy per batch otherwise)."""
    return _YIQ.to(device), _YIQ_INV.to(device)


def color_jitter(images: torch.Tensor, params: torch.Tensor | tuple) -> torch.Tensor:
    """Brightness, contrast, saturation, hue (in this order) as ONE affine colour map per image, then a clamp.

    Args:
        images: ``(B, 3, H, W)`` or ``(3, H, W)`` float in [0, 1], any device.
        params: ``(B, 4)`` / ``(4,)`` rows of ``jitter_params``.

    Brightness, contrast and saturation equal ``torchvision.transforms.v2.functional.adjust_*`` (which clamp after
    every op; we clamp once). Hue is a rotation of the YIQ chroma plane by ``2π·hue`` instead of torchvision's HSV
    round trip: the same kind of shift, ~30x cheaper at 512².
    """
    single = images.ndim == 3
    x = images[None] if single else images
    p = torch.as_tensor(params, dtype=torch.float64).to(x.device).reshape(-1, 4)
    b, c, s, h = p.unbind(1)
    yiq, yiq_inv = _yiq_on(x.device)
    gray, eye = yiq[0], torch.eye(3, dtype=torch.float64, device=x.device)
    sat = s[:, None, None] * eye + (1 - s)[:, None, None] * gray.expand(3, 3)  # s·I + (1-s)·1·gᵀ
    cos, sin, zero, one = (2 * math.pi * h).cos(), (2 * math.pi * h).sin(), torch.zeros_like(h), torch.ones_like(h)
    rot = torch.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1).view(-1, 3, 3)
    a = (yiq_inv @ rot @ yiq @ sat) * (b * c)[:, None, None]  # (B, 3, 3)
    mean = (x.mean((2, 3)) @ gray.to(x.dtype)) * b.to(x.dtype)  # (B,) gray mean after brightness
    out = torch.einsum("bij,bjhw->bihw", a.to(x.dtype), x) + ((1 - c).to(x.dtype) * mean)[:, None, None, None]
    out = out.clamp_(0.0, 1.0)  # H·S·1 = 1, so the contrast offset stays gray
    return out[0] if single else out


def augment_pair(
    rng: np.random.Generator,
    landmarks: list[np.ndarray],
    size: int,
    cfg: AugmentConfig,
    image_pair: bool,
    shared_color: bool = True,
) -> tuple[np.ndarray, list[np.ndarray], np.ndarray]:
    """Draw the augmentation of a (source, driving) pair and move its landmarks.

    Args:
        rng: the stream's generator.
        landmarks: ``[(478, 2), (478, 2)]`` normalised landmarks of the decoded frames.
        size: side of the frames in pixels.
        cfg: options.
        image_pair: the driving frame is the image itself, to be randomly warped.
        shared_color: draw one colour jitter for both frames (same identity) or one each.

    Returns:
        ``(2, 3, 3)`` float32 pixel homographies (driving warp, then a flip of both frames or neither), the moved
        landmarks (indices remapped after a flip), ``(2, 4)`` float32 colour-jitter parameters.
    """
    warps = [np.eye(3), random_warp(rng, size, cfg) if image_pair else np.eye(3)]
    flip = rng.random() < cfg.hflip_prob
    if flip:
        warps = [flip_matrix(size) @ w for w in warps]
    moved = []
    for lmk, w in zip(landmarks, warps, strict=True):
        out = warp_landmarks(lmk, w, size)
        moved.append(out[list(lm.FLIP_PERMUTATION)] if flip else out)
    first = jitter_params(rng, cfg)
    color = [first, first if shared_color else jitter_params(rng, cfg)]
    return np.stack(warps).astype(np.float32), moved, np.asarray(color, dtype=np.float32)
