"""Identity-disjoint splits: no person may appear in both the training and the test split of one build.

LivePortrait (Guo et al. 2024, Sec. 4.2) evaluates on held-out test sets (TalkingHead-1KH, VFHQ); a test identity
that also appears in training inflates every self-reenactment metric without any error showing. An identity is
``(dataset, identity)``: identity labels of different corpora are different namespaces (VoxCeleb's ``id00017`` is
not HDTF's ``id00017``), and the same person in two corpora cannot be recognised from labels. Inputs without a
label (``identity_from=file``) are their own identity and cannot leak. ``lp-prep check-splits MANIFEST...`` runs
the check on manifests; ``lp-prep`` runs it on its input list before curating (``inputs.check_identity_splits``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

TRAIN_SPLITS = frozenset({"train", "dev", "training"})


@dataclass(frozen=True)
class Leak:
    """An identity found in a training split and in another split."""

    dataset: str
    identity: str
    splits: dict[str, int]  # split -> rows of this identity in it

    def __str__(self) -> str:
        counts = ", ".join(f"{s}: {n}" for s, n in sorted(self.splits.items()))
        return f"identity {self.identity!r} of dataset {self.dataset!r} is in {counts}"


def identity_leaks(rows: Iterable[dict]) -> list[Leak]:
    """Identities of a manifest (rows with ``identity``, ``split``, ``dataset``) that sit in train and in test/val.

    Any split other than train / dev / training counts as held out; two held-out splits sharing an identity (e.g.
    val and test) are not a leak.
    """
    seen: dict[tuple[str, str], dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for row in rows:
        identity = str(row.get("identity") or "")
        if identity:
            seen[(str(row.get("dataset") or ""), identity)][str(row.get("split") or "train")] += 1
    leaks = []
    for (dataset, identity), splits in sorted(seen.items()):
        if TRAIN_SPLITS & splits.keys() and splits.keys() - TRAIN_SPLITS:
            leaks.append(Leak(dataset, identity, dict(splits)))
    return leaks


def check_identity_disjoint(rows: Iterable[dict], where: str = "the input list") -> None:
    """Raise ``ValueError`` naming the first leaking identities if train and test share one."""
    leaks = identity_leaks(rows)
    if leaks:
        shown = "\n  ".join(str(leak) for leak in leaks[:10])
        more = f"\n  ... and {len(leaks) - 10} more" if len(leaks) > 10 else ""
        raise ValueError(
            f"{len(leaks)} identities of {where} are in a training split and a held-out split (train/test leak):\n"
            f"  {shown}{more}\nMove each identity's rows to one split (the corpus recipes keep the official "
            "splits: lp-prep recipe NAME --help), or set inputs.check_identity_splits=false to curate anyway."
        )
