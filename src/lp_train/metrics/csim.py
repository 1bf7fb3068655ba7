"""CSIM — cosine similarity of face-identity embeddings, the identity-preservation metric of LivePortrait (Sec. 4.2,
Tables 2-3): self-reenactment compares each generated frame with its driving (ground-truth) frame, cross-
reenactment with the source image.

Embeddings from ``lp_train.metrics.identity`` (dlib's face-recognition ResNet by default, ArcFace via
``weights.face_id``; the paper used ArcFace, so values are comparable only with the same embedder — recorded in
``info``). Per frame: cos(e_gen, e_ref) = e_gen·e_ref / (|e_gen| |e_ref|).
"""

from __future__ import annotations

import torch

from lp_train.metrics.base import FrameMetric
from lp_train.metrics.identity import IdentityEmbedder


def cosine_similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(B,) cosine similarity of (B, D) embeddings (float64)."""
    a, b = a.double(), b.double()
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)


class CSIM(FrameMetric):
    """Mean cosine similarity (↑) of identity embeddings; ``update(emb_gen, emb_ref)`` with (B, D) tensors.

    Args:
        embedder: the identity embedder used to produce the embeddings (``embed`` calls it; recorded in ``info``).
    """

    name = "csim"
    higher_is_better = True
    kind = "identity"

    def __init__(self, embedder: IdentityEmbedder) -> None:
        super().__init__()
        self.embedder = embedder

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) [0, 1] -> (B, D) embeddings."""
        return self.embedder(images)

    def score(self, preds: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if preds.ndim != 2 or preds.shape != target.shape:
            raise ValueError(f"csim: expected two (B, D) embeddings, got {tuple(preds.shape)}, {tuple(target.shape)}")
        return cosine_similarity(preds, target)

    def info(self) -> dict:
        est = self.embedder.info()
        return {
            "implementation": f"lp_train.metrics.csim (cosine similarity); embedder: {est['implementation']}",
            "weights": est.get("weights"),
            "calibrated": bool(est.get("calibrated", False)),
            "settings": est.get("settings", {}),
        }
