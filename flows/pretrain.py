"""Three-stage pretraining (SmolLM3 style) on a curated corpus, registered in MLflow as a candidate.

Every stage is one cached task whose inputs are the previous stage's artifact, the corpus and its
own settings; the MLflow `pretrain` run holds one child run per stage, and the final stage's run
holds the logged model that the registry version points at.
"""

from __future__ import annotations

from prefect import flow

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, stable_hash
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.curate import corpus_of
from smolforge.flows.results import PipelineResult, PretrainInputs, PretrainResult, Registered
from smolforge.flows.routing import gpu_slot
from smolforge.tasks.registry.register import register_model
from smolforge.tasks.train.data import CorpusSources
from smolforge.tasks.train.prefect_tasks import PlannedStage, plan_pretraining, pretrain_stage


def pretrain_inputs(config: PipelineConfig, upstream: PipelineResult | None, parent_run_id: str | None) -> PretrainInputs:
    """What pretraining trains from: the pipeline's corpus, or the one this config curates."""
    return PretrainInputs(corpus=corpus_of(config, upstream, parent_run_id))


def planned_stages(config: PipelineConfig, corpus: ArtifactRef) -> list[PlannedStage]:
    """The stages planned against the corpus; impossible mixtures and budgets are refused here."""
    if config.pretrain is None:
        raise ConfigError("the pretrain flow needs a `pretrain` section in the config")
    try:
        return plan_pretraining(config.pretrain, CorpusSources.from_corpus_json(corpus.path / "corpus.json"))
    except ValueError as exc:
        raise ConfigError(f"pretrain: {exc}") from None


def trained_before(config: PipelineConfig, corpus: ArtifactRef, stages: list[PlannedStage]) -> list[ArtifactRef] | None:
    """Every stage's artifact, when all of them are already in the store (nothing would train)."""
    runtime, previous, found = config.runtime(), None, []
    for i, stage in enumerate(stages):
        previous = pretrain_stage.existing(corpus, previous, i, stage.config, stage.rates, stage.start, runtime)
        if previous is None:
            return None
        found.append(previous)
    return found


@flow(name="pretrain", log_prints=True)
def pretrain(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None) -> PretrainResult:
    """Stage after stage, then register. Mixtures and budgets are checked against the corpus first.
    When every stage is in the store already, no run is opened: the result points at the run that
    trained them."""
    inputs = pretrain_inputs(config, upstream, parent_run_id)
    cfg, corpus = config.pretrain, inputs.corpus
    stages = planned_stages(config, corpus)
    lineage = {"smolforge.corpus_key": corpus.key, "smolforge.config_key": stable_hash(cfg.model_dump(mode="json"))}
    done = trained_before(config, corpus, stages)
    if done is not None:
        results = [ref.manifest()["metrics"] for ref in done]
        registered = register_model(done[-1], cfg.register_as, lineage)
        earlier = tracking.parent_of(results[-1]["mlflow_run_id"])
        return PretrainResult(
            model=done[-1], inputs=inputs, stages=results, registered=Registered(**registered), mlflow_run_id=earlier,
            cached=True,
        )
    for s in stages:
        print(s.plan.describe())
    with tracking.run("pretrain", config.tracking.experiment, parent_run_id, tags={"smolforge.corpus_key": corpus.key}) as run:
        runtime = config.runtime(run.info.run_id)
        previous, results = None, []
        with gpu_slot():
            for i, stage in enumerate(stages):
                previous = pretrain_stage(corpus, previous, i, stage.config, stage.rates, stage.start, runtime)
                results.append(previous.manifest()["metrics"])
        registered = register_model(previous, cfg.register_as, lineage)
    return PretrainResult(
        model=previous, inputs=inputs, stages=results, registered=Registered(**registered), mlflow_run_id=run.info.run_id,
        seconds=round(sum(r.get("seconds", 0) for r in results), 1),
    )


def pretrained_model(config: PipelineConfig, upstream: PipelineResult | None, parent_run_id: str | None) -> ArtifactRef:
    """The model the pipeline pretrained, or (run alone) the one this config pretrains, from the
    cache when it was trained before: the default teacher and fine-tuning base."""
    if upstream is not None and upstream.pretrain is not None:
        return upstream.pretrain.model
    return pretrain(config, upstream, parent_run_id).model
