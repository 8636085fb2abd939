"""One process pool per process, started on first use, for the CPU-bound part of a step.

Prefect's default runner uses threads, which is cheap for orchestration (a cached re-run never pays
for a pool) but bound by the GIL; the pure-Python work of a shard (extraction, language id,
filters, MinHash) is therefore sent to this pool. Under the Dask runner every task already runs in
a worker process, so the work runs inline there (`workers=1`).
"""

from __future__ import annotations

import atexit
import multiprocessing
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None
_pool_size = 0


def _get_pool(workers: int) -> ProcessPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != workers:
            if _pool is not None:
                _pool.shutdown(wait=True)
            # spawn, not fork: the parent runs Prefect's threads and an event loop, which a fork
            # would copy mid-flight.
            _pool = ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))
            _pool_size = workers
        return _pool


def shutdown() -> None:
    global _pool
    with _lock:
        if _pool is not None:
            _pool.shutdown(wait=True, cancel_futures=True)
            _pool = None


atexit.register(shutdown)


def run_cpu(workers: int, fn: Callable[..., T], *args: Any) -> T:
    """Run `fn(*args)` in the pool when more than one worker is allowed, else in this process.
    `fn` and its arguments must be picklable (module-level functions, plain values)."""
    if workers <= 1:
        return fn(*args)
    return _get_pool(workers).submit(fn, *args).result()
