"""`smolforge worker --pool cpu|gpu`: a Prefect process worker for one of the project's pools.

A GPU worker takes at most as many flow runs at once as its machine has GPUs (the worker's own run
limit); the global `gpu` concurrency limit caps the team's GPU runs across machines on top of that.
"""

from __future__ import annotations

import os

from prefect.client.orchestration import get_client

from smolforge.deployments.apply import ServerError, server_url
from smolforge.deployments.catalog import GPU_POOL
from smolforge.device import cuda_device_count
from smolforge.processes import console_script


def default_limit(pool: str) -> int | None:
    """One run per GPU on the GPU pool (one on a machine without any, so the pool still drains);
    no limit on the CPU pool, whose runs mostly wait on the GPU pool's."""
    return max(1, cuda_device_count()) if pool == GPU_POOL else None


def check_pool(pool: str) -> None:
    """The pool must exist on the server the environment points at; name the ones that do."""
    url = server_url()
    with get_client(sync_client=True) as client:
        pools = sorted(p.name for p in client.read_work_pools())
    if pool not in pools:
        raise ServerError(
            f"no work pool {pool!r} on {url} (pools: {', '.join(pools) or 'none'}); `smolforge deploy` creates cpu and gpu"
        )


def exec_worker(pool: str, limit: int | None) -> None:
    """Replace this process with Prefect's worker for `pool` (so signals reach it directly)."""
    args = [console_script("prefect"), "worker", "start", "--pool", pool, "--name", f"{pool}-{os.uname().nodename}-{os.getpid()}"]
    if limit:
        args += ["--limit", str(limit)]
    os.execv(args[0], args)
