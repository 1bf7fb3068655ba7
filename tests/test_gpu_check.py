"""``bench/gpu_check.py`` (``make gpu-check``): its pieces (batch sweep stopping at an out-of-memory error, time
budget, host-sync recorder, loss comparison, report), the whole check as a CPU dry run (slow), and the real thing
on a CUDA device (gpu)."""

from __future__ import annotations

import json

import pytest
import torch

from bench import gpu_check as gc


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_sweep_stops_at_the_first_out_of_memory_batch_and_records_the_largest_that_fitted():
    ran = []

    def run_one(b: int) -> dict:
        ran.append(b)
        return {"status": "oom", "batch": b} if b >= 8 else {"status": "ok", "batch": b, "step_s": 0.1 * b}

    res = gc.sweep_batches([16, 1, 8, 4], run_one, gc.Budget(10), est_s=1.0)
    assert ran == [1, 4, 8]  # ascending; 16 is never tried after the OOM at 8
    assert res["max_batch"] == 4 and res["stopped"] == "out of memory at batch 8"
    assert [r["status"] for r in res["rows"]] == ["ok", "ok", "oom", "skipped"]
    assert res["rows"][-1] == {"status": "skipped", "reason": "out of memory at batch 8", "batch": 16}


def test_sweep_stops_when_the_budget_is_spent():
    clock = _Clock()
    budget = gc.Budget(1.0, clock=clock)  # 60 s

    def run_one(b: int) -> dict:
        clock.now += 25.0  # each cell takes 25 s
        return {"status": "ok", "batch": b}

    res = gc.sweep_batches([1, 2, 4, 8], run_one, budget, est_s=20.0)
    assert [r["status"] for r in res["rows"]] == ["ok", "ok", "skipped", "skipped"]  # 10 s left < 20 s after two
    assert res["max_batch"] == 2 and res["stopped"].startswith("time budget (10 s left)")
    assert budget.left() == pytest.approx(10.0) and not budget.allows(11) and budget.allows(10)


def test_is_oom_sees_wrapped_out_of_memory_errors():
    try:
        try:
            raise torch.OutOfMemoryError("CUDA out of memory")
        except torch.OutOfMemoryError as inner:
            raise RuntimeError("fit failed") from inner
    except RuntimeError as outer:
        assert gc.is_oom(outer)
    assert not gc.is_oom(RuntimeError("shape mismatch"))


def test_sync_recorder_finds_scalar_reads_but_not_optimizer_step_counters():
    x = torch.rand(4, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.1)
    with gc.SyncRecorder() as rec:
        if torch.isfinite(x).all():  # bool(): a host sync on a GPU
            pass
        _ = x.sum().item()
        x.sum().backward()
        opt.step()  # Adam reads its CPU step counter with .item(): not a device sync
    whats = sorted(k.split(" @ ")[0] for k in rec.sites)
    assert whats == ["__bool__", "item"], rec.sites
    assert all("test_gpu_check.py:test_sync_recorder" in k for k in rec.sites)


def test_sync_verdict_separates_the_known_guard_syncs():
    row = {"status": "ok", "syncs": {"__bool__ @ stage1.py:_finite:349 <- stage1.py:_generator_step:312": 2,
                                     "item @ losses.py:foo:10 <- stage1.py:_generator_losses:1": 1}}  # fmt: skip
    v = gc.sync_verdict(row)
    assert v["status"] == "fail" and v["per_step"] == 3
    assert list(v["unexpected"]) == ["item @ losses.py:foo:10 <- stage1.py:_generator_losses:1"]
    row["syncs"].popitem()
    assert gc.sync_verdict(row)["status"] == "ok"


def test_compare_losses_applies_the_tolerance_to_the_weighted_total():
    ref = {"status": "ok", "first_losses": {"train/g/total": 10.0, "train/g/gan_global": 0.001}}
    low = {"status": "ok", "first_losses": {"train/g/total": 10.3, "train/g/gan_global": 0.002}}
    res = gc.compare_losses(ref, low)
    assert res["status"] == "ok" and res["rel_diff"] == pytest.approx(0.03)
    assert res["terms"]["train/g/gan_global"]["rel"] == pytest.approx(1.0)  # reported, not judged
    low["first_losses"]["train/g/total"] = 11.0
    assert gc.compare_losses(ref, low)["status"] == "fail"
    assert gc.compare_losses(ref, {"status": "oom", "error": "x"})["status"] == "skipped"


def _record() -> dict:
    """A gpu_check record as ``run_check`` writes it (hand-made numbers)."""
    ok = {"status": "ok", "recompiles_after_warmup": 0, "peak_mem_gib": 10.0}
    sweeps = {
        "32-true": {"rows": [{**ok, "batch": 4, "step_s": 2.0, "pairs_per_s": 2.0}], "max_batch": 4},
        "bf16-mixed": {"rows": [{**ok, "batch": 4, "step_s": 1.0, "pairs_per_s": 4.0},
                                {"status": "oom", "batch": 8, "error": "OutOfMemoryError: injected out-of-memory"}],
                       "max_batch": 4},
    }  # fmt: skip
    cells = {"bf16 compiled W,G": {**ok, "batch": 4, "step_s": 0.8, "pairs_per_s": 5.0, "compiled": ["W", "G"]}}
    guard = "__bool__ @ stage1.py:_finite:349 <- stage1.py:_generator_step:312"
    frame = {"M": 1.0, "keypoints + S": 0.5, "W": 4.0, "G": 6.0, "frame": 12.0}
    return {
        "dry_run": False, "budget_min": 8.0, "seconds": 400.0, "plan": {"experiment": "stage1_paper", "size": 256},
        "env": {"device_name": "GPU", "torch": "2.x", "cuda": "13.0", "lightning": "2.6", "date": "today"},
        "train": {"sweeps": sweeps, "largest_batch": {"32-true": 4, "bf16-mixed": 4}},
        "train_variants": cells,
        "checks": {
            "bf16_vs_fp32": {"status": "ok", "rel_diff": 0.004, "tolerance": 0.05},
            "training_step_syncs": {"status": "ok", "per_step": 4, "sites": {guard: 4}, "unexpected": {}},
            "batch_finalisation_syncs": {"status": "ok", "sites": {}, "cuda_sync_debug": []},
        },
        "animate": {"model": "official", "rows": [{"status": "ok", "dtype": "fp16", "compiled": ["W", "G"], "ms": frame,
                                                   "w_plus_g_ms": 10.0, "fps": 83.33}],
                    "official": {"status": "skipped", "reason": "no --official-repo"}},
        "distributed": {"ddp": {"status": "ok", "backend": "nccl", "strategy": "DDPStrategy", "precision": "bf16-mixed",
                                "steps": 3, "step_s": [5.0, 1.0, 1.0], "command": "lp-train ..."},
                        "deepspeed": {"status": "skipped", "reason": "deepspeed is not installed"}},
        "learning": {"status": "ok", "steps": 900, "fit_budget_s": 120, "faces": "faces",
                     "groups": {"all": {"pairs": 10, "l1": 0.05, "l1_copy_source": 0.08, "ratio": 0.625}}},
    }  # fmt: skip


def test_markdown_report_has_every_table_and_the_paper_reference():
    md = gc.render_markdown(_record())
    assert "| eager bf16-mixed | 8 | OOM (injected) |" in md
    assert "Largest batch that fitted: 32-true 4, bf16-mixed 4" in md
    assert "- batch 4: eager bf16-mixed 2.00x vs fp32 eager" in md
    assert "W + G ms (paper 12.8)" in md and "| fp16 | W, G | 1 | 0.5 | 4 | 6 | 12 | 10 | 83.3 |" in md
    assert "host syncs in one bf16 training step: ok (4 reads, 0 unexpected site(s))" in md
    assert "(known: non-finite guard)" in md
    assert "- ddp: ok, backend nccl" in md and "- deepspeed: skipped: deepspeed is not installed" in md
    assert "| all | 10 | 0.05 | 0.08 | 0.625 |" in md
    broken = {**_record(), "animate": {"status": "error", "error": "RuntimeError: boom"}}
    broken.pop("learning")
    md = gc.render_markdown(broken)  # a failed or missing section does not stop the report
    assert "## Animation per frame (batch 1)\n\nerror: RuntimeError: boom" in md and "(not run)" in md


@pytest.mark.slow
def test_dry_run_runs_every_section_on_the_cpu(tmp_path, monkeypatch):
    """``python -m bench.gpu_check --dry-run``: every section ends in a result, the injected OOM stops the sweep, the
    compiled cells count no recompiles after warm-up, the learning check trains, both files are written."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    rec = gc.main(["--dry-run", "--budget-min", "60", "--out", str(tmp_path), "--work-dir", str(tmp_path / "w")])
    saved = json.loads((tmp_path / "gpu_check.json").read_text())
    sections = {"train", "checks", "distributed", "animate", "train_variants", "learning"}
    assert saved["dry_run"] is True and set(saved["section_s"]) == sections
    for precision, sweep in rec["train"]["sweeps"].items():  # batches 1, 2; OOM injected at 2
        assert [r["status"] for r in sweep["rows"]] == ["ok", "oom"], precision
        assert sweep["max_batch"] == 1 and sweep["rows"][0]["step_s"] > 0
    for name, cell in rec["train_variants"].items():
        assert cell["status"] == "ok", (name, cell)
        if cell["compiled"]:
            assert cell["recompiles_after_warmup"] == 0, cell["recompile_messages"]
    checks = rec["checks"]
    assert checks["bf16_vs_fp32"]["status"] == "ok", checks["bf16_vs_fp32"]
    assert checks["training_step_syncs"]["status"] == "ok", checks["training_step_syncs"]
    assert checks["training_step_syncs"]["per_step"] >= 2  # the non-finite guard's decisions
    assert checks["batch_finalisation_syncs"]["status"] == "ok", checks["batch_finalisation_syncs"]
    rows = rec["animate"]["rows"]
    assert [(r["dtype"], bool(r["compiled"])) for r in rows if r["status"] == "ok"] == [
        ("fp32", False),
        ("fp16", False),
        ("bf16", False),
        ("fp16", True),
        ("bf16", True),
    ]
    assert all(r["ms"]["frame"] > 0 and r["recompiles_after_warmup"] == 0 for r in rows)
    assert rec["animate"]["official"]["status"] == "skipped"
    ddp = rec["distributed"]["ddp"]
    assert ddp["status"] == "ok" and ddp["backend"] == "gloo" and ddp["steps"] == 2, ddp
    assert rec["distributed"]["deepspeed"]["status"] == "skipped"
    learning = rec["learning"]
    assert learning["status"] == "ok" and learning["steps"] == 3 and learning["groups"]["all"]["l1_copy_source"] > 0
    md = (tmp_path / "gpu_check.md").read_text()
    for heading in ("DRY RUN", "## Stage-1 training step", "## Checks", "## Animation per frame", "## Distributed",
                    "## Learning check"):  # fmt: skip
        assert heading in md


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_check_on_a_cuda_device(tmp_path):
    """A short real run: batch 1 and 2, two minutes of budget (sections that do not fit are recorded as skipped)."""
    rec = gc.main(["--budget-min", "3", "--batches", "1", "2", "--out", str(tmp_path)])
    sweep = rec["train"]["sweeps"]["bf16-mixed"]
    assert sweep["rows"][0]["status"] == "ok" and sweep["rows"][0]["peak_mem_gib"] > 0
    assert rec["checks"]["bf16_vs_fp32"]["status"] in ("ok", "skipped")
    assert (tmp_path / "gpu_check.md").is_file()
