"""The Optuna study behind a sweep, and one trial as a Prefect task.

The study lives in a database (a SQLite file in the project folder, or any URL), so several sweep
flow runs share it and a crashed one resumes: every running trial records a heartbeat, a trial
whose process died goes silent, is failed by the next sweep that looks (`fail_stale_trials`) and
re-enqueued with the same settings (`RetryHeartbeatStaleTrialCallback`). A trial task runs
`study.optimize(n_trials=1)`, which is what records those heartbeats and files pruned and failed
trials in the right state.

Each trial is an MLflow child run of the sweep run: its settings as params, the validation loss at
every evaluation, the final value, and its state (a pruned trial ends KILLED and is tagged PRUNED).
A complete trial's model becomes a `sweep-trial` artifact; the flow later keeps only the best ones.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from smolforge.artifacts import stable_hash
from smolforge.environment import OPTUNA_STORAGE_VAR
from smolforge.tasks.sweep.config import SweepConfig
from smolforge.tasks.sweep.space import Choice, FloatRange, IntRange

KIND = "sweep-trial"


class TrialFailed(RuntimeError):
    """The trial's settings made training fail in an expected way (it diverged, or its values do
    not go together): the trial is recorded as failed and counts as finished, the sweep goes on."""

# the heartbeat API is marked experimental in Optuna; the sweep relies on it on purpose
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def default_storage(home: Path) -> str:
    """The team stack's Optuna database while one runs (see `smolforge up`), else a SQLite file."""
    return os.environ.get(OPTUNA_STORAGE_VAR) or f"sqlite:///{home / 'optuna.db'}"


def storage_for(cfg: SweepConfig, url: str) -> optuna.storages.RDBStorage:
    # SQLite serialises writers: wait for the lock rather than fail when trials report at once
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    storage = optuna.storages.RDBStorage(
        url,
        engine_kwargs=engine,
        heartbeat_interval=cfg.heartbeat_seconds,
        grace_period=cfg.grace,
        heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retries),
    )
    if url.startswith("sqlite"):
        _lock_on_begin(storage.engine)
    return storage


def _lock_on_begin(engine: Any) -> None:
    """Make every SQLite transaction take the write lock when it starts (`BEGIN IMMEDIATE`).

    Optuna claims an enqueued trial by reading it as WAITING and then writing RUNNING. Its
    `SELECT ... FOR UPDATE` is a no-op on SQLite, and the driver only opens the transaction at the
    write, so two trial tasks can both read WAITING and both run the same trial; the second to
    finish then fails with "Cannot tell a PRUNED trial". Taking the lock at BEGIN makes the read and
    the write one step, across threads and processes alike. Transactions here are milliseconds
    long, so serialising readers costs nothing a sweep notices."""
    from sqlalchemy import event

    @event.listens_for(engine, "connect")
    def _driver_leaves_transactions_to_us(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    engine.dispose()  # connections opened while optuna set the schema up predate the hooks


def public_url(url: str) -> str:
    """The storage URL without its password, for logs and MLflow."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def sampler_for(cfg: SweepConfig, seed: int) -> optuna.samplers.BaseSampler:
    """Each trial task builds its own sampler: seeding them all alike would make tasks that start
    together draw the same settings, hence one seed per task (see `task_seed`). QMC is the
    exception: its Sobol sequence is seeded by the study and indexed by the trial number."""
    if cfg.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if cfg.sampler == "qmc":
        return optuna.samplers.QMCSampler(seed=cfg.seed, independent_sampler=optuna.samplers.RandomSampler(seed=seed))
    return optuna.samplers.TPESampler(seed=seed)


def task_seed(cfg: SweepConfig, worker: str, ordinal: int) -> int:
    """Distinct for every trial task of every sweep run on the study, derived from `cfg.seed`."""
    return int(stable_hash([cfg.seed, worker, ordinal])[:8], 16)


def pruner_for(cfg: SweepConfig) -> optuna.pruners.BasePruner:
    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=cfg.prune_after_trials, n_warmup_steps=cfg.prune_after_steps)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(1, cfg.prune_after_steps))
    return optuna.pruners.NopPruner()


def open_study(cfg: SweepConfig, url: str, name: str, seed: int | None = None) -> optuna.Study:
    return optuna.create_study(
        storage=storage_for(cfg, url), study_name=name, sampler=sampler_for(cfg, cfg.seed if seed is None else seed),
        pruner=pruner_for(cfg),
        direction="minimize", load_if_exists=True,
    )


def counts_as_finished(trial: optuna.trial.FrozenTrial) -> bool:
    """Complete, pruned, or failed by its own settings (diverged). A trial failed because its process
    died or the code broke does not count: its budget is spent again (a died one is retried)."""
    if trial.state in (TrialState.COMPLETE, TrialState.PRUNED):
        return True
    return trial.state == TrialState.FAIL and "failure" in trial.user_attrs


def suggest(trial: optuna.Trial, space: dict[str, IntRange | FloatRange | Choice]) -> dict[str, Any]:
    """The trial's value for each setting; a retried trial gets its original values back."""
    values: dict[str, Any] = {}
    for path, p in space.items():
        if isinstance(p, IntRange):
            values[path] = trial.suggest_int(path, p.low, p.high, step=p.step, log=p.log)
        elif isinstance(p, FloatRange):
            values[path] = trial.suggest_float(path, p.low, p.high, step=p.step, log=p.log)
        else:
            values[path] = trial.suggest_categorical(path, p.values)
    return values


def new_worker_id() -> str:
    return uuid.uuid4().hex[:12]


def trials_table(study: optuna.Study) -> list[dict[str, Any]]:
    rows = []
    for t in study.get_trials(deepcopy=False):
        rows.append(
            {
                "number": t.number,
                "state": t.state.name,
                "value": t.value,
                "params": json.dumps(t.params, sort_keys=True),
                "last_step": t.last_step,
                "seconds": t.duration.total_seconds() if t.duration else None,
                "train_seconds": t.user_attrs.get("train_seconds"),
                "retry_of": optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(t),
                "failure": t.user_attrs.get("failure"),
                "mlflow_run_id": t.user_attrs.get("mlflow_run_id"),
                "artifact_key": t.user_attrs.get("artifact_key"),
            }
        )
    return rows
