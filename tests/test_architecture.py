"""The architecture rules of CONTRIBUTING.md, enforced on the source (an AST scan of every .py of the packages).

- Imports between the project's packages follow ``ALLOWED`` (one way: ``lp_train`` never imports ``data_prep`` or
  ``lp_eval``; ``data_prep`` and ``lp_eval`` use ``lp_train``'s library packages, not its command-line modules).
- No module imports another module's private (``_``-prefixed) names or modules, nor reads them as attributes.
- A project import inside a function carries a ``deferred:`` comment that says why it cannot be at the top.
- The architecture map of CONTRIBUTING.md names every package and states exactly the table below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = {"lp_train": ROOT / "src" / "lp_train", "data_prep": ROOT / "data_prep", "lp_eval": ROOT / "eval"}
PROJECT = tuple(PACKAGE_DIRS)
CORE = "lp_train (core modules)"
ENTRY = "lp_train (entry points)"
# Top-level modules of lp_train that are commands (Hydra / argparse mains); every other one is a core module.
ENTRY_MODULES = {"train", "animate", "ckpt_cli", "learning_check", "demo"}
LIB = {"lp_train.conf", "lp_train.face", "lp_train.models", "lp_train.teachers", "lp_train.pretrained", CORE}

# unit -> the other units it may import. A unit is a sub-package of lp_train, lp_train's core or entry modules,
# or the data_prep / lp_eval package. CONTRIBUTING.md's architecture map states the same table.
ALLOWED: dict[str, set[str]] = {
    "lp_train.conf": set(),
    "lp_train.face": set(),
    CORE: {"lp_train.conf", "lp_train.face", "lp_train.models", "lp_train.teachers", "lp_train.pretrained"},
    "lp_train.pretrained": {CORE},
    "lp_train.models": {CORE},
    "lp_train.teachers": {"lp_train.face", CORE},
    "lp_train.data": {"lp_train.face", CORE},
    "lp_train.losses": {"lp_train.face", "lp_train.teachers", CORE},
    "lp_train.metrics": {"lp_train.face", "lp_train.teachers", CORE},
    "lp_train.lit": LIB | {"lp_train.data", "lp_train.losses", "lp_train.metrics"},
    ENTRY: LIB | {"lp_train.data", "lp_train.losses", "lp_train.metrics", "lp_train.lit"},
    "data_prep": {"lp_train.conf", "lp_train.face", "lp_train.data", CORE},
    "lp_eval": LIB | {"lp_train.data", "lp_train.metrics"},
}


def unit_of(module: str) -> str:
    """The architecture unit of a dotted module name (``lp_train.face.crop`` -> ``lp_train.face``)."""
    parts = module.split(".")
    if parts[0] != "lp_train":
        return parts[0]
    if len(parts) == 1:
        return CORE  # the package's __init__
    if parts[1] == "conf" or (PACKAGE_DIRS["lp_train"] / parts[1]).is_dir():
        return f"lp_train.{parts[1]}"
    return ENTRY if parts[1] in ENTRY_MODULES else CORE


def _modules() -> list[tuple[str, Path]]:
    out = []
    for pkg, root in PACKAGE_DIRS.items():
        for path in sorted(root.rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            rel = path.relative_to(root).with_suffix("").parts
            out.append((".".join([pkg, *(p for p in rel if p != "__init__")]), path))
    out.append(("lp_train.conf", ROOT / "conf" / "__init__.py"))
    return out


MODULES = _modules()


def _imports(tree: ast.AST) -> list[tuple[ast.stmt, str, list[str]]]:
    """(node, imported module, imported names) of every absolute import of a project module."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            if node.module.split(".")[0] in PROJECT:
                names = [a.name for a in node.names]
                found.append((node, node.module, names))
                # `from lp_train import runinfo` imports the module lp_train.runinfo
                for n in names:
                    if not n.startswith("_") and unit_of(f"{node.module}.{n}") != unit_of(node.module):
                        found.append((node, f"{node.module}.{n}", []))
        elif isinstance(node, ast.Import):
            found += [(node, a.name, []) for a in node.names if a.name.split(".")[0] in PROJECT]
    return found


def _inner_imports(tree: ast.AST) -> set[int]:
    inner = set()
    for fn in ast.walk(tree):
        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef):
            inner |= {id(n) for n in ast.walk(fn) if isinstance(n, ast.Import | ast.ImportFrom)}
    return inner


def test_every_module_is_in_a_known_unit():
    assert {unit_of(m) for m, _ in MODULES} <= set(ALLOWED), "add the new package to ALLOWED and CONTRIBUTING.md"


def test_import_direction_between_packages():
    bad = []
    for module, path in MODULES:
        src = unit_of(module)
        for node, target, _ in _imports(ast.parse(path.read_text())):
            dst = unit_of(target)
            if dst != src and dst not in ALLOWED[src]:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: {src} imports {target} ({dst})")
    assert bad == [], "imports against the architecture map (CONTRIBUTING.md):\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    bad = []
    for module, path in MODULES:
        tree = ast.parse(path.read_text())
        aliases = set()
        for node, target, names in _imports(tree):
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if any(p.startswith("_") and not p.startswith("__") for p in target.split(".")):
                bad.append(f"{where}: private module {target}")
            if target != module:
                bad += [f"{where}: private name {target}.{n}" for n in names if n.startswith("_")]
            if isinstance(node, ast.Import):
                aliases |= {a.asname or a.name.split(".")[0] for a in node.names}
            else:
                aliases |= {a.asname or a.name for a in node.names}
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in aliases
                and node.attr.startswith("_")
                and not node.attr.startswith("__")
            ):
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: private attribute {node.value.id}.{node.attr}")
    assert bad == [], "\n".join(bad)


def test_project_imports_inside_functions_say_why():
    bad = []
    for _, path in MODULES:
        text = path.read_text()
        lines = text.splitlines()
        tree = ast.parse(text)
        inner = _inner_imports(tree)
        for node, target, _ in _imports(tree):
            if id(node) in inner and "deferred:" not in lines[node.lineno - 1]:
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno}: import of {target} inside a function")
    assert bad == [], "move these imports to the top of the module, or comment `# deferred: <reason>`:\n" + "\n".join(
        bad
    )


# -- CONTRIBUTING.md agrees with the code --------------------------------------------------------------------------
def _contributing_map() -> dict[str, set[str]]:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text.split("## Architecture map", 1)[1].split("\n## ", 1)[0]
    table = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`"):
            name = cells[0].strip("`")
            table[name] = set(re.findall(r"`([^`]+)`", cells[2]))
    return table


def test_contributing_map_names_every_package_and_matches_the_rules():
    table = _contributing_map()
    packages = {unit_of(m) for m, _ in MODULES}
    # every sub-package by its own name (lp_train's own modules are the two rows for core and entry modules)
    packages |= {m for m, p in MODULES if p.name == "__init__.py" and m != "lp_train"}
    assert packages - set(table) == set(), "packages missing from CONTRIBUTING.md's architecture map"
    assert {k: table[k] for k in ALLOWED} == ALLOWED


@pytest.mark.parametrize("module", ["lp_train.face", "lp_train.teachers", "lp_train.models"])
def test_library_packages_do_not_import_training_frameworks(module):
    bad = re.compile(r"^\s*(import|from)\s+(lightning|pytorch_lightning|hydra|omegaconf)\b", re.M)
    folder = PACKAGE_DIRS["lp_train"] / module.split(".")[1]
    assert [p.name for p in folder.glob("*.py") if bad.search(p.read_text())] == []
