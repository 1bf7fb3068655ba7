"""Controls for self-reenactment scores (LivePortrait Sec. 4.2, Table 2 protocol) that separate motion from texture.

A held-out self-reenactment L1 mixes two things: how well the generator reproduces a face (texture) and whether it
moves it to the driving pose (motion). A model can lose to copy-the-source only because it blurs. Every score is
therefore reported beside baselines computed on exactly the same frames:

* ``copy_source``: the source frame as the prediction (a model that does not move the face at all);
* ``blur_matched_copy_source``: the source frame Gaussian-blurred until its L1 to itself equals the model's own
  self-reconstruction L1 (source = driving, reported as ``reconstruction_floor``); sigma found by bisection per clip.
  A model that learnt appearance but no motion scores like this baseline; one that moves the face scores better;
* ``large_motion``: the same numbers on the pairs in the top third of copy-source L1 of their clip group;
* ``l1_low``: L1 at 1/``LOW_RES_FACTOR`` resolution (area downsampling), a texture-insensitive motion error.

``score_table`` turns per-pair scores of named clips into the per-clip / per-group table that ``heldout.json``,
``learning.md`` and ``lp-eval``'s self-reenactment report show.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F

METHODS = ("model", "copy_source", "blur_matched_copy_source")
LOW_RES_FACTOR = 8
LARGE_MOTION_FRACTION = 1 / 3


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur of (B, C, H, W) images (replicate padding, radius ceil(3 sigma)); sigma 0: identity."""
    if sigma <= 0:
        return x
    radius = max(1, math.ceil(3 * sigma))
    t = torch.arange(-radius, radius + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype).to(x.device)
    c = x.shape[1]
    kx, ky = k.view(1, 1, 1, -1).expand(c, 1, 1, -1), k.view(1, 1, -1, 1).expand(c, 1, -1, 1)
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), kx, groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), ky, groups=c)


def low_res(x: torch.Tensor, factor: int = LOW_RES_FACTOR) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H // factor, W // factor) by area averaging (at least 1 pixel)."""
    size = (max(1, x.shape[-2] // factor), max(1, x.shape[-1] // factor))
    return F.interpolate(x, size=size, mode="area")


def l1_per_frame(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) mean absolute difference of two (B, C, H, W) batches (float64)."""
    return (a.double() - b.double()).abs().flatten(1).mean(1)


def frame_l1s(pred: torch.Tensor, driving: torch.Tensor) -> dict[str, torch.Tensor]:
    """{"l1", "l1_low"} per frame of a prediction against the driving (ground-truth) frames."""
    return {"l1": l1_per_frame(pred, driving), "l1_low": l1_per_frame(low_res(pred), low_res(driving))}


def blur_matched_sigma(
    sources: torch.Tensor, target_l1: float, weights: torch.Tensor | None = None, iters: int = 40
) -> tuple[float, bool]:
    """Sigma whose blur of ``sources`` (U, C, H, W) has (``weights``-weighted) mean L1 ``target_l1`` to them.

    Bracketing by doubling from 1 px, then bisection (sigma at most H/2). Returns (sigma, saturated): saturated
    when even the widest blur stays below the target (the widest sigma is returned; the baseline is then sharper
    than the model's own reconstruction)."""
    w = torch.ones(len(sources), dtype=torch.float64) if weights is None else weights.double()
    w = w / w.sum()

    def l1(sigma: float) -> float:
        return float((l1_per_frame(gaussian_blur(sources, sigma), sources).cpu() * w).sum())

    if target_l1 <= 0:
        return 0.0, False
    lo, hi, top = 0.0, 1.0, sources.shape[-1] / 2
    while l1(hi) < target_l1:  # bracket first: small sigmas (small kernels) are the common case
        if hi >= top:
            return top, True
        lo, hi = hi, min(2 * hi, top)
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        if l1(mid) < target_l1:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-4:
            break
    return 0.5 * (lo + hi), False


def source_runs(source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of the first pair of each run of identical consecutive sources, and the run lengths (the paper's
    protocol repeats one source per clip: one self-reconstruction instead of N)."""
    same = (source[1:] == source[:-1]).flatten(1).all(1)
    starts = torch.cat([torch.zeros(1, dtype=torch.long), torch.nonzero(~same).flatten() + 1])
    ends = torch.cat([starts[1:], torch.tensor([len(source)])])
    return starts, ends - starts


def _means(scores: Mapping[str, Mapping[str, torch.Tensor]], mask: torch.Tensor | None) -> dict[str, dict]:
    out = {}
    for method, metrics in scores.items():
        out[method] = {k: float(v[mask].mean() if mask is not None else v.mean()) for k, v in metrics.items()}
    return out


def large_motion_mask(copy_l1: torch.Tensor, fraction: float = LARGE_MOTION_FRACTION) -> torch.Tensor:
    """True for the ``ceil(fraction * N)`` pairs with the largest copy-the-source L1 (ties by order)."""
    k = max(1, math.ceil(fraction * len(copy_l1)))
    mask = torch.zeros(len(copy_l1), dtype=torch.bool)
    mask[torch.argsort(copy_l1, descending=True, stable=True)[:k]] = True
    return mask


def _entry(scores: Mapping[str, Mapping[str, torch.Tensor]], floor: torch.Tensor, large: torch.Tensor) -> dict:
    """One table row set (clip or group): every method's means, the floor, the large-motion subset, legacy keys."""
    e: dict = {"pairs": int(len(floor)), "reconstruction_floor": float(floor.mean()), **_means(scores, None)}
    n_large = int(large.sum())
    e["large_motion"] = {"pairs": n_large, **(_means(scores, large) if n_large else {m: None for m in scores})}
    e["l1"], e["l1_copy_source"] = e["model"]["l1"], e["copy_source"]["l1"]  # flat keys of earlier heldout.json
    e["ratio"] = e["l1"] / max(e["l1_copy_source"], 1e-12)
    return e


def score_table(clips: Mapping[str, Mapping]) -> dict:
    """Per-clip and per-group tables from per-pair scores.

    Args:
        clips: name -> {"group": str, "scores": {method: {metric: (N,) tensor}}, "floor": (N,) self-reconstruction
            L1 of each pair's source, "blur_sigma": float, "blur_saturated": bool}; methods as in ``METHODS``.

    Returns:
        {"clips": {name: entry}, "groups": {group: entry, ..., "all": entry}}; an entry holds ``pairs``,
        ``reconstruction_floor``, one {metric: mean} per method, ``large_motion`` (the pairs in the top third of
        copy-the-source L1 of the clip's group; for "all": of all pairs) and the flat ``l1`` / ``l1_copy_source`` /
        ``ratio``. Groups are pair-weighted.
    """
    names = list(clips)
    groups = sorted({clips[n]["group"] for n in names})
    large: dict[str, torch.Tensor] = {}  # per clip, its pairs in its group's top third
    out_groups = {}
    for g in dict.fromkeys([*groups, "all"]):
        members = [n for n in names if g == "all" or clips[n]["group"] == g]
        cat = {m: {k: torch.cat([clips[n]["scores"][m][k] for n in members]) for k in clips[members[0]]["scores"][m]}
               for m in clips[members[0]]["scores"]}  # fmt: skip
        mask = large_motion_mask(cat["copy_source"]["l1"])
        floor = torch.cat([clips[n]["floor"] for n in members])
        out_groups[g] = _entry(cat, floor, mask)
        if g in groups:
            sizes = [len(clips[n]["floor"]) for n in members]
            large.update(zip(members, torch.split(mask, sizes), strict=True))
    out_clips = {}
    for n in names:
        c = clips[n]
        blur = {"blur_sigma": c.get("blur_sigma"), "blur_saturated": c.get("blur_saturated", False)}
        out_clips[n] = {"group": c["group"], **_entry(c["scores"], c["floor"], large[n]), **blur}
    return {"clips": out_clips, "groups": out_groups}


def clip_scores(
    preds_l1: Mapping[str, torch.Tensor],
    source: torch.Tensor,
    driving: torch.Tensor,
    self_recon: torch.Tensor,
    starts: torch.Tensor,
    counts: torch.Tensor,
) -> dict:
    """All methods' per-pair scores for one clip, given the model's per-pair ``preds_l1`` ({"l1", "l1_low"}),
    the (N, C, H, W) ``source`` / ``driving`` frames and the model's self-reconstruction of each unique source
    (``self_recon`` (U, C, H, W), sources ``source[starts]`` repeated ``counts`` times).

    Returns {"scores", "floor", "blur_sigma", "blur_saturated"} as ``score_table`` takes them."""  # fmt: skip
    uniq = source[starts].float()
    floor_u = l1_per_frame(self_recon.float(), uniq).cpu()
    floor = floor_u.repeat_interleave(counts)
    sigma, saturated = blur_matched_sigma(uniq, float(floor.mean()), weights=counts)
    blurred = gaussian_blur(uniq, sigma).repeat_interleave(counts.to(uniq.device), dim=0)
    scores = {"model": {k: v.cpu() for k, v in preds_l1.items()},
              "copy_source": {k: v.cpu() for k, v in frame_l1s(source, driving).items()},
              "blur_matched_copy_source": {k: v.cpu() for k, v in frame_l1s(blurred, driving).items()}}  # fmt: skip
    return {"scores": scores, "floor": floor, "blur_sigma": sigma, "blur_saturated": saturated}


def control_note(entry: Mapping, method: str) -> str:
    """The note column of a controls table row: the model's reconstruction floor, the blur-matched copy's sigma."""
    if method == "model":
        return f"floor {entry['reconstruction_floor']:.4f}"
    if method == "blur_matched_copy_source" and entry.get("blur_sigma") is not None:
        return f"σ {entry['blur_sigma']:.2f} px" + (" (saturated)" if entry.get("blur_saturated") else "")
    return ""
