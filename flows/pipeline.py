"""The end-to-end pipeline flow: every stage of the composition (`flows.config.STAGES`) in order,
each when its section is set, each handed the results of the stages before it (training stages on
the GPU work pool when `execution.gpu_pool` is set: see `flows.routing`)."""

from __future__ import annotations

import time

from prefect import flow

from smolforge import tracking
from smolforge.environment import project_home
from smolforge.flows import replay
from smolforge.flows.config import STAGES, PipelineConfig
from smolforge.flows.results import PipelineResult
from smolforge.flows.routing import run_stage
from smolforge.flows.sweep_objectives import check_sweep


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig) -> PipelineResult:
    """One MLflow parent run (tagged with this flow run), a child run per stage."""
    if config.sweep is not None:  # a bad search space fails here, before any stage runs
        check_sweep(config)
    started = time.perf_counter()
    with tracking.run("pipeline", config.tracking.experiment, tags={"smolforge.preset": config.preset or ""}) as parent:
        tracking.log_params({"preset": config.preset, "execution": config.execution.model_dump()})
        result = PipelineResult(mlflow_run_id=parent.info.run_id)
        for stage in STAGES:
            if getattr(config, stage.name) is None:
                continue
            setattr(result, stage.name, run_stage(stage, config, result, parent.info.run_id))
        # stages that trained nothing made no run of their own: say which earlier runs hold them
        tracking.set_tags({
            f"smolforge.reused.{name}": r.mlflow_run_id for name, r in result.stages.items() if r.cached and r.mlflow_run_id
        })
        result.seconds = round(time.perf_counter() - started, 1)
    # keyed by the inputs as they stand now, when the sample corpus (if any) has been assembled
    replay.record(replay.fingerprint(config, project_home()), result, project_home())
    return result
