"""Adversarial and feature-matching losses of the cascaded GAN (LivePortrait Sec. 3.1: global, face and lip
discriminators; hinge GAN as in face vid2vid Sec. 3.3; feature matching as pix2pixHD Sec. 3.2 / FOMM).

Discriminators are owned by the LightningModule; these functions only see their outputs: a list over scales of
``(logits, [features])`` as returned by ``lp_train.models.discriminator.MultiScaleDiscriminator``. Every loss is
averaged over scales.

Kinds (``kind``):

- ``hinge``: D = E[relu(1 − D(real))] + E[relu(1 + D(fake))]; G = −E[D(fake)].
- ``lsgan``: D = E[(1 − D(real))²] + E[D(fake)²]; G = E[(1 − D(fake))²] (FOMM).
- ``nonsaturating``: D = E[softplus(−D(real))] + E[softplus(D(fake))]; G = E[softplus(−D(fake))] (StyleGAN).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

DiscOutput = list[tuple[torch.Tensor, list[torch.Tensor]]]
KINDS = ("hinge", "lsgan", "nonsaturating")


def _check(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"unknown GAN loss {kind!r}; choose one of {KINDS}")


def discriminator_loss(real: DiscOutput, fake: DiscOutput, kind: str = "hinge") -> torch.Tensor:
    """D's loss from its outputs on real and (detached) generated images."""
    _check(kind)
    if len(real) != len(fake):
        raise ValueError(f"real and fake outputs have {len(real)} vs {len(fake)} scales")
    terms = []
    for (lr, _), (lf, _) in zip(real, fake, strict=True):
        if kind == "hinge":
            terms.append(F.relu(1 - lr).mean() + F.relu(1 + lf).mean())
        elif kind == "lsgan":
            terms.append((1 - lr).pow(2).mean() + lf.pow(2).mean())
        else:
            terms.append(F.softplus(-lr).mean() + F.softplus(lf).mean())
    return torch.stack(terms).mean()


def generator_loss(fake: DiscOutput, kind: str = "hinge") -> torch.Tensor:
    """G's adversarial loss from D's outputs on generated images."""
    _check(kind)
    terms = []
    for lf, _ in fake:
        if kind == "hinge":
            terms.append(-lf.mean())
        elif kind == "lsgan":
            terms.append((1 - lf).pow(2).mean())
        else:
            terms.append(F.softplus(-lf).mean())
    return torch.stack(terms).mean()


def feature_matching_loss(real: DiscOutput, fake: DiscOutput) -> torch.Tensor:
    """mean over scales of Σ_layers mean |D_l(real) − D_l(fake)| (real features detached)."""
    if len(real) != len(fake):
        raise ValueError(f"real and fake outputs have {len(real)} vs {len(fake)} scales")
    terms = []
    for (_, fr), (_, ff) in zip(real, fake, strict=True):
        terms.append(sum((a.detach() - b).abs().mean() for a, b in zip(fr, ff, strict=True)))
    return torch.stack(terms).mean()


def mean_logit(out: DiscOutput) -> torch.Tensor:
    """D's mean score over scales and patches (for logging the D/G balance)."""
    return torch.stack([logits.detach().float().mean() for logits, _ in out]).mean()
