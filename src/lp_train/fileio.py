"""Small file helpers shared by training, evaluation and their reports.

Every file a long job writes goes through ``atomic_write``: a unique temporary file in the target folder, flushed and
fsynced, then ``os.replace``d onto the final name, so a reader or a kill mid-write never sees a half-written file.
The result gets the permissions of a plain ``open()`` (``0666`` minus the umask: ``0644`` under the usual ``022``),
not ``mkstemp``'s private ``0600``, so teammates on a shared cluster filesystem can read checkpoints and reports.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any


def file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file under the current umask."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], Any], fsync: bool = True) -> Path:
    """Call ``write(f)`` on a binary temporary file beside ``path`` and move it onto ``path`` atomically; creates
    missing parent folders. Returns ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically (``atomic_write``)."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")), fsync=False)


def atomic_torch_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save(obj)`` to ``path`` atomically (``atomic_write``): checkpoints, model files, exported weights."""
    import torch

    return atomic_write(path, lambda f: torch.save(obj, f))
