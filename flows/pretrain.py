"""Three-stage pretraining (SmolLM3 style) on a curated corpus, registered in MLflow as a candidate.

Every stage is one cached task whose inputs are the previous stage's artifact, the corpus and its
own settings; the MLflow `pretrain` run holds one child run per stage and the logged model.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, stable_hash
from smolforge.config import ConfigError, PipelineConfig
from smolforge.environment import project_home
from smolforge.flows.curate import runtime_for
from smolforge.registry import register_model


@flow(name="pretrain", log_prints=True)
def pretrain(config: PipelineConfig, corpus: ArtifactRef, parent_run_id: str | None = None) -> dict[str, Any]:
    """Stage after stage, then register. Mixtures and budgets are checked against the corpus first."""
    from smolforge.tasks.train.data import CorpusSources
    from smolforge.tasks.train.prefect_tasks import pretrain_stage, stage_inputs

    cfg = config.pretrain
    if cfg is None:
        raise ConfigError("the pretrain flow needs a `pretrain` section in the config")
    runtime = runtime_for(config.execution, project_home())
    try:
        stages = stage_inputs(cfg, CorpusSources.from_corpus_json(corpus.path / "corpus.json"))
    except ValueError as exc:
        raise ConfigError(f"pretrain: {exc}") from None
    for s in stages:
        print(s["plan"].describe())
    with tracking.run("pretrain", config.tracking.experiment, parent_run_id, tags={"smolforge.corpus_key": corpus.key}) as run:
        runtime = runtime.model_copy(update={"experiment": config.tracking.experiment, "parent_run_id": run.info.run_id})
        previous, results = None, []
        for i, stage in enumerate(stages):
            previous = pretrain_stage(corpus, previous, i, stage["config"], stage["rates"], stage["start"], runtime)
            results.append(previous.manifest()["metrics"])
        lineage = {"smolforge.corpus_key": corpus.key, "smolforge.config_key": stable_hash(cfg.model_dump(mode="json"))}
        registered = register_model(previous, cfg.register_as, lineage, runtime.experiment, run.info.run_id)
    return {"model": previous.model_dump(), "stages": results, "registered": registered, "mlflow_run_id": run.info.run_id}
