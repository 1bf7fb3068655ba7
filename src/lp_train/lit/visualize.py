"""Image grids for training logs (LivePortrait Fig. 2 quantities): source | driving | prediction | occlusion map |
implicit keypoints drawn on source and driving. Shared by the stage modules; pure tensor code (no logger calls).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# one colour per keypoint index (cycled): saturated hues so neighbouring keypoints are told apart
_PALETTE = torch.tensor(
    [[1.0, 0.1, 0.1], [0.1, 1.0, 0.1], [0.2, 0.4, 1.0], [1.0, 1.0, 0.1], [1.0, 0.1, 1.0], [0.1, 1.0, 1.0],
     [1.0, 0.6, 0.1], [0.6, 0.1, 1.0], [0.1, 0.6, 0.3], [1.0, 1.0, 1.0]]
)  # fmt: skip


def draw_keypoints(images: torch.Tensor, kp: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Paint (x, y) of keypoints (B, K, 2+) in the [-1, 1] grid (align-corners convention) onto copies of
    ``images`` (B, 3, H, W) as filled squares of side 2·radius + 1."""
    out = images.detach().float().clone()
    b, _, h, w = out.shape
    xy = kp[..., :2].detach().float()
    px = ((xy[..., 0] + 1) / 2 * (w - 1)).round().long()  # (B, K)
    py = ((xy[..., 1] + 1) / 2 * (h - 1)).round().long()
    for k in range(kp.shape[1]):
        colour = _PALETTE[k % len(_PALETTE)].to(out.device)[:, None, None]
        for i in range(b):
            x0, y0 = int(px[i, k]), int(py[i, k])
            if -radius <= x0 < w + radius and -radius <= y0 < h + radius:
                xs = slice(max(x0 - radius, 0), min(x0 + radius + 1, w))
                ys = slice(max(y0 - radius, 0), min(y0 + radius + 1, h))
                out[i, :, ys, xs] = colour
    return out


def _fit(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, C, h, w) -> (B, 3, size, size) float in [0, 1] (grey maps repeated to RGB)."""
    x = x.detach().float()
    if x.shape[1] == 1:
        x = x.repeat(1, 3, 1, 1)
    if x.shape[-1] != size or x.shape[-2] != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    return x.clamp(0, 1)


def reenactment_grid(
    source: torch.Tensor,
    driving: torch.Tensor,
    prediction: torch.Tensor,
    occlusion: torch.Tensor | None,
    kp_source: torch.Tensor,
    kp_driving: torch.Tensor,
    max_rows: int = 4,
) -> torch.Tensor:
    """One row per sample: source | driving | prediction | occlusion | source + x_s | driving + x_d.

    Args:
        source: (B, 3, H, W) source image (any size; resized to the prediction's size).
        driving: (B, 3, H, W) driving image / target.
        prediction: (B, 3, S, S) generated image.
        occlusion: (B, 1, h, w) occlusion map or None (a black tile).
        kp_source: (B, K, 3) x_s.
        kp_driving: (B, K, 3) x_d.
        max_rows: samples shown.

    Returns:
        (3, rows·S, 6·S) float image in [0, 1].
    """
    n = min(max_rows, prediction.shape[0])
    size = prediction.shape[-1]
    src, drv = _fit(source[:n], size), _fit(driving[:n], size)
    occ = _fit(occlusion[:n], size) if occlusion is not None else torch.zeros_like(src)
    tiles = [src, drv, _fit(prediction[:n], size), occ]
    radius = max(1, size // 128)
    tiles += [draw_keypoints(src, kp_source[:n], radius), draw_keypoints(drv, kp_driving[:n], radius)]
    rows = torch.cat(tiles, dim=3)  # (n, 3, S, 6S)
    return torch.cat(list(rows), dim=1)  # (3, nS, 6S)


def log_grid(loggers: list, key: str, grid: torch.Tensor, step: int, out_dir: str | None = None) -> None:
    """Send ``grid`` (3, H, W) to every logger that takes images (``log_image``, e.g. wandb) and, if ``out_dir`` is
    given, save it as ``{out_dir}/{key with / -> _}_{step:08d}.png`` (CSV-only runs still get their grids)."""
    from pathlib import Path

    from torchvision.utils import save_image

    grid = grid.detach().float().clamp(0, 1).cpu()
    for logger in loggers:
        if hasattr(logger, "log_image"):
            logger.log_image(key=key, images=[grid.permute(1, 2, 0).numpy()], step=step)
    if out_dir is not None:
        path = Path(out_dir) / f"{key.replace('/', '_')}_{step:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        save_image(grid, path)
