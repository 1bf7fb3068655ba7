"""Shared pytest fixtures. Keep fixtures namespaced by area (``lp_data_*`` = the training-data loader) and add new
ones additively."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests never reach wandb's servers: `make test` exports this, and a bare `pytest` gets it here (without it, a wandb run
# started after another test's wandb state can fall back to online mode and ask for a login).
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")

FACES_DIR = Path(__file__).resolve().parents[1] / "../shared/data/faces"


# --- training data (lp_train.data) ------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def lp_data_faces_dir() -> Path:
    """``../shared/data/faces`` (8 clips, 19 portraits); tests that need it skip when it is absent."""
    if not (FACES_DIR / "videos").is_dir():
        pytest.skip(f"real test faces not found at {FACES_DIR.resolve()} (the shared data folder beside the repo)")
    return FACES_DIR


@pytest.fixture(scope="session")
def lp_data_face_shards(tmp_path_factory, lp_data_faces_dir) -> list[Path]:
    """Shards in the real format from the shared faces: 6 frames (every 3rd) of each clip + each portrait, cropped
    at 128² with mediapipe landmarks, 4 samples per shard (~3 s to build)."""
    from lp_train.data.sample_shards import face_folder_samples, write_shards

    out = tmp_path_factory.mktemp("lp_data_face_shards")
    return write_shards(face_folder_samples(lp_data_faces_dir, size=128, frames_per_clip=6), out, per_shard=4)


@pytest.fixture(scope="session")
def lp_data_synthetic_shards(tmp_path_factory) -> list[Path]:
    """Shards in the real format from synthetic faces (6 clips of 8 frames + 4 images, 128²), no files needed."""
    from lp_train.data.sample_shards import synthetic_samples, write_shards

    out = tmp_path_factory.mktemp("lp_data_synthetic_shards")
    return write_shards(synthetic_samples(size=128), out, per_shard=2)


@pytest.fixture
def lp_data_one_thread():
    """Run a test with one torch thread, as loader workers do (DataLoader sets 1 thread per worker); small ops
    with 2 threads on a busy 2-core machine cost 10-20x more."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
