"""Exponential moving average of a network's weights (used for validation and export; the "generator EMA" of
StyleGAN/EDM-style training). A plain nn.Module so it is saved and restored with the LightningModule's state dict.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


class EMA(nn.Module):
    """θ_ema ← decay · θ_ema + (1 − decay) · θ for parameters; buffers (BatchNorm statistics, spectral-norm u/v)
    are copied.

    Args:
        model: the network to track (deep-copied; the copy never receives gradients).
        decay: EMA decay per update (e.g. 0.999).
    """

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        if not 0.0 < decay < 1.0:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).requires_grad_(False)
        self.train(False)

    def train(self, mode: bool = True) -> EMA:
        return super().train(False)  # the average is only used for evaluation

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """One EMA step towards ``model``'s current weights."""
        ema_params = dict(self.module.named_parameters())
        for name, p in model.named_parameters():
            ema_params[name].lerp_(p.detach().to(ema_params[name].dtype), 1.0 - self.decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, b in model.named_buffers():
            ema_buffers[name].copy_(b)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
