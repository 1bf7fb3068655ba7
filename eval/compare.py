"""``lp-eval compare``: one benchmark table across evaluation runs (rows = runs, columns = metrics, paper layout).

Reads each run's ``summary.json`` (written by ``lp-eval``) and renders, per protocol, the headline table of the
metrics calibrated in every run plus an "uncalibrated" table for the rest (``lp_eval.report.markdown_tables``), with
the best value of each headline column in bold.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from lp_eval.report import LABELS, markdown_tables

from lp_train.metrics import METRICS


def load_summary(path: str | os.PathLike) -> dict:
    """``summary.json`` of an eval run folder (or the file itself)."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path}: no summary.json (is it an lp-eval output folder?)")
    return json.loads(file.read_text())


def _bold_best(table: str, runs: dict[str, dict]) -> str:
    """Bold the best value per column of the headline table (the first table of a protocol section)."""
    lines = table.splitlines()
    head = next((i for i, ln in enumerate(lines) if ln.startswith("| Method")), None)
    if head is None or len(runs) < 2:
        return table
    by_label = {v: k for k, v in LABELS.items()}
    names = [by_label.get(c.strip().rstrip("↑↓ ").strip()) for c in lines[head].strip("|").split("|")[1:]]
    body = list(range(head + 2, head + 2 + len(runs)))
    cells = [lines[i].strip("|").split("|") for i in body]
    for col, n in enumerate(names, start=1):
        vals = [_num(c[col]) for c in cells]
        if n is None or all(math.isnan(v) for v in vals):
            continue
        best = (max if METRICS[n].higher_is_better else min)(v for v in vals if not math.isnan(v))
        for c, v in zip(cells, vals, strict=True):
            if v == best:
                c[col] = f" **{c[col].strip()}** "
    for i, c in zip(body, cells, strict=True):
        lines[i] = "|" + "|".join(c) + "|"
    return "\n".join(lines)


def _num(s: str) -> float:
    try:
        return float(s)
    except ValueError:
        return math.nan


def compare_runs(paths: list[str], names: list[str] | None = None) -> str:
    """Markdown comparing the eval runs at ``paths`` (row names: ``names`` or each run's ``run_name``)."""
    summaries = [load_summary(p) for p in paths]
    if names and len(names) != len(summaries):
        raise ValueError(f"--names has {len(names)} entries for {len(summaries)} runs")
    runs: dict[str, dict] = {}
    for i, s in enumerate(summaries):
        name = names[i] if names else s.get("run_name", Path(paths[i]).name)
        runs[name if name not in runs else f"{name} ({i})"] = s
    protocols = list(dict.fromkeys(p for s in summaries for p in s["protocols"]))
    out = ["# lp-train benchmark report\n", "| Run | checkpoint |", "|---|---|"]
    out += [f"| {n} | `{s['checkpoint']}` |" for n, s in runs.items()]
    out.append("")
    for p in protocols:
        out += [_bold_best(markdown_tables(runs, p), runs), ""]
    return "\n".join(out)
