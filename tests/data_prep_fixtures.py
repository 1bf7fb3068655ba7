"""Helpers for the data_prep tests: compose the curation config, synthesise face clips from a real photo
(``skimage.data.astronaut``), read shards back. Imported by ``tests/test_data_prep*.py``."""

from __future__ import annotations

import hashlib
import io
import tarfile
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf

from data_prep.cli import CONF_DIR
from data_prep.demo_data import write_mp4

FACES = Path(__file__).resolve().parents[1] / "../shared/data/faces"
ASTRONAUT_FACE = (226.0, 120.0, 105.0)  # face centre x, y and size in skimage.data.astronaut() (measured)


def make_cfg(out: Path, *overrides: str, paths: list | None = None, manifest: Path | None = None) -> DictConfig:
    """``conf/data_prep.yaml`` composed with overrides; paths set after composing (spaces/unicode need no quoting)."""
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("data_prep", overrides=list(overrides))
    OmegaConf.update(cfg, "output.dir", str(out))
    OmegaConf.update(cfg, "inputs.paths", [str(p) for p in paths or []])
    OmegaConf.update(cfg, "inputs.manifest", str(manifest) if manifest else None)
    OmegaConf.update(cfg, "log_every_s", 0.0)
    return cfg


def face_frames(n: int, size: int = 256, face_px: float = 100.0, seed: int = 0) -> list[np.ndarray]:
    """``n`` frames of the astronaut's face (``face_px`` wide) moving smoothly in a ``size``² frame."""
    rgb = skimage.data.astronaut()
    cx, cy, f = ASTRONAUT_FACE
    rng = np.random.default_rng(seed)
    phase = rng.uniform(0, 2 * np.pi, 3)
    frames = []
    for t in range(n):
        s = face_px / f * (1 + 0.03 * np.sin(0.3 * t + phase[0]))
        m = cv2.getRotationMatrix2D((cx, cy), 3 * np.sin(0.2 * t + phase[1]), s)
        m[:, 2] += np.array([size / 2 - cx, size * 0.45 - cy]) + 4 * np.sin(0.25 * t + phase[2])
        frames.append(cv2.warpAffine(rgb, m, (size, size), borderMode=cv2.BORDER_REFLECT))
    return frames


def write_face_clip(path: Path, n: int = 12, fps: int = 10, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_mp4(face_frames(n, **kw), path, fps)
    return path


def read_shard(path: Path) -> dict[str, dict[str, bytes]]:
    """key -> {extension: bytes} with plain ``tarfile``."""
    out: dict[str, dict[str, bytes]] = {}
    with tarfile.open(path) as tar:
        for m in tar:
            key, ext = m.name.split(".", 1)
            out.setdefault(key, {})[ext] = tar.extractfile(m).read()
    return out


def shard_digests(shard_dir: Path) -> dict[str, str]:
    """shard file name -> sha256 of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(shard_dir.glob("*.tar"))}


def decode_jpeg(data: bytes) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
