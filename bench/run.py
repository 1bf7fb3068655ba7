"""Run every ``bench/bench_*.py`` and write ``bench/results/<name>.json`` plus one Markdown table per benchmark
into ``bench/results/README.md``.

Each module's ``run(quick)`` returns rows: dicts with at least ``metric``, ``value`` and ``unit``; any other keys
become columns. ``python -m bench.run [--only NAME ...] [--quick]``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import platform
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def _table(rows: list[dict]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.4g}" if isinstance(v, float) else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _section(name: str, record: dict) -> str:
    env = record.get("env", {})
    return (
        f"## {name}\n\n{record.get('title', '')}\n\n{_table(record['rows'])}\n\n"
        f"({record.get('seconds', '?')} s; torch {env.get('torch')}, {env.get('threads')} threads, {env.get('date')})\n"
    )


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--only", nargs="*", help="benchmark names (bench_<name>.py) to run")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (smoke run)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    names = sorted(p.stem.removeprefix("bench_") for p in Path(__file__).parent.glob("bench_*.py"))
    if args.only:
        unknown = set(args.only) - set(names)
        if unknown:
            raise SystemExit(f"unknown benchmarks {sorted(unknown)}; available: {names}")
        names = [n for n in names if n in args.only]
    RESULTS.mkdir(parents=True, exist_ok=True)
    env = {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    for name in names:
        mod = importlib.import_module(f"bench.bench_{name}")
        t0 = time.perf_counter()
        rows = mod.run(quick=args.quick)
        title = (mod.__doc__ or "").strip().splitlines()[0] if mod.__doc__ else ""
        record = {"env": env, "title": title, "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
        (RESULTS / f"{name}.json").write_text(json.dumps(record, indent=1))
        print(_section(name, record), flush=True)
    # the README covers every benchmark that has results, so `--only` refreshes its sections and keeps the others
    records = {p.stem: json.loads(p.read_text()) for p in sorted(RESULTS.glob("*.json"))}
    body = "\n".join(_section(n, r) for n, r in records.items())
    (RESULTS / "README.md").write_text(f"# lp-train benchmarks\n\n{body}")
    print(f"wrote {RESULTS}/README.md")


if __name__ == "__main__":
    main()
