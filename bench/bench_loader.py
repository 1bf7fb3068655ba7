"""Training-loader throughput: WebDataset pair pipeline vs a FOMM-style PNG-folder loader on the same frames, and the
pairs/s one training step of the full model consumes.

Data: crops of ``../shared/data/faces`` (every clip, every portrait; 512², mediapipe landmarks) written once as shards
(``lp_train.data.sample_shards``) and once as PNG folders ``root/{video}/{frame:04d}.png`` (FOMM / the peer
codebases' layout); synthetic faces when the folder is absent. Both loaders produce a 256² input and 512² target
pair with a random horizontal flip and colour jitter. Ours also decodes landmarks and computes boxes, masks, eye/lip
ratios and pose, warps image pairs, and mixes image/video pairs; the baseline does what FOMM's ``FramesDataset`` +
``AllAugmentationTransform`` do (list the folder, pick two frames, ``skimage.io.imread`` both, flip, jitter).
"Per worker" = one process with one torch thread (what a DataLoader worker gets). The model step is one full-size
F+M+W+G forward + backward at batch 1, measured on this CPU; the GPU figure is an estimate from the paper's
inference speed (W+G 12.8 ms/frame fp16 on an RTX 4090) times 3 for forward + backward, plus F and M.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from lp_train.data import LoaderConfig, build_train_pipeline
from lp_train.data.augment import AugmentConfig, color_jitter, jitter_params
from lp_train.data.sample_shards import face_folder_samples, synthetic_samples, write_shards

FACES = Path(__file__).resolve().parents[1] / "../shared/data/faces"
SIZE = 256


class PngFolderPairs(Dataset):
    """FOMM-style ``FramesDataset`` (is_train): a random video folder, two random frames read as PNG, augmented."""

    def __init__(self, root: Path, size: int = SIZE, seed: int = 0) -> None:
        self.root, self.size = root, size
        self.videos = sorted(os.listdir(root))
        self.rng, self.cfg = np.random.default_rng(seed), AugmentConfig()

    def __len__(self) -> int:
        return 10**9

    def __getitem__(self, idx: int) -> dict:
        from skimage import img_as_float32, io

        path = self.root / self.videos[idx % len(self.videos)]
        frames = sorted(os.listdir(path))
        pick = np.sort(self.rng.choice(len(frames), replace=True, size=2))
        video = [img_as_float32(io.imread(path / frames[i])) for i in pick]
        out = [torch.from_numpy(np.ascontiguousarray(f.transpose(2, 0, 1))) for f in video]
        if self.rng.random() < 0.5:
            out = [f.flip(-1) for f in out]
        params = jitter_params(self.rng, self.cfg)
        out = [color_jitter(f, params) for f in out]
        small = [F.interpolate(f[None], size=(self.size,) * 2, mode="bilinear", antialias=True)[0] for f in out]
        return {"source": small[0], "driving": small[1], "source_hr": out[0], "driving_hr": out[1]}


def _write_data(tmp: Path, frames_per_clip: int) -> tuple[list[Path], Path, int]:
    from PIL import Image

    samples = (
        list(face_folder_samples(FACES, size=512, frames_per_clip=frames_per_clip, stride=2))
        if (FACES / "videos").is_dir()
        else list(synthetic_samples(frames_per_clip=frames_per_clip, size=512))
    )
    shards = write_shards(samples, tmp / "shards", per_shard=4)
    for meta, frames, _ in samples:
        folder = tmp / "png" / meta.key
        folder.mkdir(parents=True)
        for i, frame in enumerate(frames):
            Image.fromarray(frame).save(folder / f"{i:04d}.png")
    return shards, tmp / "png", sum(len(f) for _, f, _ in samples)


def _rate(batches, n: int, warmup: int = 2) -> float:
    """Pairs/s over ``n`` batches after ``warmup`` batches."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    t0, pairs = time.perf_counter(), 0
    for _ in range(n):
        batch = next(it)
        pairs += len(batch["source_hr"] if "source_hr" in batch else batch["source_u8"])
    return pairs / (time.perf_counter() - t0)


def _model_step_seconds() -> float:
    """One full-size F+M+W+G forward + backward at batch 1 on this CPU (random weights)."""
    from lp_train.models.appearance_encoder import AppearanceFeatureExtractor
    from lp_train.models.liveportrait import LivePortrait
    from lp_train.models.motion_extractor import MotionExtractor
    from lp_train.models.spade_generator import SPADEDecoder
    from lp_train.models.warping import WarpingNetwork

    model = LivePortrait(AppearanceFeatureExtractor(), MotionExtractor(), WarpingNetwork(), SPADEDecoder())
    src, drv = torch.rand(1, 3, SIZE, SIZE), torch.rand(1, 3, SIZE, SIZE)
    t0 = time.perf_counter()
    out = model(src, drv)
    out["image"].mean().backward()
    return time.perf_counter() - t0


def run(quick: bool = False) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a loader worker's setting
    n = 6 if quick else 25
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        shards, png_root, n_frames = _write_data(Path(tmp), 8 if quick else 24)
        cfg = LoaderConfig(
            [str(s) for s in shards],
            size=SIZE,
            batch_size=4,
            epoch_batches=10**6,
            pairs_per_sample=4,
            shuffle_buffer=64,
            shuffle_initial=16,
            p_image=0.2,
            max_gap=0,
            cross_identity_prob=0.0,
            pool_size=16,
            seed=0,
        )
        ours = _rate(build_train_pipeline(cfg), n)
        base_ds = PngFolderPairs(png_root)
        base = _rate(DataLoader(base_ds, batch_size=4, num_workers=0), n)
        torch.set_num_threads(threads)
        ours2 = _rate(DataLoader(build_train_pipeline(cfg), batch_size=None, num_workers=2), 2 * n, warmup=4)
        base2 = _rate(DataLoader(PngFolderPairs(png_root), batch_size=4, num_workers=2), 2 * n, warmup=4)
    step_s = float("nan") if quick else _model_step_seconds()  # a full-size CPU step takes minutes on 2 cores
    gpu_ms = 3 * (12.8 + 2.0)  # paper W+G fp16 on RTX 4090, + ~2 ms for F and M; x3 for forward + backward
    data = f"{n_frames} frames of ../shared/data/faces at 512²" if (FACES / "videos").is_dir() else "synthetic 512²"
    common = {"data": data, "input/target": f"{SIZE}/{2 * SIZE}"}
    return [
        {"metric": "ours: pairs/s per loader worker", "value": ours, "unit": "pairs/s", **common},
        {"metric": "FOMM-style PNG folders: pairs/s per worker", "value": base, "unit": "pairs/s", **common},
        {"metric": "speed-up ours / PNG folders (target >= 5)", "value": ours / base, "unit": "x", **common},
        {"metric": "ours: pairs/s, DataLoader 2 workers (2 cores)", "value": ours2, "unit": "pairs/s", **common},
        {"metric": "PNG folders: pairs/s, DataLoader 2 workers", "value": base2, "unit": "pairs/s", **common},
        {
            "metric": "model step consumes (CPU, F+M+W+G fwd+bwd, batch 1)",
            "value": 1.0 / step_s,
            "unit": "pairs/s",
            "data": "skipped with --quick" if quick else f"{step_s:.1f} s per step",
            "input/target": f"{SIZE}/{2 * SIZE}",
        },
        {
            "metric": "model step consumes (GPU estimate from the paper's speed)",
            "value": 1000.0 / gpu_ms,
            "unit": "pairs/s",
            "data": f"~{gpu_ms:.0f} ms/pair fwd+bwd (RTX 4090-class, fp16)",
            "input/target": f"{SIZE}/{2 * SIZE}",
        },
        {
            "metric": "loader workers per GPU for that estimate",
            "value": (1000.0 / gpu_ms) / ours,
            "unit": "workers",
            **common,
        },
    ]
