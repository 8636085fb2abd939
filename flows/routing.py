"""Where a stage's flow runs: in the pipeline's own process, or as a flow run of its deployment on
the GPU work pool.

Work pools route flow runs, not tasks, so a training stage that should run on a GPU machine runs
as a flow run of its own: with `execution.gpu_pool` set, the pipeline creates a run of the stage's
deployment (made by `smolforge deploy`), waits for it and reads its result. Each run of a GPU
stage's deployment also holds a slot of the global concurrency limit `gpu` while it runs, so the
team's GPU runs are capped wherever they were started from (the pipeline, the UI, a schedule).
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from typing import Any

from smolforge.errors import ConfigError
from smolforge.flows.config import Stage
from smolforge.runners import task_runner_for
from smolforge.runtime import ExecutionConfig

DEPLOYMENT = "smolforge"  # every flow's deployment has this name: `pipeline/smolforge`, `pretrain/smolforge`
GPU = "gpu"  # the GPU stages' deployment tag and the global concurrency limit their runs hold


def deployment_name(flow: str) -> str:
    return f"{flow}/{DEPLOYMENT}"


def as_parameter(config: Any) -> dict[str, Any]:
    """A config as a flow run's JSON parameter, with fields under the names its schema uses
    (`lambda`, not the attribute `lambda_`): the server checks parameters against that schema."""
    return config.model_dump(mode="json", by_alias=True)


def stage_flow(stage: Stage, execution: ExecutionConfig):
    """The flow a stage names in the composition, on the configured task runner if it fans out."""
    run = stage.load()
    return run.with_options(task_runner=task_runner_for(execution)) if stage.fans_out else run


def run_stage(stage: Stage, config: Any, upstream: Any, parent_run_id: str | None) -> Any:
    """Run one stage with the results of the stages before it: in this process, or, for a GPU stage
    when `execution.gpu_pool` is set, as a flow run of its deployment on that pool."""
    pool = config.execution.gpu_pool
    if not (stage.gpu and pool):
        return stage_flow(stage, config.execution)(config, upstream, parent_run_id)
    from prefect.deployments import run_deployment

    name = deployment_name(stage.name)
    _check_pool(name, pool)
    flow_run = run_deployment(
        name,
        parameters={
            "config": as_parameter(config),
            "upstream": as_parameter(upstream),
            "parent_run_id": parent_run_id,
        },
        timeout=None,  # wait as long as the training takes (and for a free GPU slot)
    )
    if not flow_run.state.is_completed():
        raise RuntimeError(
            f"the {stage.name} stage's flow run {flow_run.name} ({flow_run.id}) on pool {pool!r} ended "
            f"{flow_run.state.type.value}: {flow_run.state.message or 'see its logs in the Prefect UI'}"
        )
    return flow_run.state.result()


def _check_pool(name: str, pool: str) -> None:
    """Refuse to wait on a deployment that is missing or serves another pool than the config names."""
    from prefect import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            deployment = client.read_deployment_by_name(name)
        except ObjectNotFound:
            raise ConfigError(
                f"execution.gpu_pool is {pool!r} but the server has no deployment {name}: run `smolforge deploy`"
            ) from None
    if deployment.work_pool_name != pool:
        raise ConfigError(
            f"execution.gpu_pool is {pool!r} but deployment {name} runs on pool {deployment.work_pool_name!r}: "
            f"set execution.gpu_pool={deployment.work_pool_name}, or run `smolforge deploy --gpu-pool {pool}`"
        )


_holding = contextvars.ContextVar("holding_gpu_slot", default=False)


@contextlib.contextmanager
def gpu_slot() -> Iterator[None]:
    """Hold a slot of the global concurrency limit `gpu` while a GPU stage's deployment run trains.
    A run started any other way (in the pipeline's process, `smolforge run`) takes none: the limit
    only exists on a server `smolforge deploy` set up. A stage that trains its own upstream first
    (fine-tuning run alone pretrains) holds one slot, not two: a second would wait on the first."""
    from prefect.runtime import flow_run

    if _holding.get() or GPU not in (flow_run.tags or []):
        yield
        return
    from prefect.concurrency.sync import concurrency

    with concurrency(GPU, occupy=1, timeout_seconds=None, strict=True):
        token = _holding.set(True)
        try:
            yield
        finally:
            _holding.reset(token)
