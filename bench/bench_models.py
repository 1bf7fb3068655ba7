"""Per-network CPU forward latency at batch 1, 256² input (the paper's speed table: F, M, W, G, S+R).

Median of repeated runs in eval mode under ``torch.inference_mode``, fp32, official sizes, random weights.
The paper reports 12.8 ms/frame in fp16 on an RTX 4090 (W 5.21 ms + G 7.59 ms); these are CPU numbers of this
machine, given for relative cost and regression tracking.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from lp_train.models.appearance_encoder import AppearanceFeatureExtractor
from lp_train.models.motion_extractor import MotionExtractor
from lp_train.models.spade_generator import SPADEDecoder
from lp_train.models.stitching import StitchingRetargeting
from lp_train.models.warping import WarpingNetwork

PAPER_MS = {"W": 5.21, "G": 7.59}  # RTX 4090, fp16 (paper's inference-speed table)


def _median_ms(fn: Callable[[], object], reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def run(quick: bool = False) -> list[dict]:
    torch.manual_seed(0)
    reps = 2 if quick else 5
    f, m, w, g = AppearanceFeatureExtractor(), MotionExtractor(), WarpingNetwork(), SPADEDecoder()
    heads = StitchingRetargeting(zero_init=False)
    for net in (f, m, w, g, heads):
        net.eval()
    x = torch.rand(1, 3, 256, 256)
    kp_s, kp_d = torch.rand(1, 21, 3) * 2 - 1, torch.rand(1, 21, 3) * 2 - 1
    with torch.inference_mode():
        f_s = f(x)
        feat = w(f_s, kp_source=kp_s, kp_driving=kp_d)["out"]
        cases = {
            "F appearance_feature_extractor": lambda: f(x),
            "M motion_extractor": lambda: m(x),
            "W warping_module": lambda: w(f_s, kp_source=kp_s, kp_driving=kp_d),
            "G spade_generator": lambda: g(feat),
            "S+R stitching+eye+lip": lambda: (
                heads.stitching(torch.zeros(1, 126)),
                heads.eye(torch.zeros(1, 66)),
                heads.lip(torch.zeros(1, 65)),
            ),
        }
        rows = []
        for name, fn in cases.items():
            key = name.split()[0]
            rows.append(
                {
                    "metric": f"forward latency {name}",
                    "value": _median_ms(fn, reps),
                    "unit": "ms",
                    "device": "cpu fp32",
                    "threads": torch.get_num_threads(),
                    "paper_rtx4090_fp16_ms": PAPER_MS.get(key, ""),
                }
            )
    per_frame = sum(r["value"] for r in rows if r["metric"].split()[2] in ("M", "W", "G", "S+R"))
    rows.append(
        {
            "metric": "per driving frame (M + W + G + S+R)",
            "value": per_frame,
            "unit": "ms",
            "device": "cpu fp32",
            "threads": torch.get_num_threads(),
            "paper_rtx4090_fp16_ms": 12.8,
        }
    )
    rows.append(_tiny_chain(reps))
    return rows


def _tiny_chain(reps: int) -> dict:
    """conf/model/tiny.yaml: forward + backward of the whole F, M, W, G chain at batch 1 (the test-suite model)."""
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate
    from lp_train.conf import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR + "/model", version_base="1.3"):
        net = instantiate(compose(config_name="tiny")).train()
    s, d = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)

    def step() -> None:
        net.zero_grad()
        net(s, d)["image"].mean().backward()

    return {
        "metric": "tiny model F+M+W+G forward+backward (64² in, 128² out), batch 1",
        "value": _median_ms(step, reps),
        "unit": "ms",
        "device": "cpu fp32",
        "threads": torch.get_num_threads(),
        "paper_rtx4090_fp16_ms": "",
    }
