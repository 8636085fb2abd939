"""Promotion: the champion/challenger gate on each registered model the pipeline produced.

In the pipeline, the challengers are the versions the evaluate stage just scored; run alone
(`smolforge run promote`), every gated model's `candidate`. A champion scored on other data than
its challenger is evaluated again on the challenger's held-out set with the evaluate stage's own
step (`reevaluator`) before the gate decides: never compared across data.
"""

from __future__ import annotations

import json
import time

from prefect import flow

from smolforge import tracking
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.results import PipelineResult, PromoteResult
from smolforge.model_source import resolve
from smolforge.tasks.evaluate.config import PIPELINE_MODELS
from smolforge.tasks.evaluate.prefect_tasks import evaluate_model
from smolforge.tasks.evaluate.report import tag_model_versions
from smolforge.tasks.promote.config import PromoteConfig
from smolforge.tasks.promote.decisions import decide
from smolforge.tasks.promote.gate import PromotionError
from smolforge.tasks.promote.promotion import Reevaluate
from smolforge.tasks.promote.registry import CANDIDATE, Evaluation, aliases, require_evaluation


def section(config: PipelineConfig) -> PromoteConfig:
    if config.promote is None:
        raise ConfigError("promotion needs a `promote` section in the config (--set promote={} for the default gates)")
    return config.promote


def reevaluator(config: PipelineConfig) -> Reevaluate:
    """Evaluate a registry version on the held-out set with data key `data_key` (the evaluate
    stage's `evaluate_model` step, cached by model, settings and data) and tag the version with it.
    Its `evaluate-model` run nests under the `promote` run that asked for it."""

    def on(name: str, version: str, data_key: str) -> Evaluation:
        runtime = config.runtime(tracking.active_run_id())
        settings = config.evaluate
        if settings is None:
            raise PromotionError(f"{name} version {version} was evaluated on other data and must be evaluated again, but evaluate is null")
        data = runtime.store.get("eval-data", data_key)
        if data is None:
            raise PromotionError(
                f"{name} version {version} must be evaluated again on the held-out data {data_key}, which is not in "
                f"this project's artifact store ({runtime.store.location}): run the evaluate stage here first"
            )
        model = resolve(f"models:/{name}/{version}", None, runtime, "promote")
        print(f"promote: evaluating {name} version {version} again, on the challenger's held-out data {data_key[:12]}")
        ref = evaluate_model.fn(model, data, settings, runtime)
        metrics = json.loads((ref.path / "metrics.json").read_text(encoding="utf-8"))
        tag_model_versions([(name, version, metrics, ref.manifest()["metrics"]["mlflow_run_id"])], settings.tag_metrics, None, data.key)
        return require_evaluation(name, version)

    return on


def challengers(config: PipelineConfig, upstream: PipelineResult | None) -> list[tuple[str, str]]:
    """The pipeline's evaluated registry versions that have a gate; run alone, each gated model's
    `candidate`."""
    gates = section(config).gates
    if upstream is not None and upstream.evaluate is not None:
        registered = upstream.evaluate.inputs.registered
        return [(r.name, r.version) for label, r in registered.items() if label in PIPELINE_MODELS and r.name in gates]
    targets = []
    for name in gates:
        try:
            version = aliases(name).get(CANDIDATE)
        except PromotionError:
            continue  # not registered (yet): nothing to promote
        if version is not None:
            targets.append((name, version))
    return targets


@flow(name="promote", log_prints=True)
def promote_stage(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None) -> PromoteResult:
    """Each challenger through its gate: `champion` moves only on a pass, every decision recorded."""
    started = time.perf_counter()
    targets = challengers(config, upstream)
    if not targets:
        raise PromotionError(f"promote: no gated model has a candidate to promote (gates: {', '.join(sorted(section(config).gates))})")
    outcomes, run_id = decide(
        section(config), config.tracking.experiment, targets, reevaluate=reevaluator(config),
        note="pipeline", parent_run_id=parent_run_id,
    )
    for o in outcomes:
        print(f"promote: {o.name} version {o.version}: {o.decision} ({o.reason})")
    return PromoteResult.of(outcomes, run_id, time.perf_counter() - started)
