"""Animate latency per frame by stage (lp-animate, batch 1, full-size LivePortrait with random weights, CPU).

Stages per driving frame, timed on lp-animate's own code path (``lp_train.inference.Driver`` and helpers):
detect (mediapipe face mesh on the 1280x720 driving frame), crop (curation crop params + affine warp to 256²),
M on the driving crop, keypoints (relative motion + stitching MLP), W (warping module), G (SPADE generator,
-> 512²), paste-back (inverse affine warp of the crop and the feathered mask into the 1280x720 source frame),
with 1 torch thread and with the default count (quick: the default only; detection is mediapipe's own threads).
The paper's column is its RTX 4090 fp16 measurement (12.8 ms/frame = W 5.21 ms + G 7.59 ms, the
rest excluded); ours is fp32 on this machine's CPU, so only the split between stages is comparable.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from lp_train.animate import crop_tensor, to_uint8
from lp_train.face.crop import crop_affine, crop_params_from_landmarks, warp_crop
from lp_train.face.detect import FaceDetector
from lp_train.face.track import feather_mask, paste_back
from lp_train.inference import Driver

CONF = Path(__file__).resolve().parents[1] / "conf"
PAPER_MS = {"W": 5.21, "G": 7.59, "total (W + G)": 12.8}


def _frame() -> np.ndarray:
    """A 1280x720 frame with a real face (scikit-image's bundled astronaut portrait, no download)."""
    from skimage import data

    frame = np.full((720, 1280, 3), 90, np.uint8)
    face = data.astronaut()  # 512², uint8 RGB
    frame[104:616, 384:896] = face
    return frame


def _time(fn: Callable[[], object], reps: int) -> tuple[float, object]:
    out = fn()  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), out


def _stages(model: torch.nn.Module, frame: np.ndarray, lmk: np.ndarray, reps: int) -> list[tuple[str, float]]:
    """Median ms of each per-frame stage after the detector (the source is prepared once, as in lp-animate)."""
    driver = Driver(model, stitching=True, relative=True)
    size, out_size = model.input_size, 2 * model.input_size
    ms_crop, crop = _time(lambda: warp_crop(frame, crop_affine(crop_params_from_landmarks(lmk), size), size), reps)
    src = driver.source(crop_tensor(crop, driver.device))
    ms_m, d_info = _time(lambda: driver.motion(crop_tensor(crop, driver.device)), reps)
    ms_kp, x_d = _time(lambda: driver.keypoints(src, d_info, d_info), reps)
    ms_w, warped = _time(lambda: driver.warp(src, x_d), reps)
    ms_g, result = _time(lambda: to_uint8(driver.decode(warped)), reps)
    aff, mask = crop_affine(crop_params_from_landmarks(lmk), out_size), feather_mask(out_size, 0.1)
    ms_paste, _ = _time(lambda: paste_back(frame, result, aff, mask), reps)
    return [("crop", ms_crop), ("M (driving)", ms_m), ("keypoints + S", ms_kp), ("W", ms_w), ("G", ms_g),
            ("paste-back", ms_paste)]  # fmt: skip


def run(quick: bool = False) -> list[dict]:
    reps = 1 if quick else 3  # one frame of W + G takes seconds on a CPU
    torch.manual_seed(0)
    with initialize_config_dir(config_dir=str(CONF / "model"), version_base="1.3"):
        model = instantiate(compose(config_name="official")).eval()
    frame = _frame()
    with FaceDetector(video=False, max_faces=1) as det:
        ms_detect, faces = _time(lambda: det.detect(frame), reps)
    lmk = faces[0].landmarks
    default_threads, rows = torch.get_num_threads(), []
    for threads in [default_threads] if quick else sorted({1, default_threads}):
        torch.set_num_threads(threads)
        stages = [("detect", ms_detect), *_stages(model, frame, lmk, reps)]
        common = {"unit": "ms/frame", "threads": threads, "device": "cpu fp32", "batch": 1}
        for name, ms in stages:
            rows.append({"metric": name, "value": ms, **common, "paper_rtx4090_fp16_ms": PAPER_MS.get(name, "")})
        w_g = dict(stages)["W"] + dict(stages)["G"]
        rows.append({"metric": "total (W + G)", "value": w_g, **common, "paper_rtx4090_fp16_ms": 12.8})
        total = sum(ms for _, ms in stages)
        rows.append({"metric": "total (all stages)", "value": total, **common, "paper_rtx4090_fp16_ms": ""})
        rows.append({**common, "metric": "throughput (all stages)", "value": 1e3 / total, "unit": "frames/s"})
    torch.set_num_threads(default_threads)
    return rows


if __name__ == "__main__":
    for row in run(quick=True):
        print(row)
