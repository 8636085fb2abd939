"""Three-stage pretraining (SmolLM3 style) on a curated corpus, registered in MLflow as a candidate.

Every stage is one cached task whose inputs are the previous stage's artifact, the corpus and its
own settings; the MLflow `pretrain` run holds one child run per stage and the logged model.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, stable_hash
from smolforge.config import ConfigError, PipelineConfig
from smolforge.environment import project_home
from smolforge.flows.curate import runtime_for


@task(name="register-model")
def register_model(
    final: ArtifactRef, corpus: ArtifactRef, name: str, config_key: str, experiment: str, parent_run_id: str | None
) -> dict[str, Any]:
    """Log the final model with MLflow's transformers flavor and register it with alias `candidate`.
    A version already registered from this very artifact is reused, so a cached re-run adds none."""
    import mlflow
    import tokenizers
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    from smolforge.tasks.curate.tokenizer import load_tokenizer

    client = mlflow.MlflowClient()
    existing = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("smolforge.artifact_key") == final.key]
    if existing:
        version = existing[0]
    else:
        model = AutoModelForCausalLM.from_pretrained(final.path / "model")
        tokenizer = load_tokenizer(str(final.path / "model"))
        with tracking.run("register", experiment, parent_run_id, tags={"smolforge.artifact_key": final.key}):
            info = mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                name="model",
                task="text-generation",
                # inferring requirements imports every optional extra (torchvision among them); name ours
                pip_requirements=[
                    f"torch=={torch.__version__.split('+')[0]}",
                    f"transformers=={transformers.__version__}",
                    f"tokenizers=={tokenizers.__version__}",
                ],
            )
        tags = {"smolforge.artifact_key": final.key, "smolforge.corpus_key": corpus.key, "smolforge.config_key": config_key}
        version = mlflow.register_model(info.model_uri, name, tags=tags)
    client.set_registered_model_alias(name, "candidate", version.version)
    return {"name": name, "version": str(version.version), "uri": f"models:/{name}@candidate"}


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
        registered = register_model(
            previous, corpus, cfg.register_as, stable_hash(cfg.model_dump(mode="json")), runtime.experiment, run.info.run_id
        )
    return {"model": previous.model_dump(), "stages": results, "registered": registered, "mlflow_run_id": run.info.run_id}
