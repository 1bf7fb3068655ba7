"""Checkpoints: the official LivePortrait release format <-> lp-train's model files (our networks keep the
official parameter names, so both load without a key map).

Official release (plain state dicts, loaded by the official inference code with ``strict=True``)::

    base_models/appearance_feature_extractor.pth
    base_models/motion_extractor.pth                      keys ``detector.*``
    base_models/warping_module.pth
    base_models/spade_generator.pth                       spectral norm: ``weight_orig/weight_u/weight_v``
    retargeting_models/stitching_retargeting_module.pth   {retarget_shoulder, retarget_mouth, retarget_eye}
                                                          each with ``module.mlp.N.*`` keys

Our model file (``*.pt``): ``{"format": "lp-train-model/1", "state_dict": <LivePortrait state dict>, "config": {...}}``.
Our sub-module names equal the official file stems, so import/export is a prefix map. Every load is strict:
missing, unexpected and mis-shaped keys are reported (the first few by name) and nothing is loaded partially.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from lp_train.fileio import atomic_torch_save
from lp_train.pretrained import resolve

MODEL_FORMAT = "lp-train-model/1"
BASE_FILES = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
RETARGET_FILE = "retargeting_models/stitching_retargeting_module.pth"
HEAD_PREFIX = "stitching_retargeting_module."  # state-dict keys of the stage-2 heads S, R_eyes, R_lip
# official retargeting-file key -> our sub-module name under ``stitching_retargeting_module``
RETARGET_KEYS = {"retarget_shoulder": "stitching", "retarget_mouth": "lip", "retarget_eye": "eye"}


class CheckpointError(ValueError):
    """A checkpoint does not match the network it is loaded into."""


def _trusted_load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - re-raised with the file name
        raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e


def check_state_dict(expected: Mapping[str, torch.Tensor], got: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise ``CheckpointError`` unless ``got`` has exactly ``expected``'s keys and shapes (names the first few)."""
    missing = [k for k in expected if k not in got]
    extra = [k for k in got if k not in expected]
    shape = [
        f"{k}: expected {tuple(expected[k].shape)}, got {tuple(got[k].shape)}"
        for k in expected
        if k in got and tuple(expected[k].shape) != tuple(got[k].shape)
    ]
    if missing or extra or shape:
        parts = []
        for label, items in (("missing keys", missing), ("unexpected keys", extra), ("shape mismatches", shape)):
            if items:
                head = ", ".join(items[:5]) + (f", ... (+{len(items) - 5} more)" if len(items) > 5 else "")
                parts.append(f"{len(items)} {label}: {head}")
        raise CheckpointError(f"{what} does not match the network: " + "; ".join(parts))


def load_strict(module: nn.Module, state_dict: Mapping[str, torch.Tensor], what: str) -> None:
    """Check keys and shapes first, then load; never a partial load."""
    check_state_dict(module.state_dict(), state_dict, what)
    module.load_state_dict(state_dict, strict=True)


def from_liveportrait(files: Mapping[str, Mapping]) -> dict[str, torch.Tensor]:
    """Official per-file state dicts (keyed by file stem; retargeting as its 3-key dict) -> our flat state dict."""
    out: dict[str, torch.Tensor] = {}
    for stem in BASE_FILES:
        if stem not in files:
            raise CheckpointError(f"official checkpoint set lacks base_models/{stem}.pth")
        out.update({f"{stem}.{k}": v for k, v in files[stem].items()})
    retarget = files.get("stitching_retargeting_module")
    if retarget is not None:
        missing = sorted(set(RETARGET_KEYS) - set(retarget))
        if missing:
            raise CheckpointError(f"{RETARGET_FILE} lacks {missing} (has {sorted(retarget)})")
        for key, name in RETARGET_KEYS.items():
            for k, v in retarget[key].items():
                k = k.removeprefix("module.")
                out[f"{HEAD_PREFIX}{name}.{k}"] = v
    return out


def to_liveportrait(state_dict: Mapping[str, torch.Tensor]) -> dict[str, dict]:
    """Our flat state dict -> official per-file state dicts (retargeting keys get the ``module.`` prefix back)."""
    files: dict[str, dict] = {stem: {} for stem in BASE_FILES}
    retarget: dict[str, dict] = {key: {} for key in RETARGET_KEYS}
    by_name = {name: key for key, name in RETARGET_KEYS.items()}
    for k, v in state_dict.items():
        stem, _, rest = k.partition(".")
        if stem in files:
            files[stem][rest] = v
        elif stem == "stitching_retargeting_module":
            name, _, rest = rest.partition(".")
            retarget[by_name[name]][f"module.{rest}"] = v
        else:
            raise CheckpointError(f"key {k!r} belongs to no official checkpoint file")
    if any(retarget.values()):
        files["stitching_retargeting_module"] = retarget
    return files


def read_official_dir(root: str | os.PathLike) -> dict[str, Mapping]:
    """Read the official release folder (``base_models/`` + optional ``retargeting_models/``)."""
    root = Path(root)
    files: dict[str, Mapping] = {}
    for stem in BASE_FILES:
        files[stem] = _trusted_load(root / "base_models" / f"{stem}.pth")
    if (root / RETARGET_FILE).is_file():
        files["stitching_retargeting_module"] = _trusted_load(root / RETARGET_FILE)
    return files


def write_official_dir(state_dict: Mapping[str, torch.Tensor], root: str | os.PathLike) -> list[Path]:
    """Write our state dict as the official release layout; returns the files written."""
    root = Path(root)
    written = []
    for stem, sd in to_liveportrait(state_dict).items():
        path = root / (RETARGET_FILE if stem == "stitching_retargeting_module" else f"base_models/{stem}.pth")
        atomic_torch_save(dict(sd), path)
        written.append(path)
    return written


def save_model(model: nn.Module, path: str | os.PathLike, config: Mapping | None = None) -> None:
    """Save our model file (state dict + the resolved model config, no pickled code)."""
    obj = {"format": MODEL_FORMAT, "state_dict": model.state_dict(), "config": dict(config or {})}
    atomic_torch_save(obj, path)


def read_model_state(path: str | os.PathLike, prefix: str | None = None) -> dict[str, torch.Tensor]:
    """State dict from our model file (float16-stored shipped models come back as float32), from a Lightning
    ``.ckpt`` (keys under ``prefix``, default ``model.``), from an official release folder, or from a shipped
    model's short name (``lp_train.pretrained``, e.g. ``stage1_tiny_faces``)."""
    path = resolve(path)
    if path.is_dir():
        return from_liveportrait(read_official_dir(path))
    obj = _trusted_load(path)
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a model file, a Lightning checkpoint or a "
                              "state dict")  # fmt: skip
    if obj.get("format") == MODEL_FORMAT:
        sd = obj["state_dict"]
        if obj.get("storage_dtype") == "float16":
            sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
        return sd
    if "state_dict" in obj:  # Lightning checkpoint
        prefix = "model." if prefix is None else prefix
        sd = {k.removeprefix(prefix): v for k, v in obj["state_dict"].items() if k.startswith(prefix)}
        if not sd:
            raise CheckpointError(f"{path}: no keys under prefix {prefix!r} in the Lightning checkpoint")
        return sd
    raise CheckpointError(f"{path}: not an lp-train model file, a Lightning checkpoint or an official folder")


class MissingHeadsError(CheckpointError):
    """The checkpoint has no stitching / retargeting weights (a stage-1 model) but they were asked for."""


def load_model_weights(
    model: nn.Module, path: str | os.PathLike, prefix: str | None = None, heads: bool | None = None
) -> bool:
    """Strictly load our model file, a Lightning ``.ckpt`` (keys under ``prefix``) or an official release folder into
    ``model``; the one checkpoint loader of lp-train (training init, stage 2, lp-animate, lp-eval, lp-ckpt).

    Args:
        heads: the stage-2 stitching / retargeting weights (``stitching_retargeting_module.*``). None: loaded when
            both the model and the checkpoint have them; True: required (``MissingHeadsError`` without them);
            False: not loaded (the model's heads keep their values). The base networks always load strictly.

    Returns:
        Whether the checkpoint has the heads.
    """
    sd = read_model_state(path, prefix)
    has_heads = any(k.startswith(HEAD_PREFIX) for k in sd)
    model_heads = any(k.startswith(HEAD_PREFIX) for k in model.state_dict())
    if heads and not has_heads:
        raise MissingHeadsError(f"checkpoint {path} has no stitching/retargeting weights (stage 2 trains them)")
    if heads and not model_heads:
        raise CheckpointError(f"the model has no stitching_retargeting_module to load the heads of {path} into")
    load_heads = (has_heads and model_heads) if heads is None else heads
    keep = (lambda k: True) if load_heads else (lambda k: not k.startswith(HEAD_PREFIX))
    expected = {k: v for k, v in model.state_dict().items() if keep(k)}
    got = {k: v for k, v in sd.items() if keep(k)}
    check_state_dict(expected, got, f"checkpoint {path}")
    model.load_state_dict(got, strict=False)
    return has_heads
