"""The Prefect task runner a config asks for: threads on this machine, or a Dask cluster."""

from __future__ import annotations

from smolforge.runtime import ExecutionConfig


def task_runner_for(execution: ExecutionConfig):
    if execution.runner == "dask":
        from prefect_dask import DaskTaskRunner

        if execution.dask_address:
            return DaskTaskRunner(address=execution.dask_address)
        workers = execution.cpu_workers()
        return DaskTaskRunner(cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True})
    from prefect.task_runners import ThreadPoolTaskRunner

    # Threads only orchestrate; CPU work goes to the process pool (smolforge.parallel), so a few
    # more threads than cores keep that pool busy while other tasks read and write files.
    return ThreadPoolTaskRunner(max_workers=2 * execution.cpu_workers() + 2)
