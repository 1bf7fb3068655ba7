"""Pixel reconstruction loss: mean |ŷ − y| on the full output.

Not one of the paper's stage-1 terms (LivePortrait Sec. 3.1 lists perceptual, GAN, identity and the keypoint
terms), so it is off (weight 0) in ``conf/loss/stage1.yaml``. The tiny CPU configuration uses it: with
``weights.vgg19=random`` the perceptual loss is a weak signal, and a direct L1 lets a few hundred CPU steps learn.
"""

from __future__ import annotations

import torch


def pixel_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean |pred − target| over every element; the target carries no gradient."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    return (pred - target.detach()).abs().mean()
