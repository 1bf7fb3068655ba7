"""A picklable job for the worker-crash test of ``data_prep.pool`` (kept tiny: spawned workers import it)."""

import os


def job(x):
    if x == "boom":
        os._exit(3)  # the worker process dies, like a segfault or an OOM kill
    return x * 2
