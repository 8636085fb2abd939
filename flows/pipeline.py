"""The end-to-end pipeline flow: curate, then (when configured) pretrain. It grows stage by stage."""

from __future__ import annotations

from typing import Any

from prefect import flow

from smolforge import tracking
from smolforge.artifacts import ArtifactRef
from smolforge.config import PipelineConfig
from smolforge.flows.curate import curate
from smolforge.flows.pretrain import pretrain
from smolforge.runners import task_runner_for


@flow(name="pipeline", log_prints=True)
def pipeline(config: PipelineConfig) -> dict[str, Any]:
    """One MLflow parent run (tagged with this flow run), a child run per stage."""
    with tracking.run("pipeline", config.tracking.experiment, tags={"smolforge.preset": config.preset or ""}) as parent:
        tracking.log_params({"preset": config.preset, "execution": config.execution.model_dump()})
        curated = curate.with_options(task_runner=task_runner_for(config.execution))(config, parent.info.run_id)
        result = {"mlflow_run_id": parent.info.run_id, "curate": curated}
        if config.pretrain is not None:
            result["pretrain"] = pretrain(config, ArtifactRef(**curated["corpus"]), parent.info.run_id)
        return result
