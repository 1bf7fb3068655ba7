"""Region crops for the cascaded losses (LivePortrait Sec. 3.1: perceptual and GAN losses on the full image, the
face and the lips): differentiable resampling of normalised boxes with ``torchvision.ops.roi_align``.

Boxes follow the loader's contract (``lp_train.data.batch``): ``(B, R, 4)`` normalised (x0, y0, x1, y1) of the
regions ``REGIONS = (face, eyes, lips)``. Crops are made square around each box's centre (side = the box's longer
side) so a wide lip box is not stretched.
"""

from __future__ import annotations

import torch
from torchvision.ops import roi_align

REGIONS = ("face", "eyes", "lips")


def square_boxes(boxes: torch.Tensor) -> torch.Tensor:
    """(..., 4) boxes -> square boxes with the same centre and side = max(width, height)."""
    cx, cy = (boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2
    half = torch.maximum(boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]) / 2
    return torch.stack([cx - half, cy - half, cx + half, cy + half], dim=-1)


def crop_boxes(images: torch.Tensor, boxes: torch.Tensor, size: int, square: bool = True) -> torch.Tensor:
    """Resample one normalised box per image to ``size``² (bilinear, differentiable w.r.t. ``images``).

    Args:
        images: (B, C, H, W).
        boxes: (B, 4) normalised (x0, y0, x1, y1).
        size: output side.
        square: make each box square first (see module docstring).

    Returns:
        (B, C, size, size).
    """
    b, _, h, w = images.shape
    if boxes.shape != (b, 4):
        raise ValueError(f"boxes must be ({b}, 4) for {b} images, got {tuple(boxes.shape)}")
    boxes = square_boxes(boxes) if square else boxes
    scale = torch.tensor([w, h, w, h], dtype=images.dtype, device=images.device)
    rois = torch.cat([torch.arange(b, dtype=images.dtype, device=images.device)[:, None], boxes.to(images) * scale], 1)
    return roi_align(images, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True)


def region_crop(images: torch.Tensor, boxes: torch.Tensor, region: str, size: int) -> torch.Tensor:
    """Crop ``region`` (one of ``REGIONS``) of every image, given the loader's (B, 3, 4) boxes."""
    if region not in REGIONS:
        raise KeyError(f"unknown region {region!r}; expected one of {REGIONS}")
    if boxes.ndim != 3 or boxes.shape[1:] != (len(REGIONS), 4):
        raise ValueError(f"boxes must be (B, {len(REGIONS)}, 4) [face, eyes, lips], got {tuple(boxes.shape)}")
    return crop_boxes(images, boxes[:, REGIONS.index(region)], size)
