"""An Optuna sweep over one stage's settings, as a Prefect flow.

The flow checks the space against the config, opens (or resumes) the study, then keeps up to
`parallel` trial tasks running until the study holds `trials` finished trials, counting the ones
other sweep runs on the same study finish or still run. At the end it keeps the best models and
logs the study on its MLflow run (a child of the pipeline's run when the pipeline calls it).

Run alone (`smolforge run sweep`), it produces the swept stage's upstream artifacts first; they
come from the cache when the pipeline already made them.
"""

from __future__ import annotations

import time
from typing import Any

import optuna
from optuna.trial import TrialState
from prefect import flow
from prefect.futures import wait

from smolforge import tracking
from smolforge.artifacts import ArtifactRef
from smolforge.config import ConfigError, PipelineConfig
from smolforge.environment import project_home
from smolforge.flows.curate import stage_runtime
from smolforge.steps import Runtime
from smolforge.tasks.sweep.objectives import OBJECTIVES
from smolforge.tasks.sweep.report import close_abandoned_runs, keep_best, log_report
from smolforge.tasks.sweep.space import check_sweep
from smolforge.tasks.sweep.study import (
    counts_as_finished,
    default_storage,
    new_worker_id,
    open_study,
    public_url,
    study_name,
    sweep_trial,
    trial_config,
)


def _run_trials(
    config: PipelineConfig, upstream: dict[str, ArtifactRef], url: str, name: str, study: optuna.Study, runtime: Runtime
) -> list[dict[str, Any]]:
    """Submit trial tasks while the study needs more and `parallel` allows; return what they report."""
    cfg = config.sweep
    worker = new_worker_id()
    in_flight, records, submitted = [], [], 0
    while True:
        optuna.storages.fail_stale_trials(study)  # dead processes' trials: failed, re-enqueued
        trials = study.get_trials(deepcopy=False)
        finished = sum(counts_as_finished(t) for t in trials)
        # RUNNING trials of other sweep runs (or of a process that died and has not gone stale yet)
        elsewhere = sum(t.state == TrialState.RUNNING and t.user_attrs.get("worker") != worker for t in trials)
        room = cfg.trials - finished - elsewhere - len(in_flight)
        while room > 0 and len(in_flight) < cfg.parallel:
            in_flight.append(sweep_trial.submit(config, upstream, url, name, runtime, worker, submitted))
            submitted, room = submitted + 1, room - 1
        if not in_flight:
            if finished >= cfg.trials:
                return records
            time.sleep(min(cfg.heartbeat_seconds, 5))  # others' trials are still running: wait for them
            continue
        done = wait(in_flight, timeout=1.0).done
        for future in done:
            in_flight.remove(future)
            records.append(future.result())  # a trial that broke (not diverged) fails the sweep here
            r = records[-1]
            print(f"trial {r.get('number')}: {r['state']} value={r.get('value')} in {r['wall_seconds']:.1f} s")


def pipeline_upstream(stage: str, result: dict[str, Any]) -> dict[str, ArtifactRef]:
    """The artifacts the pipeline's run of `stage` trained from, by the roles its objective names."""
    refs: dict[str, Any] = {}
    if stage in ("pretrain", "distill"):
        refs["corpus"] = result["curate"]["corpus"]
    if stage == "distill":
        refs["teacher"] = result["distill"]["teacher"]
        if result["distill"].get("topk"):
            refs["topk"] = result["distill"]["topk"]
    if stage == "finetune":
        refs["base"] = result["finetune"]["base"]
        if result["finetune"].get("quantized"):
            refs["quantized"] = result["finetune"]["quantized"]
    return {role: ArtifactRef(**ref) if isinstance(ref, dict) else ref for role, ref in refs.items()}


@flow(name="sweep", log_prints=True)
def sweep(
    config: PipelineConfig, upstream: dict[str, ArtifactRef] | None = None, parent_run_id: str | None = None
) -> dict[str, Any]:
    """Optimise `config.sweep.stage`'s validation loss over `config.sweep.space`; `upstream` holds
    the artifacts the stage trains from (the pipeline passes them; otherwise they are produced)."""
    check_sweep(config)
    cfg = config.sweep
    objective = OBJECTIVES[cfg.stage]
    if upstream is None:
        upstream = objective.upstream(config, parent_run_id)
    missing = [role for role in objective.needs if role not in upstream]
    if missing:
        raise ConfigError(f"a {cfg.stage} sweep needs the upstream artifacts {missing}; got {sorted(upstream)}")
    try:
        objective.check(trial_config(config, {}), upstream)
    except ValueError as exc:
        raise ConfigError(f"{cfg.stage}: {exc}") from None
    home = project_home()
    url = cfg.storage or default_storage(home)
    name = study_name(config, upstream)
    study = open_study(cfg, url, name)
    print(f"study {name!r} in {public_url(url)}: {objective.pretty_name}, minimising {objective.optimises}")
    tags = {"optuna.study": name, "smolforge.swept_stage": cfg.stage}
    with tracking.run("sweep", config.tracking.experiment, parent_run_id, tags=tags) as run:
        tracking.log_params(
            {
                **cfg.model_dump(exclude={"space", "storage", "fixed"}),
                "fixed": cfg.fixed,
                "storage": public_url(url),
                "study": name,
                "space": {path: p.describe() for path, p in cfg.space.items()},
                "upstream": {role: ref.key for role, ref in upstream.items()},
            }
        )
        runtime = stage_runtime(config, run.info.run_id)
        started = time.perf_counter()
        records = _run_trials(config, upstream, url, name, study, runtime)
        trials_done = time.perf_counter()
        close_abandoned_runs(study)
        kept = keep_best(study, cfg.keep, runtime.store)
        summary = log_report(study, kept)
    return {
        **summary,
        "study": name,
        "storage": public_url(url),
        "stage": cfg.stage,
        "this_run": records,
        "seconds": round(time.perf_counter() - started, 1),
        "timings": {"trials": trials_done - started, "report": time.perf_counter() - trials_done},
        "mlflow_run_id": run.info.run_id,
    }
