"""Stage-1 training step on CPU: time per phase and peak memory, tiny and full (paper-size) configurations.

One step = generator forward (F, M, W, G + every stage-1 loss term, incl. the equivariance pass and the GAN terms),
generator backward, generator Adam step, discriminator forward (global, face, lip on real and detached fake),
backward and Adam step — the work of ``Stage1Module.training_step`` without Lightning's bookkeeping. Batches are
synthetic pairs of the real contract. Each configuration runs in its own subprocess so the peak RSS
(``ru_maxrss``) is that configuration's alone. Third-party networks use random weights (same cost as real ones).

    python -m bench.run --only train [--quick]
    python -m bench.bench_train --config full --batch 1 --reps 1      # one configuration, JSON on stdout
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {  # name -> (experiment, Hydra overrides)
    "tiny": ("stage1_tiny", []),
    "full": ("stage1_paper", ["data=synthetic", "data.size=256", "trainer=cpu"]),
}
PHASES = ("g_forward", "g_backward", "g_optimizer", "d_forward", "d_backward", "d_optimizer")
# g_forward = the networks F, M, W, G ("g_forward_networks", reported on its own) + every loss term


def _backward_step(loss, opt, t: list[float]) -> None:
    """Backward, then the optimiser step; appends the time after each to ``t``."""
    loss.backward()
    t.append(time.perf_counter())
    opt.step()
    opt.zero_grad(set_to_none=True)
    t.append(time.perf_counter())


def _measure(config: str, batch_size: int, reps: int, warmup: int) -> dict:
    import torch
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from lp_train.data.synthetic import SyntheticPairs
    from lp_train.losses import discriminator_loss

    experiment, overrides = CONFIGS[config]
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        extra = ["weights=random", "weights.pose_teacher=null", "paths.output_dir=/tmp/bench_train"]
        cfg = compose("train", overrides=[f"experiment={experiment}", *overrides, *extra])
    torch.manual_seed(0)
    module = instantiate(cfg.module, _convert_="all")
    size = cfg.data.size
    data = SyntheticPairs(batch_size, size=size, seed=0)
    batch = SyntheticPairs.collate([data[i] for i in range(batch_size)])
    opt_g = torch.optim.Adam(module.generator_parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(module.discriminators.parameters(), lr=2e-4, betas=(0.5, 0.999))
    times = {p: [] for p in PHASES}
    networks = []
    for i in range(warmup + reps):
        t = [time.perf_counter()]
        out = module.model(batch["source"], batch["driving"])
        t_networks = time.perf_counter() - t[0]
        terms = module.loss.generator_losses(module.model, batch, out, module.discriminators)
        total = module.loss.total(terms)
        t.append(time.perf_counter())
        _backward_step(total, opt_g, t)
        d_total = 0
        for name, disc in module.discriminators.items():
            fake, real = module.loss.gan_inputs(
                name, out["image"].detach(), batch["driving_hr"], batch["driving_boxes"]
            )
            d_total = d_total + discriminator_loss(disc(real), disc(fake))
        t.append(time.perf_counter())
        _backward_step(d_total, opt_d, t)
        if i >= warmup:
            for p, a, b in zip(PHASES, t[:-1], t[1:], strict=True):
                times[p].append(b - a)
            networks.append(t_networks)
    params = sum(p.numel() for p in module.generator_parameters())
    return {
        "config": config, "batch": batch_size, "input": size, "output": 2 * size, "threads": torch.get_num_threads(),
        "generator_params": params, "phases_s": {p: sum(v) / len(v) for p, v in times.items()},
        "g_forward_networks_s": sum(networks) / len(networks),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }  # fmt: skip


def _run_one(config: str, batch_size: int, reps: int, warmup: int) -> dict:
    cmd = [sys.executable, "-m", "bench.bench_train", "--config", config, "--batch", str(batch_size), "--reps",
           str(reps), "--warmup", str(warmup)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=3600, env=dict(os.environ))
    if proc.returncode != 0:
        raise RuntimeError(f"bench_train {config} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run(quick: bool = False) -> list[dict]:
    """Rows: per configuration, the time of each phase, the whole step, and the peak RSS."""
    plan = [("tiny", 2, 2 if quick else 5, 1)] + ([] if quick else [("full", 1, 2, 1)])
    rows = []
    for config, batch_size, reps, warmup in plan:
        res = _run_one(config, batch_size, reps, warmup)
        common = {"config": config, "batch": batch_size, "resolution": f"{res['input']}->{res['output']}",
                  "threads": res["threads"]}  # fmt: skip
        for phase, seconds in res["phases_s"].items():
            rows.append({"metric": f"{phase}_time", "value": seconds, "unit": "s", **common})
        rows.append({"metric": "g_forward_networks_time", "value": res["g_forward_networks_s"], "unit": "s",
                     "note": "part of g_forward", **common})  # fmt: skip
        step = sum(res["phases_s"].values())
        rows.append({"metric": "step_time", "value": step, "unit": "s", **common})
        rows.append({"metric": "pairs_per_s", "value": batch_size / step, "unit": "pairs/s", **common})
        rows.append({"metric": "peak_rss", "value": res["peak_rss_gib"], "unit": "GiB", **common})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", choices=sorted(CONFIGS), required=True)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args()
    import logging

    logging.disable(logging.WARNING)
    print(json.dumps(_measure(args.config, args.batch, args.reps, args.warmup)))


if __name__ == "__main__":
    main()
