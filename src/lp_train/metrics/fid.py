"""FID (Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule ..."), the cross-reenactment realism
metric of LivePortrait (Sec. 4.2, Table 3).

Features: pytorch-fid's InceptionV3 pool3 (``lp_train.metrics.inception``). Statistics: mean and unbiased
covariance (``numpy.cov``, ddof = 1), as ``pytorch_fid.fid_score.calculate_activation_statistics``. Distance:
d² = |μ1 - μ2|² + tr(Σ1 + Σ2 - 2 (Σ1 Σ2)^½); we take the trace of the square root from the eigenvalues of the
symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (float64), which agrees with ``pytorch_fid.fid_score.calculate_frechet_distance``
(scipy ``sqrtm``) to < 1e-3 and stays finite for rank-deficient covariances (fewer frames than dimensions).

The metric state is the running sums (count, Σx, Σxxᵀ; float64) of both sides, summed across DDP ranks. The
reference side is either accumulated with ``update(images, real=True)`` or set from cached statistics
(``set_reference``); ``reference_stats`` caches a reference set's statistics as ``.npz`` keyed by its content
and the extractor settings. FID needs many frames to be meaningful (the paper: thousands); with fewer samples
than feature dimensions the value is biased high — reports state the sample counts.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torchmetrics import Metric

from lp_train.metrics.inception import FIDInception

log = logging.getLogger(__name__)


def _sqrtm_psd(mat: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh((mat + mat.T) / 2)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (float64, eigenvalue form)."""
    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError(f"FID: statistics differ in shape: {mu1.shape}/{s1.shape} vs {mu2.shape}/{s2.shape}")
    r1 = _sqrtm_psd(s1)
    eig = np.linalg.eigvalsh(r1 @ s2 @ r1)
    tr_covmean = float(np.sqrt(np.clip(eig, 0, None)).sum())
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def stats_from_features(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mu, sigma) exactly as pytorch-fid (mean, ``np.cov(rowvar=False)``)."""
    features = np.asarray(features, dtype=np.float64)
    return features.mean(0), np.cov(features, rowvar=False)


class FID(Metric):
    """Fréchet Inception Distance (↓) between generated frames and a reference set.

    Args:
        weights: ``weights.inception_fid`` value (local pytorch-fid Inception file or ``random`` = uncalibrated).
        dims: Inception feature width (2048 = pool3, the standard).
    """

    name = "fid"
    higher_is_better = False
    full_state_update = False
    kind = "distribution"

    def __init__(self, weights: str | os.PathLike | None = None, dims: int = 2048) -> None:
        super().__init__()
        self.extractor = FIDInception(weights, dims)
        self.dims = dims
        for side in ("fake", "real"):
            self.add_state(f"{side}_n", torch.tensor(0, dtype=torch.long), dist_reduce_fx="sum")
            self.add_state(f"{side}_sum", torch.zeros(dims, dtype=torch.float64), dist_reduce_fx="sum")
            self.add_state(f"{side}_outer", torch.zeros(dims, dims, dtype=torch.float64), dist_reduce_fx="sum")
        self._reference: tuple[np.ndarray, np.ndarray, int, str] | None = None

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) [0, 1] -> (B, dims) Inception features."""
        return self.extractor(images)

    def update(self, images: torch.Tensor, real: bool = False) -> None:
        """Add (B, 3, H, W) [0, 1] images — or precomputed (B, dims) features — to the generated (``real=False``)
        or the reference side."""
        side = "real" if real else "fake"
        f = images if images.ndim == 2 else self.features(images)
        f = torch.as_tensor(f).to(self.fake_sum.device, torch.float64)
        if f.ndim != 2 or f.shape[1] != self.dims:
            raise ValueError(f"FID: expected (B, {self.dims}) features, got {tuple(f.shape)}")
        setattr(self, f"{side}_n", getattr(self, f"{side}_n") + f.shape[0])
        setattr(self, f"{side}_sum", getattr(self, f"{side}_sum") + f.sum(0))
        setattr(self, f"{side}_outer", getattr(self, f"{side}_outer") + f.T @ f)

    def update_features(self, feats: torch.Tensor, real: bool = False) -> None:
        """Add precomputed (B, dims) features (e.g. cached per video) to one side."""
        feats = torch.as_tensor(feats)
        if feats.ndim != 2:
            raise ValueError(f"FID: expected (B, {self.dims}) features, got {tuple(feats.shape)}")
        self.update(feats, real)

    def set_reference(self, mu: np.ndarray, sigma: np.ndarray, n: int, source: str) -> None:
        """Use precomputed reference statistics (from ``reference_stats``) instead of accumulated real images."""
        self._reference = (np.asarray(mu, np.float64), np.asarray(sigma, np.float64), int(n), source)

    def stats(self, side: str) -> tuple[np.ndarray, np.ndarray, int]:
        """(mu, sigma, n) of the accumulated ``fake`` or ``real`` side (unbiased covariance)."""
        n = int(getattr(self, f"{side}_n"))
        if n < 2:
            raise ValueError(f"FID: the {side} side has {n} feature vectors; need at least 2")
        s, o = getattr(self, f"{side}_sum").cpu().numpy(), getattr(self, f"{side}_outer").cpu().numpy()
        mu = s / n
        return mu, (o - n * np.outer(mu, mu)) / (n - 1), n

    def compute(self) -> torch.Tensor:
        """FID of the (DDP-synced) states."""
        return torch.tensor(self.distance(), dtype=torch.float64)

    def distance(self) -> float:
        """FID of this process's states without any DDP sync (e.g. when rank 0 already holds all features)."""
        mu1, s1, _ = self.stats("fake")
        if self._reference is not None:
            mu2, s2 = self._reference[:2]
        else:
            mu2, s2, _ = self.stats("real")
        return frechet_distance(mu1, s1, mu2, s2)

    def info(self) -> dict:
        ext = self.extractor.info()
        ref_n = self._reference[2] if self._reference else int(self.real_n)
        return {
            "implementation": f"lp_train.metrics.fid (Fréchet distance as pytorch_fid); {ext['implementation']}",
            "weights": ext["weights"],
            "calibrated": ext["calibrated"],
            "settings": {
                "dims": self.dims,
                "n_generated": int(self.fake_n),
                "n_reference": ref_n,
                "reference": self._reference[3] if self._reference else "accumulated real images",
                "covariance": "unbiased (ddof=1)",
            },
        }


def reference_stats(
    key: str, batches: Callable[[], Iterable[torch.Tensor]], extractor: FIDInception, cache_dir: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray, int]:
    """Statistics of a reference image set, cached as ``cache_dir/fid-ref-<hash>.npz``.

    Args:
        key: a description that changes whenever the set changes (e.g. file names, sizes and mtimes, resize).
        batches: called only on a cache miss; yields (B, 3, H, W) [0, 1] image batches of the set.
        extractor: the Inception feature extractor (its weights and dims enter the cache key).
        cache_dir: folder of the ``.npz`` cache.
    """
    ident = json.dumps({"key": key, "extractor": extractor.info()}, sort_keys=True)
    path = Path(cache_dir) / f"fid-ref-{hashlib.sha1(ident.encode()).hexdigest()[:16]}.npz"
    if path.is_file():
        with np.load(path, allow_pickle=False) as z:
            log.info("FID reference statistics from cache %s", path)
            return z["mu"], z["sigma"], int(z["n"])
    feats = torch.cat([extractor(b).double().cpu() for b in batches()]).numpy()
    if len(feats) < 2:
        raise ValueError(f"FID reference set {key!r} yielded {len(feats)} images; need at least 2")
    mu, sigma = stats_from_features(feats)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, mu=mu, sigma=sigma, n=len(feats), ident=ident)
    os.replace(tmp, path)
    return mu, sigma, len(feats)
