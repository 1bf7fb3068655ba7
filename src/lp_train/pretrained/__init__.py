"""Trained lp-train models shipped inside the package, addressed by a short name.

``checkpoint=stage1_tiny_faces`` (``lp-animate``, ``lp-eval``) and ``module.init_weights=stage1_tiny_faces``
(stage 1) resolve through ``resolve``: an existing path is used as is, a registered short name maps to its file in
this folder, anything else is an error naming the file and the available names. Every file is written by ``pack``
(``python -m lp_train.pretrained pack CKPT OUT``): base networks only (F, M, W, G; no stage-2 heads, no
discriminators, no optimiser), float16 storage, the training metadata beside it; its card is ``MODEL_CARD.md``.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from lp_train.fileio import atomic_torch_save

PACKAGE_DIR = Path(__file__).resolve().parent
MAX_BYTES = 15 * 1024 * 1024  # what the repository and the wheel carry
HEADS = "stitching_retargeting_module."


@dataclass(frozen=True)
class Pretrained:
    """A shipped model: its file in this folder, the ``model=`` config it loads into, one line on what it is."""

    file: str
    model: str
    description: str


REGISTRY = {
    "stage1_tiny_faces": Pretrained(
        "stage1_tiny_faces.pt",
        "tiny",
        "stage 1 (F, M, W, G) of the tiny networks trained on CPU on real talking-head clips (MODEL_CARD.md)",
    ),
}


def path_of(name: str) -> Path:
    """The file a registered short name maps to (whether or not it is installed)."""
    return PACKAGE_DIR / REGISTRY[name].file


def available() -> list[str]:
    """Registered short names whose file is installed."""
    return [n for n in REGISTRY if path_of(n).is_file()]


def resolve(checkpoint: str | os.PathLike) -> Path:
    """An existing path -> itself; a registered short name -> its installed file; else ``FileNotFoundError``
    naming what was looked for and the available short names."""
    path = Path(checkpoint)
    if path.exists():
        return path
    name = str(checkpoint)
    if name in REGISTRY and path_of(name).is_file():
        return path_of(name)
    names = ", ".join(f"{n}{'' if path_of(n).is_file() else ' (file not installed)'}" for n in REGISTRY)
    if name in REGISTRY:
        raise FileNotFoundError(
            f"pretrained model {name!r}: its file {path_of(name)} is not installed (pack a checkpoint into it with "
            f"`python -m lp_train.pretrained pack CKPT {name}`). Registered short names: {names}"
        )
    raise FileNotFoundError(
        f"checkpoint {name!r} is neither an existing file or folder nor a pretrained short name. "
        f"Registered short names: {names}"
    )


def _lightning_state(ckpt: dict) -> tuple[dict, str]:
    """The eval model of a Lightning checkpoint (the EMA when present) and the prefix it was found under."""
    sd = ckpt["state_dict"]
    prefix = "model_ema.module." if any(k.startswith("model_ema.module.") for k in sd) else "model."
    return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix)}, prefix


def pack(checkpoint: str | os.PathLike, out: str | os.PathLike, model: str = "tiny", note: str = "") -> Path:
    """Write ``out`` (a path or a registered short name): the base networks of ``checkpoint`` (a Lightning .ckpt,
    its EMA when present, or an lp-train model file) in float16, with metadata; atomic; at most ``MAX_BYTES``."""
    # deferred: lp_train.checkpoint imports this package (it resolves short names), so it is imported on use
    from lp_train.checkpoint import (  # deferred: lp_train.checkpoint imports this package (short names)
        MODEL_FORMAT,
        CheckpointError,
        read_model_state,
    )

    src = Path(checkpoint)
    out = path_of(str(out)) if str(out) in REGISTRY else Path(out)
    obj = torch.load(src, map_location="cpu", weights_only=True) if src.is_file() else {}
    step = None
    if isinstance(obj, dict) and "state_dict" in obj and obj.get("format") != MODEL_FORMAT:
        sd, prefix = _lightning_state(obj)
        step = obj.get("global_step")
        if not sd:
            raise CheckpointError(f"{src}: no model weights under 'model.' or 'model_ema.module.'")
    else:
        sd, prefix = read_model_state(src), None
    base = {
        k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in sd.items() if not k.startswith(HEADS)
    }
    if not base:
        raise CheckpointError(f"{src}: no base-network weights to pack")
    metadata = {
        "source": str(src.resolve()),
        "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest() if src.is_file() else None,
        "global_step": step,
        "weights": "EMA" if prefix == "model_ema.module." else "trained",
        "model": model,
        "parameters": int(sum(v.numel() for v in base.values() if v.is_floating_point())),
        "packed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": note,
    }
    record = {"format": MODEL_FORMAT, "state_dict": base, "storage_dtype": "float16", "metadata": metadata,
              "config": {"model": model}}  # fmt: skip
    tmp = out.with_name(f".{out.name}.packing")
    atomic_torch_save(record, tmp)
    size = tmp.stat().st_size
    if size > MAX_BYTES:
        tmp.unlink()
        raise ValueError(f"packed model is {size / 2**20:.1f} MiB > {MAX_BYTES / 2**20:.0f} MiB: not written to {out}")
    os.replace(tmp, out)
    return out
