"""DDP reduction for real (issue 5: "DDP-reducible", "results gathered on rank 0"): two gloo processes on CPU each
score half of the frames; the synced metric equals the single-process value (FID's sum states reduce the same way:
tested in-process with ``merge_state`` in test_metrics_fid.py), and the per-video rows of both ranks end up in
rank 0's ``per_video.csv``."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pairs() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 24, 24, generator=g), torch.rand(6, 3, 24, 24, generator=g)


def _worker(rank: int, world: int, port: int, folder: str, queue) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        from lp_eval.store import ResultStore

        from lp_train.metrics.ssim import SSIM

        a, b = _pairs()
        ssim = SSIM()
        ssim.update(a[rank::world], b[rank::world])
        store = ResultStore(folder)
        row = {"key": f"video{rank}", "source": "s", "driving": "d", "frames": 3, "seconds": 0.1, "ssim": 0.5 + rank}
        store.add({**row, "ssim_n": 3})
        rows = store.gather()
        queue.put((rank, ssim.compute().item(), [r["key"] for r in rows]))
    finally:
        dist.destroy_process_group()


def test_two_rank_gloo_reduction_and_gather(tmp_path):
    from lp_train.metrics.ssim import SSIM

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = _free_port()
    procs = [ctx.Process(target=_worker, args=(r, 2, port, str(tmp_path), queue)) for r in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    results = sorted(queue.get(timeout=5) for _ in procs)
    single = SSIM()
    single.update(*_pairs())
    for _, ssim_v, keys in results:
        assert ssim_v == pytest.approx(single.compute().item(), abs=1e-12)  # torchmetrics synced the sum states
        assert keys == ["video0", "video1"]
    assert (tmp_path / "per_video.csv").read_text().count("video") == 2
    assert not list(tmp_path.glob("per_video.rank*.csv"))
