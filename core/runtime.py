"""How a run executes, shared by every layer: the execution and tracking settings, and the
`Runtime` a task gets (where artifacts live, how much CPU a step may use, which MLflow run its own
runs nest under). None of it is part of an artifact's key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from smolforge.artifacts import ArtifactStore, store_at
from smolforge.environment import artifacts_location
from smolforge.strict import Strict


class ExecutionConfig(Strict):
    runner: Literal["local", "dask"] = Field("local", description="Prefect task runner: threads here, or a Dask cluster.")
    workers: int = Field(0, ge=0, description="Worker processes for CPU-bound steps (count); 0 means one per core.")
    dask_address: str | None = Field(None, description="Scheduler address (tcp://host:8786); null starts a local Dask cluster.")
    gpu_pool: str | None = Field(
        None,
        description="Work pool whose workers have GPUs (`gpu` after `smolforge deploy`): the pipeline runs its training "
        "stages as flow runs of their deployments there. Null trains in the pipeline's own process.",
    )

    def cpu_workers(self) -> int:
        return self.workers or os.cpu_count() or 1


class TrackingConfig(Strict):
    experiment: str = Field("smolforge", min_length=1, description="MLflow experiment name.")


class Runtime(BaseModel):
    """Where a run keeps its artifacts and how much CPU a step may use; never part of a key."""

    root: str  # a folder, or the URL of a remote store (its local copies live in this machine's project folder)
    workers: int = 1
    experiment: str = "smolforge"
    parent_run_id: str | None = None  # MLflow run that stage runs nest under

    @property
    def store(self) -> ArtifactStore:
        return store_at(self.root)


def runtime_for(
    execution: ExecutionConfig, home: Path, tracking: TrackingConfig | None = None, parent_run_id: str | None = None
) -> Runtime:
    """The project's artifact store with the CPU budget `execution` allows, and the MLflow experiment
    and run that a stage's own runs become children of. A remote store that cannot be used (no
    credentials, no bucket) is refused here, before any work starts."""
    location = artifacts_location(home)
    store_at(location, home).check()
    # Under Dask each task already runs in its own worker process: no pool inside it.
    workers = 1 if execution.runner == "dask" else execution.cpu_workers()
    return Runtime(
        root=location, workers=workers, experiment=(tracking or TrackingConfig()).experiment,
        parent_run_id=parent_run_id,
    )
