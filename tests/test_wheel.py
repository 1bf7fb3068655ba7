"""The built wheel works without the checkout: configs ship inside it (``lp_train.conf``) and every command starts.

Builds the wheel from a copy of the tracked sources, installs it into a throwaway venv that sees the already
installed third-party packages (a ``.pth`` to their folders) but not this checkout or its editable install, and
runs ``lp-train --cfg job``, ``lp-eval --help``, ``lp-prep --help`` and ``lp-animate --help`` from another folder.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("pyproject.toml", "README.md", "src", "data_prep", "eval", "conf")


def _run(cmd: list[str], cwd: Path, env: dict) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out


def _dependency_dirs() -> list[str]:
    """Folders on this interpreter's path that hold installed packages (``site-packages``, also a ``.venv`` inside
    the checkout, as ``make setup`` makes it). The checkout's editable lp_train is not reachable through them: its
    path hook lives in a ``.pth`` file, and ``.pth`` files of folders listed in another ``.pth`` are not run."""
    dirs = [p for p in sys.path if p and Path(p).is_dir() and "site-packages" in p]
    assert any((Path(d) / "torch").is_dir() for d in dirs), dirs
    return dirs


@pytest.mark.slow
def test_wheel_installs_and_runs_without_the_checkout(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    tracked = subprocess.run(["git", "ls-files", *SOURCES], cwd=ROOT, capture_output=True, text=True, check=True)
    for rel in tracked.stdout.split():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, src / rel)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    wheels = tmp_path / "wheels"
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels),
          str(src)], tmp_path, env)  # fmt: skip
    wheel = next(wheels.glob("lp_train-*.whl"))

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    py = venv / "bin" / "python"
    purelib = Path(
        _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip()
    )
    (purelib / "_deps.pth").write_text("\n".join(_dependency_dirs()) + "\n")
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], tmp_path, env)
    shutil.rmtree(src)  # nothing of the sources is left to fall back on

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    probe = "import lp_train, lp_eval, data_prep; from lp_train.conf import CONF_DIR; "
    probe += "print(lp_train.__file__, lp_eval.__file__, data_prep.__file__, CONF_DIR)"
    where = _run([str(py), "-c", probe], elsewhere, env)
    paths = where.stdout.split()
    assert all(p.startswith(str(purelib)) for p in paths), paths
    assert (Path(paths[-1]) / "train.yaml").is_file() and (Path(paths[-1]) / "model" / "official.yaml").is_file()

    bin_dir = venv / "bin"
    job = _run([str(bin_dir / "lp-train"), "--cfg", "job"], elsewhere, env).stdout
    assert "_target_: lp_train.lit.stage1.Stage1Module" in job and "data:" in job
    for cmd, expect in (("lp-eval", "eval"), ("lp-prep", "data_prep"), ("lp-animate", "animate")):
        out = _run([str(bin_dir / cmd), "--help"], elsewhere, env).stdout
        assert "== Config ==" in out and expect in out, (cmd, out[-1000:])
