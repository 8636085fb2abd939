"""An Optuna sweep over one stage's settings, as a Prefect flow.

The flow checks the space against the config, opens (or resumes) the study, then keeps up to
`parallel` trial tasks running until the study holds `trials` finished trials, counting the ones
other sweep runs on the same study finish or still run. At the end it keeps the best models and
logs the study on its MLflow run (a child of the pipeline's run when the pipeline calls it).

Run alone (`smolforge run sweep`), it produces the swept stage's upstream artifacts first; they
come from the cache when the pipeline already made them.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState
from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import wait

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, stable_hash
from smolforge.environment import project_home
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.results import PipelineResult, SweepResult
from smolforge.flows.routing import gpu_slot
from smolforge.flows.sweep_objectives import OBJECTIVES, TrialWork, check_sweep, study_name, timed, trial_config
from smolforge.runtime import Runtime
from smolforge.tasks.sweep.report import close_abandoned_runs, keep_best, log_report
from smolforge.tasks.sweep.study import (
    KIND,
    TrialFailed,
    counts_as_finished,
    default_storage,
    new_worker_id,
    open_study,
    public_url,
    suggest,
    task_seed,
)


class _TrialRun:
    """The trial's MLflow child run; ends FINISHED, KILLED (pruned) or FAILED."""

    def __init__(self, name: str, experiment: str, parent_run_id: str | None, tags: dict[str, str]):
        import mlflow

        self.mlflow = mlflow
        self.run = tracking.start(name, experiment, parent_run_id, {"smolforge.stage": "sweep-trial", **tags})

    def end(self, state: TrialState) -> None:
        self.mlflow.set_tag("optuna.state", state.name)
        status = {TrialState.COMPLETE: "FINISHED", TrialState.PRUNED: "KILLED"}.get(state, "FAILED")
        self.mlflow.end_run(status=status)


def _objective(
    config: PipelineConfig, upstream: dict[str, ArtifactRef], runtime: Runtime, study: str, worker: str, record: dict
):
    """The function Optuna calls for the trial: settings, training, a model artifact, MLflow."""
    cfg = config.sweep
    objective = OBJECTIVES[cfg.stage]
    store = runtime.store

    def run(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", worker)
        values = suggest(trial, cfg.space)
        record.update(number=trial.number, params=values)
        tags = {"optuna.study": study, "optuna.trial": str(trial.number)}
        mlrun = _TrialRun(f"trial-{trial.number}", runtime.experiment, runtime.parent_run_id, tags)
        trial.set_user_attr("mlflow_run_id", mlrun.run.info.run_id)
        tracking.log_params(values)

        def on_eval(step: int, val_loss: float) -> None:
            mlrun.mlflow.log_metric("val_loss", val_loss, step=step)
            trial.report(val_loss, step)
            if trial.should_prune():
                raise optuna.TrialPruned(f"val_loss {val_loss:.4f} at step {step} is worse than the pruner allows")

        key = stable_hash({"study": study, "trial": trial.number, "params": values})
        try:
            try:
                trial_cfg = trial_config(config, values)
            except ConfigError as exc:  # values each valid, together not (e.g. heads that do not divide the width)
                raise TrialFailed(str(exc)) from None
            scratch = Path(tempfile.mkdtemp(prefix=f"trial-{trial.number}-", dir=_scratch_root(runtime)))
            try:
                with store.write(KIND, key, step="sweep_trial", inputs=list(upstream.values()), config={
                    "study": study, "trial": trial.number, "params": values,
                }) as (out, metrics):
                    result = timed(objective.train, TrialWork(trial_cfg, upstream, out, scratch, on_eval))
                    metrics.update(result)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
        except optuna.TrialPruned:
            mlrun.end(TrialState.PRUNED)
            record.update(state="PRUNED")
            raise
        except TrialFailed as exc:
            trial.set_user_attr("failure", str(exc))
            mlrun.mlflow.set_tag("optuna.failure", str(exc)[:5000])
            mlrun.end(TrialState.FAIL)
            record.update(state="FAIL")
            raise
        except BaseException:
            mlrun.end(TrialState.FAIL)
            record.update(state="FAIL")
            raise
        trial.set_user_attr("artifact_key", key)
        trial.set_user_attr("train_seconds", result["train_seconds"])
        mlrun.mlflow.log_metrics({"value": result["value"], "train_seconds": result["train_seconds"]})
        mlrun.end(TrialState.COMPLETE)
        record.update(state="COMPLETE", value=result["value"], train_seconds=result["train_seconds"], artifact=key)
        return float(result["value"])

    return run


def _scratch_root(runtime: Runtime) -> Path:
    root = Path(runtime.root) / ".work" / "sweep"
    root.mkdir(parents=True, exist_ok=True)
    return root


@task(name="sweep-trial", cache_policy=NO_CACHE, tags=["gpu"])
def sweep_trial(
    config: PipelineConfig,
    upstream: dict[str, ArtifactRef],
    storage_url: str,
    study: str,
    runtime: Runtime,
    worker: str,
    ordinal: int,
) -> dict[str, Any]:
    """Run one trial of the study to its end (complete, pruned or failed) and describe it. Its wall
    time, against the training time measured inside, is the sweep's overhead per trial."""
    started = time.perf_counter()
    record: dict[str, Any] = {"state": "NONE"}
    loaded = open_study(config.sweep, storage_url, study, seed=task_seed(config.sweep, worker, ordinal))
    loaded.optimize(
        _objective(config, upstream, runtime, study, worker, record), n_trials=1, catch=(TrialFailed,),
        gc_after_trial=True,
    )
    record["wall_seconds"] = time.perf_counter() - started
    return record


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


@flow(name="sweep", log_prints=True)
def sweep(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None) -> SweepResult:
    """Optimise `config.sweep.stage`'s validation loss over `config.sweep.space`, on the artifacts
    the swept stage trained from in the pipeline (`upstream`), or, run alone, on the ones its flow
    would train from (produced, or taken from the cache)."""
    check_sweep(config)
    cfg = config.sweep
    objective = OBJECTIVES[cfg.stage]
    swept = getattr(upstream, cfg.stage) if upstream is not None else None
    inputs = swept.inputs if swept is not None else objective.upstream(config, upstream, parent_run_id)
    refs = inputs.refs()
    missing = [role for role in objective.needs if role not in refs]
    if missing:
        raise ConfigError(f"a {cfg.stage} sweep needs the upstream artifacts {missing}; got {sorted(refs)}")
    try:
        objective.check(trial_config(config, {}), refs)
    except ValueError as exc:
        raise ConfigError(f"{cfg.stage}: {exc}") from None
    home = project_home()
    url = cfg.storage or default_storage(home)
    name = study_name(config, refs)
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
                "upstream": {role: ref.key for role, ref in refs.items()},
            }
        )
        runtime = config.runtime(run.info.run_id)
        started = time.perf_counter()
        with gpu_slot():
            records = _run_trials(config, refs, url, name, study, runtime)
        trials_done = time.perf_counter()
        close_abandoned_runs(study)
        kept = keep_best(study, cfg.keep, runtime.store)
        summary = log_report(study, kept)
    return SweepResult(
        **summary,
        study=name,
        storage=public_url(url),
        stage=cfg.stage,
        this_run=records,
        seconds=round(time.perf_counter() - started, 1),
        timings={"trials": trials_done - started, "report": time.perf_counter() - trials_done},
        mlflow_run_id=run.info.run_id,
    )
