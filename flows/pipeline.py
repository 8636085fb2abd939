"""The end-to-end pipeline flow: curate, then (each when configured) pretrain, distill, finetune, sweep."""

from __future__ import annotations

from typing import Any

from prefect import flow

from smolforge import tracking
from smolforge.artifacts import ArtifactRef
from smolforge.config import PipelineConfig
from smolforge.flows.curate import curate
from smolforge.flows.distill import distill
from smolforge.flows.finetune import finetune
from smolforge.flows.pretrain import pretrain
from smolforge.flows.sweep import pipeline_upstream, sweep
from smolforge.runners import task_runner_for
from smolforge.tasks.sweep.space import check_sweep


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig) -> dict[str, Any]:
    """One MLflow parent run (tagged with this flow run), a child run per stage."""
    if config.sweep is not None:  # a bad search space fails here, before any stage runs
        check_sweep(config)
    with tracking.run("pipeline", config.tracking.experiment, tags={"smolforge.preset": config.preset or ""}) as parent:
        tracking.log_params({"preset": config.preset, "execution": config.execution.model_dump()})
        curated = curate.with_options(task_runner=task_runner_for(config.execution))(config, parent.info.run_id)
        result = {"mlflow_run_id": parent.info.run_id, "curate": curated}
        if config.pretrain is not None:
            result["pretrain"] = pretrain(config, ArtifactRef(**curated["corpus"]), parent.info.run_id)
        if config.distill is not None:
            teacher = ArtifactRef(**result["pretrain"]["model"]) if "pretrain" in result else None
            result["distill"] = distill(config, ArtifactRef(**curated["corpus"]), teacher, parent.info.run_id)
        if config.finetune is not None:
            base = ArtifactRef(**result["pretrain"]["model"]) if "pretrain" in result else None
            result["finetune"] = finetune(config, base, parent.info.run_id)
        if config.sweep is not None:  # after the stage it sweeps, on the artifacts that stage trained from
            result["sweep"] = sweep(config, pipeline_upstream(config.sweep.stage, result), parent.info.run_id)
        return result
