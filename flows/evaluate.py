"""Evaluation of the pipeline's models (and any others) on held-out data, compared in one table.

Refused before any work (an unknown evaluation task already when the config loads): a task YAML that does not parse, a model
reference that names nothing, a chat evaluation with no fine-tuning records to read. Then the
held-out sets (one cached artifact per corpus, records and data settings), one cached evaluation
per model, and the comparison, whose key metrics become tags on each registered model version.
"""

from __future__ import annotations

import json

from prefect import flow

from smolforge.artifacts import file_hash
from smolforge.environment import project_home
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.curate import curate
from smolforge.flows.distill import distill
from smolforge.flows.finetune import data_files, finetune
from smolforge.flows.merge import merge
from smolforge.flows.pretrain import pretrain
from smolforge.flows.results import EvaluateInputs, EvaluateResult, PipelineResult, Registered
from smolforge.model_source import registry_version, resolve
from smolforge.tasks.evaluate.harness import check_task_yamls
from smolforge.tasks.evaluate.prefect_tasks import evaluate_model, evaluation_data, evaluation_report
from smolforge.tasks.evaluate.report import tag_model_versions

MODEL_FLOWS = {"pretrain": pretrain, "distill": distill, "finetune": finetune, "merge": merge}


def evaluate_inputs(config: PipelineConfig, upstream: PipelineResult | None, parent_run_id: str | None) -> EvaluateInputs:
    """The models to evaluate, by label: the pipeline's own (`evaluate.pipeline_models`, made here
    from the cache or trained when run alone), then `evaluate.models`; the corpus whose held-out
    split is read; fine-tuning's records and split for the chat evaluation."""
    cfg = config.evaluate
    if cfg is None:
        raise ConfigError("the evaluate flow needs an `evaluate` section in the config")
    if "lm_eval" in cfg.tasks:
        check_task_yamls(cfg.lm_eval.include_path)
    if "chat" in cfg.tasks and config.finetune is None:
        raise ConfigError("evaluate.tasks names chat, but there is no finetune section whose held-out records it reads")
    done = upstream.model_copy() if upstream is not None else PipelineResult()
    runtime = config.runtime(parent_run_id)
    models, registered = {}, {}
    for stage in cfg.pipeline_models:
        if getattr(config, stage) is None:
            continue
        result = getattr(done, stage) or MODEL_FLOWS[stage](config, done, parent_run_id)
        setattr(done, stage, result)
        models[stage], registered[stage] = result.model, result.registered
    for i, spec in enumerate(cfg.models):
        models[spec] = resolve(spec, None, runtime, f"evaluate.models.{i}")
        if (version := registry_version(spec)) is not None:
            registered[spec] = Registered(name=version.name, version=str(version.version), uri=spec)
    if not models:
        raise ConfigError("evaluate: no model to evaluate (no configured stage in evaluate.pipeline_models, no evaluate.models)")
    if done.curate is not None:
        corpus = done.curate.corpus
    elif done.pretrain is not None:
        corpus = done.pretrain.inputs.corpus
    else:
        corpus = curate(config, done, parent_run_id).corpus
    chat_files, chat_split = {}, None
    if "chat" in cfg.tasks:
        ft = config.finetune
        chat_files = done.finetune.inputs.data if done.finetune is not None else {
            str(f): file_hash(f) for f in data_files(config, project_home())
        }
        chat_split = ft.split_settings()
    print(f"evaluate: {len(models)} models ({', '.join(models)}) on tasks {', '.join(cfg.tasks)}")
    return EvaluateInputs(corpus=corpus, models=models, registered=registered, chat_files=chat_files, chat_split=chat_split)


@flow(name="evaluate", log_prints=True)
def evaluate(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None) -> EvaluateResult:
    """Evaluate every model on the same held-out data, compare them, tag their registry versions."""
    inputs = evaluate_inputs(config, upstream, parent_run_id)
    cfg = config.evaluate
    runtime = config.runtime(parent_run_id)
    settings = cfg.data_settings()
    was_cached = [evaluation_data.existing(inputs.corpus, inputs.chat_files, inputs.chat_split, settings, runtime) is not None]
    data = evaluation_data(inputs.corpus, inputs.chat_files, inputs.chat_split, settings, runtime)
    evaluations = {}
    for label, model in inputs.models.items():
        was_cached.append(evaluate_model.existing(model, data, cfg, runtime) is not None)
        evaluations[label] = evaluate_model(model, data, cfg, runtime)
    was_cached.append(evaluation_report.existing(evaluations, runtime) is not None)
    report = evaluation_report(evaluations, runtime)
    comparison = json.loads((report.path / "comparison.json").read_text(encoding="utf-8"))
    run_id = report.manifest()["metrics"]["mlflow_run_id"]
    metrics = {label: json.loads((ref.path / "metrics.json").read_text(encoding="utf-8")) for label, ref in evaluations.items()}
    tag_model_versions(
        [(r.name, r.version, metrics[label], evaluations[label].manifest()["metrics"]["mlflow_run_id"])
         for label, r in inputs.registered.items()],
        cfg.tag_metrics, run_id, data.key,
    )
    seconds = sum(ref.manifest()["metrics"].get("seconds", 0.0) for ref in evaluations.values())
    return EvaluateResult(
        data=data, evaluations=evaluations, report=report, rows=comparison["rows"], note=comparison["note"],
        inputs=inputs, mlflow_run_id=run_id, cached=all(was_cached), seconds=round(seconds, 1),
    )
