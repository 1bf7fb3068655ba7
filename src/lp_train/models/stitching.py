"""Stitching module S and eye / lip retargeting modules R (paper Sec. 3.2, Eq. 4-6): small MLPs on implicit keypoints.

Official sizes: S 126 -> 65 (Δ for 21x3 keypoints + Δtx, Δty), R_lip 65 -> 63, R_eyes 66 -> 63. Keys ``mlp.N.*``.
"""

from __future__ import annotations

import torch
from torch import nn


class StitchingRetargetingNetwork(nn.Module):
    """MLP: Linear/ReLU stack. ``zero_init`` makes it an exact no-op at the start of stage 2.

    Args:
        input_size: input width.
        hidden_sizes: widths of the hidden layers.
        output_size: output width.
        zero_init: zero the output layer, so Δ = 0 exactly at the start of stage 2 while the hidden layers keep
            their default init (zeroing every layer would leave only the last bias trainable).
    """

    def __init__(self, input_size: int, hidden_sizes: list[int], output_size: int, zero_init: bool = False):
        super().__init__()
        self.input_size = input_size
        self.output_size = output_size
        layers: list[nn.Module] = []
        widths = [input_size, *hidden_sizes]
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Linear(cin, cout), nn.ReLU(inplace=True)]
        layers.append(nn.Linear(widths[-1], output_size))
        self.mlp = nn.Sequential(*layers)
        if zero_init:
            self.zero_init()

    def zero_init(self) -> None:
        last = self.mlp[-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.input_size:
            raise ValueError(f"{type(self).__name__}: expected (B, {self.input_size}) input, got {tuple(x.shape)}")
        return self.mlp(x)


class StitchingRetargeting(nn.Module):
    """The three heads of stage 2, with the official sub-network names (checkpoint keys
    ``retarget_shoulder`` -> ``stitching``, ``retarget_mouth`` -> ``lip``, ``retarget_eye`` -> ``eye``).

    Args:
        num_kp: number of implicit keypoints K (inputs are sized from it).
        stitching_hidden: hidden widths of S.
        lip_hidden: hidden widths of R_lip.
        eye_hidden: hidden widths of R_eyes.
        zero_init: start every head at zero (stage 2 default).
    """

    def __init__(
        self,
        num_kp: int = 21,
        stitching_hidden: tuple[int, ...] = (128, 128, 64),
        lip_hidden: tuple[int, ...] = (128, 128, 64),
        eye_hidden: tuple[int, ...] = (256, 256, 128, 128, 64),
        zero_init: bool = True,
    ):
        super().__init__()
        d = 3 * num_kp
        self.num_kp = num_kp
        self.stitching = StitchingRetargetingNetwork(2 * d, list(stitching_hidden), d + 2, zero_init)
        self.lip = StitchingRetargetingNetwork(d + 2, list(lip_hidden), d, zero_init)
        self.eye = StitchingRetargetingNetwork(d + 3, list(eye_hidden), d, zero_init)
