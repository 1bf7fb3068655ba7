"""A small differentiable landmark regressor: the condition model of the stage-2 eye/lip losses (paper Sec. 3.2).

LivePortrait measures the eye- and lip-open ratios of generated images with a (non-public) differentiable landmark
network. lp-train ships this small CNN instead and distils it from mediapipe's face mesh (the teacher, shipped
offline in the mediapipe wheel) on curated crops (``lp_train.lit.landmark``). Any other differentiable landmark
network plugs in through the same protocol.

Landmark-model protocol (what ``lp_train.lit.stage2`` expects of ``landmark_model``):

- ``forward(image)``: image ``(B, 3, H, W)`` float RGB in [0, 1], any H = W (it resizes itself) ->
  ``(B, N, 2)`` points, x right / y down, normalised to [0, 1] in image coordinates (mediapipe's convention);
- attribute ``indices``: the mediapipe face-mesh index (0..477) of each of the N points, or absent when N = 478
  (the full mesh). The eye/lip ratios of ``lp_train.face.landmarks`` are computed from these points, so ``indices``
  must cover the points those ratios use (``lp_train.lit.stage2`` checks it at start-up).

Default points (``DEFAULT_INDICES``, mediapipe face-mesh indices; subject's right eye = image left): exactly the
points of the ratio definitions in ``lp_train.face.landmarks`` plus the iris centres and the inner/outer lip midpoints,

- right eye: corners 33, 133; lid pairs (160, 144), (159, 145), (158, 153);
- left eye: corners 263, 362; lid pairs (387, 373), (386, 374), (385, 380);
- lips: outer corners 61, 291; inner-lip pairs (82, 87), (13, 14), (312, 317); inner corners 78, 308; outer
  midpoints 0, 17; iris centres 468, 473.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from lp_train.face.landmarks import (
    INNER_LIP_CORNERS,
    INNER_LIP_PAIRS,
    LEFT_EYE_CORNERS,
    LEFT_EYE_LIDS,
    LEFT_IRIS_CENTER,
    MOUTH_CORNERS,
    NUM_LANDMARKS,
    OUTER_LIP_LOWER,
    OUTER_LIP_UPPER,
    RIGHT_EYE_CORNERS,
    RIGHT_EYE_LIDS,
    RIGHT_IRIS_CENTER,
)

NUM_MESH_POINTS = NUM_LANDMARKS


def _ratio_points() -> tuple[int, ...]:
    """Every mesh index the eye/lip ratio functions of ``lp_train.face.landmarks`` read, in a fixed order."""
    pts: list[int] = []
    for corners, pairs in (
        (RIGHT_EYE_CORNERS, RIGHT_EYE_LIDS),
        (LEFT_EYE_CORNERS, LEFT_EYE_LIDS),
        (MOUTH_CORNERS, INNER_LIP_PAIRS),
    ):
        pts += [*corners, *(i for pair in pairs for i in pair)]
    return tuple(dict.fromkeys(pts))


RATIO_INDICES = _ratio_points()
DEFAULT_INDICES: tuple[int, ...] = RATIO_INDICES + (
    *INNER_LIP_CORNERS,
    OUTER_LIP_UPPER,
    OUTER_LIP_LOWER,
    RIGHT_IRIS_CENTER,
    LEFT_IRIS_CENTER,
)


class ConvBNReLU(nn.Sequential):
    """Conv3x3 (stride 1 or 2) -> BatchNorm -> ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__(
            nn.Conv2d(cin, cout, kernel_size=3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
        )


class LandmarkRegressor(nn.Module):
    """Heatmap CNN with integral regression (soft-argmax): image -> N face-mesh points, normalised [0, 1].

    A stride-2 encoder (one stage per entry of ``widths``), a top-down decoder with lateral 1x1 skips back to
    stride 4, one heatmap per point, and the expected position under each heatmap's softmax — translation-
    equivariant, sub-pixel, and differentiable w.r.t. the image.

    Args:
        indices: mediapipe face-mesh index of each predicted point (default ``DEFAULT_INDICES``, 30 points).
        input_size: side the input is resized to (bilinear, antialiased; gradients flow through the resize).
        widths: channels of the stem (stride 2) and of each further stride-2 stage.
        decoder_width: channels of the decoder.
        prior_sigma: width (normalised units) of the log-Gaussian prior around the mean shape added to the logits.
    """

    def __init__(
        self,
        indices: Sequence[int] = DEFAULT_INDICES,
        input_size: int = 128,
        widths: Sequence[int] = (16, 32, 64, 96, 128),
        decoder_width: int = 32,
        prior_sigma: float = 0.15,
    ):
        super().__init__()
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0 or max(indices) >= NUM_MESH_POINTS or len(set(indices)) != len(indices):
            raise ValueError(f"indices must be distinct face-mesh indices in [0, {NUM_MESH_POINTS}), got {indices}")
        if len(widths) < 2 or input_size % 2 ** len(widths):
            raise ValueError(f"input_size {input_size} must be divisible by 2**len(widths) = {2 ** len(widths)}")
        self.input_size = input_size
        self.num_points = len(indices)
        # persistent, so a weights file made for other points fails to load (see _check_indices)
        self.register_buffer("indices", torch.tensor(indices, dtype=torch.long))
        self.stages = nn.ModuleList([ConvBNReLU(3, widths[0], stride=2)])
        for cin, cout in zip(widths[:-1], widths[1:], strict=True):
            self.stages.append(nn.Sequential(ConvBNReLU(cin, cout, stride=2), ConvBNReLU(cout, cout)))
        self.lateral = nn.ModuleList([nn.Conv2d(w, decoder_width, kernel_size=1) for w in widths[1:]])
        self.smooth = nn.ModuleList([ConvBNReLU(decoder_width, decoder_width) for _ in widths[2:]])
        self.heatmaps = nn.Conv2d(decoder_width, len(indices), kernel_size=1)
        # a broad log-Gaussian prior added to the logits (0 = flat until ``set_prior``; saved with the weights)
        self.prior_sigma = prior_sigma
        self.register_buffer("prior_mean", torch.full((len(indices), 2), 0.5))
        self._expected = tuple(indices)
        self.register_load_state_dict_post_hook(_check_indices)

    def forward_features(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, decoder_width, input_size / 4, input_size / 4) decoder map."""
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"LandmarkRegressor: expected (B, 3, H, W) RGB in [0, 1], got {tuple(image.shape)}")
        if image.shape[-2:] != (self.input_size, self.input_size):
            image = F.interpolate(image, size=(self.input_size,) * 2, mode="bilinear", antialias=True)
        x, feats = image * 2 - 1, []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)  # strides 2, 4, 8, ...
        y = self.lateral[-1](feats[-1])
        for i in range(len(feats) - 2, 0, -1):  # top-down to stride 4
            y = F.interpolate(y, scale_factor=2.0, mode="bilinear", align_corners=False)
            y = self.smooth[i - 1](y + self.lateral[i - 1](feats[i]))
        return y

    def forward_head(self, feat: torch.Tensor) -> torch.Tensor:
        """Decoder map -> (B, N, h, w) heatmap logits (+ the log-Gaussian prior around the mean shape)."""
        logits = self.heatmaps(feat)
        _, _, h, w = logits.shape
        dx = pixel_centres(w, logits)[None, :] - self.prior_mean[:, :1]  # (N, w)
        dy = pixel_centres(h, logits)[None, :] - self.prior_mean[:, 1:]  # (N, h)
        prior = -(dy[:, :, None] ** 2 + dx[:, None, :] ** 2) / (2 * self.prior_sigma**2)  # (N, h, w)
        return logits + prior

    def set_prior(self, mean_shape: torch.Tensor) -> None:
        """Centre the heatmap prior on ``mean_shape`` (N, 2), e.g. the teachers' mean; training then starts from
        the mean shape instead of the image centre."""
        self.prior_mean.copy_(mean_shape.detach().reshape(self.num_points, 2))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return soft_argmax(self.forward_head(self.forward_features(image)))


def pixel_centres(n: int, like: torch.Tensor) -> torch.Tensor:
    """Normalised centres (i + 0.5) / n of n pixels."""
    return (torch.arange(n, device=like.device, dtype=like.dtype) + 0.5) / n


def soft_argmax(logits: torch.Tensor) -> torch.Tensor:
    """(B, N, h, w) heatmap logits -> (B, N, 2) expected (x, y) under each softmax, normalised to [0, 1]."""
    b, n, h, w = logits.shape
    prob = logits.flatten(2).softmax(-1).view(b, n, h, w)
    x = (prob.sum(2) * pixel_centres(w, prob)).sum(-1)
    y = (prob.sum(3) * pixel_centres(h, prob)).sum(-1)
    return torch.stack([x, y], dim=-1)


def heatmap_loss(logits: torch.Tensor, points: torch.Tensor, sigma: float = 1.0) -> torch.Tensor:
    """Cross-entropy of the heatmap softmax against a normalised Gaussian (``sigma`` heatmap pixels) at each target
    point (B, N, 2); the auxiliary term that makes integral regression converge fast."""
    b, n, h, w = logits.shape
    dx = (pixel_centres(w, logits)[None, None, :] - points[..., :1]) * w  # (B, N, w) in heatmap pixels
    dy = (pixel_centres(h, logits)[None, None, :] - points[..., 1:]) * h  # (B, N, h)
    target = torch.exp(-(dy[..., :, None] ** 2 + dx[..., None, :] ** 2) / (2 * sigma**2))  # (B, N, h, w)
    target = target / target.flatten(2).sum(-1).clamp_min(1e-12)[..., None, None]
    return -(target * logits.flatten(2).log_softmax(-1).view(b, n, h, w)).sum((2, 3)).mean()


def _check_indices(module: LandmarkRegressor, incompatible) -> None:  # noqa: ANN001 - torch hook signature
    got = tuple(module.indices.tolist())
    if got != module._expected:
        raise ValueError(
            f"landmark weights predict face-mesh points {list(got)} but the model is configured for "
            f"{list(module._expected)}; set the model's `indices` to the ones the weights were trained with"
        )


def model_indices(model: nn.Module, num_points: int) -> torch.Tensor:
    """The mesh indices of a landmark model's N output points (``model.indices``, or 0..477 for the full mesh)."""
    idx = getattr(model, "indices", None)
    if idx is None:
        if num_points != NUM_MESH_POINTS:
            raise ValueError(
                f"landmark model returns {num_points} points but has no `indices` attribute; give it the face-mesh "
                f"indices of its points or return all {NUM_MESH_POINTS}"
            )
        return torch.arange(NUM_MESH_POINTS)
    idx = torch.as_tensor(idx, dtype=torch.long).flatten()
    if idx.numel() != num_points:
        raise ValueError(f"landmark model returns {num_points} points but its `indices` has {idx.numel()} entries")
    return idx


def scatter_to_mesh(points: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """(B, N, 2) points at mesh ``indices`` -> a (B, 478, 2) mesh (other points 0) for the mesh-indexed ratio
    functions of ``lp_train.face.landmarks``; differentiable in ``points``."""
    mesh = points.new_zeros(points.shape[0], NUM_MESH_POINTS, 2)
    return mesh.index_copy(1, indices.to(points.device), points)


def predict_mesh(model: nn.Module, image: torch.Tensor) -> torch.Tensor:
    """Run any protocol-following landmark model and return its points on the (B, 478, 2) mesh."""
    points = model(image)
    if points.ndim != 3 or points.shape[0] != image.shape[0] or points.shape[-1] != 2:
        raise ValueError(f"landmark model must return (B, N, 2) normalised points, got {tuple(points.shape)}")
    return scatter_to_mesh(points, model_indices(model, points.shape[1]))
