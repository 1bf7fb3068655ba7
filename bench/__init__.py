"""Benchmarks (``make bench``): each ``bench/bench_*.py`` exposes ``run(quick: bool) -> list[dict]``."""
