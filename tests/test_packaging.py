"""Project hygiene: packaging lists every package, networks stay free of training frameworks, no hub downloads,
no unsafe torch.load, console scripts resolve."""

from __future__ import annotations

import importlib
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PACKAGE_DIRS = {"lp_train": ROOT / "src" / "lp_train", "data_prep": ROOT / "data_prep", "lp_eval": ROOT / "eval"}
SOURCE_DIRS = [ROOT / "src", ROOT / "data_prep", ROOT / "eval", ROOT / "bench"]


def _py_files() -> list[Path]:
    return [p for d in SOURCE_DIRS for p in d.rglob("*.py") if "__pycache__" not in p.parts]


def test_every_package_directory_is_listed_in_pyproject():
    listed = set(PYPROJECT["tool"]["setuptools"]["packages"])
    found = set()
    for name, root in PACKAGE_DIRS.items():
        for init in root.rglob("__init__.py"):
            rel = init.parent.relative_to(root)
            found.add(".".join([name, *rel.parts]) if rel.parts else name)
    assert found - listed == set(), "add these packages to [tool.setuptools] packages"


def test_networks_do_not_import_training_frameworks():
    bad = re.compile(r"^\s*(import|from)\s+(lightning|pytorch_lightning|hydra|omegaconf)\b", re.M)
    offenders = [p.name for p in (ROOT / "src" / "lp_train" / "models").glob("*.py") if bad.search(p.read_text())]
    assert offenders == []


def test_no_hub_downloads_and_no_unsafe_torch_load():
    hub = re.compile(r"pretrained\s*=\s*True|torch\.hub\.|load_state_dict_from_url|hf_hub_download|urlretrieve")
    load = re.compile(r"torch\.load\((?:[^()]|\([^()]*\))*\)", re.S)
    hub_hits, unsafe = [], []
    for p in _py_files():
        text = p.read_text()
        hub_hits += [f"{p.relative_to(ROOT)}" for _ in hub.finditer(text)]
        unsafe += [f"{p.relative_to(ROOT)}" for m in load.finditer(text) if "weights_only=True" not in m.group(0)]
    assert hub_hits == [] and unsafe == []


@pytest.mark.parametrize("script", sorted(PYPROJECT["project"]["scripts"]))
def test_console_scripts_resolve(script):
    module, _, attr = PYPROJECT["project"]["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))
