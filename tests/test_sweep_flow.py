"""A real sweep on the tiny pipeline: trials as parallel Prefect tasks, child runs and plots in
MLflow, pruning, the best models kept, and a crashed sweep resumed.

The sweep runs inside the pipeline (after pretraining, on the pipeline's corpus). Its trials
pretrain a smaller model for 16 steps (`sweep.fixed`), so each takes a few seconds. Four trials are
enqueued before the sweep starts, so the outcome does not depend on what the sampler draws: two
learning rates that learn and two so low that the model barely moves. Two trials run at a time, and
the median pruner may prune once two trials have completed. The two good trials start first (and
cannot be pruned: neither sees two completed trials); the bad ones then fall behind the completed
trials' validation losses at an evaluation before their last and are pruned there.
"""

import time

import mlflow
import optuna
import pytest
from optuna.trial import TrialState

from smolforge import tracking
from smolforge.artifacts import ArtifactStore
from smolforge.flows.config import load_config
from smolforge.flows.pipeline import pipeline
from smolforge.flows.results import PipelineResult
from smolforge.flows.sweep import sweep
from smolforge.flows.sweep_objectives import study_name
from smolforge.tasks.sweep.study import KIND, default_storage, open_study, storage_for

pytestmark = pytest.mark.slow

GOOD, BAD = [0.006, 0.012], [1e-5, 2e-5]
SHORT = "[{name: short, steps: 16, seq_len: 64, mixture: {books: 0.8, chat: 0.2}}]"
SWEEP = (
    "{stage: pretrain, trials: 4, parallel: 2, keep: 1, pruner: median, prune_after_trials: 2, "
    "heartbeat_seconds: 1, grace_seconds: 4, space: {pretrain.optimizer.lr: float 1e-5..3e-2 log}, "
    "fixed: {pretrain.stages: " + SHORT + ", pretrain.eval_every: 4, pretrain.eval_batches: 1, "
    "pretrain.schedule.decay_fraction: 0.5, pretrain.schedule.warmup_steps: 2, pretrain.model.hidden_size: 64, "
    "pretrain.model.num_layers: 2, pretrain.model.intermediate_size: 128, pretrain.mtp.heads: 0}}"
)
NO_LATER_STAGES = ["distill=null", "finetune=null", "merge=null", "evaluate=null", "promote=null"]


@pytest.fixture(scope="module")
def upstream(tiny_pipeline):
    return tiny_pipeline


@pytest.fixture(scope="module")
def swept(upstream, session_home):
    config = load_config("tiny", overrides=[*NO_LATER_STAGES, f"sweep={SWEEP}"])
    url = default_storage(session_home)
    name = study_name(config, upstream.pretrain.inputs.refs())
    study = open_study(config.sweep, url, name)
    for lr in GOOD + BAD:
        study.enqueue_trial({"pretrain.optimizer.lr": lr})
    result = pipeline(config)
    return {"config": config, "pipeline": result, "sweep": result.sweep, "study": study}


def by_lr(study):
    return {t.params["pretrain.optimizer.lr"]: t for t in study.get_trials()}


def test_trials_run_two_at_a_time_and_the_low_rates_are_pruned(swept):
    summary, trials = swept["sweep"], by_lr(swept["study"])
    assert (summary.trials, summary.complete, summary.pruned) == (4, 2, 2)
    assert [trials[lr].state for lr in GOOD] == [TrialState.COMPLETE] * 2
    assert [trials[lr].state for lr in BAD] == [TrialState.PRUNED] * 2
    assert all(trials[lr].last_step < 16 for lr in BAD)  # stopped before their last evaluation
    a, b = (trials[lr] for lr in GOOD)
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete  # overlapped
    assert summary.best_params == {"pretrain.optimizer.lr": min(GOOD, key=lambda lr: trials[lr].value)}


def test_each_trial_is_a_child_run_and_the_study_is_logged_on_the_sweep_run(swept):
    client = mlflow.MlflowClient()
    sweep_run = client.get_run(swept["sweep"].mlflow_run_id)
    assert sweep_run.data.tags["mlflow.parentRunId"] == swept["pipeline"].mlflow_run_id
    assert sweep_run.data.metrics["best_value"] == swept["sweep"].best_value
    assert sweep_run.data.params["best.pretrain.optimizer.lr"] == str(swept["sweep"].best_params["pretrain.optimizer.lr"])
    logged = {a.path for a in client.list_artifacts(sweep_run.info.run_id)}
    expected = {"optimization_history.png", "intermediate_values.png", "param_importances.png"}
    assert expected | {"trials.json", "best_params.json", "kept_models.json"} <= logged
    assert set(swept["sweep"].plots) == expected

    children = client.search_runs(
        [sweep_run.info.experiment_id], f"tags.mlflow.parentRunId = '{sweep_run.info.run_id}'"
    )
    assert len(children) == 4
    for child in children:
        lr = float(child.data.params["pretrain.optimizer.lr"])
        curve = [m.step for m in client.get_metric_history(child.info.run_id, "val_loss")]
        if lr in GOOD:
            assert (child.info.status, child.data.tags["optuna.state"]) == ("FINISHED", "COMPLETE")
            assert curve == [4, 8, 12, 16] and "value" in child.data.metrics
        else:
            assert (child.info.status, child.data.tags["optuna.state"]) == ("KILLED", "PRUNED")
            assert curve and curve == [4, 8, 12][: len(curve)]


def test_only_the_best_model_is_kept(swept, session_home):
    kept, trials = swept["sweep"].kept, by_lr(swept["study"])
    best = min(GOOD, key=lambda lr: trials[lr].value)
    assert [k["trial"] for k in kept] == [trials[best].number]
    folder = ArtifactStore(session_home / "artifacts").path(KIND, kept[0]["model"]["key"])
    assert (folder / "model" / "config.json").is_file() and (folder / "manifest.json").is_file()
    other = trials[max(GOOD, key=lambda lr: trials[lr].value)].user_attrs["artifact_key"]
    assert not ArtifactStore(session_home / "artifacts").path(KIND, other).exists()  # deleted
    assert all("artifact_key" not in trials[lr].user_attrs for lr in BAD)  # pruned: never written


def test_a_crashed_sweep_resumes_and_reruns_the_trial_that_died(swept, upstream, session_home):
    """A process that dies mid-trial leaves it RUNNING with a heartbeat that stops: the next sweep
    fails it, runs its settings again, and does not redo the finished trials."""
    config = swept["config"].model_copy(update={"sweep": swept["config"].sweep.model_copy(update={"trials": 5})})
    url, name = default_storage(session_home), swept["sweep"].study
    study = optuna.load_study(study_name=name, storage=storage_for(config.sweep, url))
    dead = study.ask({"pretrain.optimizer.lr": optuna.distributions.FloatDistribution(1e-5, 3e-2, log=True)})
    study._storage.record_heartbeat(dead._trial_id)  # what its heartbeat thread did before the process died
    dead.set_user_attr("worker", "a-process-that-died")
    experiment = tracking.experiment_id(config.tracking.experiment)
    abandoned = mlflow.MlflowClient().create_run(experiment, run_name=f"trial-{dead.number}")  # left RUNNING
    dead.set_user_attr("mlflow_run_id", abandoned.info.run_id)
    time.sleep(config.sweep.grace + 1)

    resumed = sweep(config, PipelineResult(pretrain=upstream.pretrain))
    assert resumed.study == name
    assert len(resumed.this_run) == 1  # the four finished trials were not run again
    trials = study.get_trials()
    retry = trials[-1]
    assert trials[dead.number].state == TrialState.FAIL
    assert optuna.storages.RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == dead.number
    assert retry.params == trials[dead.number].params and retry.state in (TrialState.COMPLETE, TrialState.PRUNED)
    assert (resumed.trials, resumed.complete + resumed.pruned) == (6, 5)
    assert mlflow.MlflowClient().get_run(abandoned.info.run_id).info.status == "KILLED"
