"""Ordered parallel map for curation workers that survives a worker process dying (segfault, OOM kill).

Curation at LivePortrait scale (Guo et al. 2024, Sec. 4.1) runs native code (ffmpeg, mediapipe) on millions of
untrusted files; a worker can die on one of them. ``multiprocessing.Pool`` then hangs forever; here the pool is a
``ProcessPoolExecutor`` (spawn), results come back in input order with a bounded look-ahead, and when the pool
breaks, the inputs in flight are retried one by one in a fresh single-worker pool: the one that kills its worker
again gets ``on_crash(item)`` as its result, the others their normal result, and the run goes on.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing as mp
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

log = logging.getLogger(__name__)


def _init_worker(level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(processName)s %(name)s: %(message)s")
    import cv2

    cv2.setNumThreads(1)  # one worker per core: no OpenCV thread pool on top


def _executor(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(
        workers, mp_context=mp.get_context("spawn"), initializer=_init_worker, initargs=(logging.getLogger().level,)
    )


def _submit(ex: ProcessPoolExecutor, fn: Callable, item: Any) -> Future:
    """``ex.submit`` that never raises: a pool that broke since the last result yields a failed future, which the
    caller's ``BrokenProcessPool`` handler then retries like any other input in flight."""
    try:
        return ex.submit(fn, item)
    except BrokenProcessPool as e:
        fut: Future = Future()
        fut.set_exception(e)
        return fut


def _isolated(fn: Callable, item: Any, on_crash: Callable[[Any], Any]) -> Any:
    with _executor(1) as ex:
        try:
            return ex.submit(fn, item).result()
        except BrokenProcessPool:
            log.error("worker process died on %r (twice): recorded as crashed", item)
            return on_crash(item)


def ordered_map(
    fn: Callable, items: Iterable, workers: int, on_crash: Callable[[Any], Any], ahead: int = 2
) -> Iterator[Any]:
    """``map(fn, items)`` over ``workers`` processes, in order, at most ``ahead x workers`` items in flight.

    ``fn`` must be picklable (a module-level function or a ``functools.partial`` of one). With ``workers <= 1`` it
    runs in this process.
    """
    if workers <= 1:
        yield from map(fn, items)
        return
    it = iter(items)
    ex = _executor(workers)
    window: deque = deque((x, _submit(ex, fn, x)) for x in itertools.islice(it, ahead * workers))
    try:
        while window:
            item, fut = window.popleft()
            try:
                result = fut.result()
            except BrokenProcessPool:
                log.error("a worker process died; retrying the %d inputs in flight one by one", len(window) + 1)
                ex.shutdown(wait=True, cancel_futures=True)
                result = _isolated(fn, item, on_crash)
                pending = [x for x, _ in window]
                ex = _executor(workers)
                window = deque((x, _submit(ex, fn, x)) for x in pending)
            yield result
            nxt = next(it, _END)
            if nxt is not _END:
                window.append((nxt, _submit(ex, fn, nxt)))
    finally:
        ex.shutdown(wait=True, cancel_futures=True)


_END = object()
