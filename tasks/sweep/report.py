"""What a finished sweep leaves behind: the best models as artifacts, the rest deleted, and on the
sweep's MLflow run the best settings and value, the optimisation history, the intermediate values,
the parameter importances and a table of every trial.

Keeping the best few models rather than only the best one is deliberate: the merge stage can
combine good runs that lost the sweep (model soups and merges gain from such near-misses).
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from smolforge.artifacts import ArtifactRef, ArtifactStore
from smolforge.tasks.sweep.study import KIND, trials_table


def ranked(study: optuna.Study) -> list[optuna.trial.FrozenTrial]:
    """Complete trials, best (lowest validation loss) first."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if t.value is not None]
    return sorted(done, key=lambda t: (t.value, t.number))


def keep_best(study: optuna.Study, keep: int, store: ArtifactStore) -> list[dict[str, Any]]:
    """Keep the models of the best `keep` complete trials; delete the other trials' models. Safe with
    several workers on one study: a trial that has dropped out of the best k never comes back."""
    kept = []
    for rank, t in enumerate(ranked(study)):
        key = t.user_attrs.get("artifact_key")
        if key is None:
            continue
        if rank < keep:
            ref = store.get(KIND, key)
            if ref is None:
                warnings.warn(f"sweep trial {t.number}: its model artifact {key} is missing or damaged", stacklevel=2)
                continue
            kept.append({"rank": rank + 1, "trial": t.number, "value": t.value, "params": t.params, "model": ref.model_dump()})
        else:
            store.remove(KIND, key)
    return kept


def close_abandoned_runs(study: optuna.Study) -> int:
    """Trials failed because their process died left MLflow runs marked RUNNING: end them as KILLED."""
    import mlflow

    client = mlflow.MlflowClient()
    closed = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id and client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "optuna.state", "FAIL")
            client.set_tag(run_id, "optuna.failure", "the process running the trial stopped (no heartbeat)")
            client.set_terminated(run_id, status="KILLED")
            closed += 1
    return closed


def _varying_params(trials: list[optuna.trial.FrozenTrial]) -> list[str]:
    names = {n for t in trials for n in t.params}
    return sorted(n for n in names if len({repr(t.params.get(n)) for t in trials}) > 1)


def log_report(study: optuna.Study, kept: list[dict[str, Any]]) -> dict[str, Any]:
    """Log the study's outcome on the active (sweep) MLflow run; returns the summary it logged."""
    import matplotlib

    matplotlib.use("Agg")  # files only, and safe off the main thread
    import matplotlib.pyplot as plt
    import mlflow
    from optuna.visualization import matplotlib as plots

    states = [t.state for t in study.get_trials(deepcopy=False)]
    summary: dict[str, Any] = {
        "trials": len(states),
        **{s.name.lower(): states.count(s) for s in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)},
        "kept": kept,
        "plots": [],
        "skipped_plots": {},
    }
    best = ranked(study)
    if best:
        summary.update(best_value=best[0].value, best_params=best[0].params, best_trial=best[0].number)
        mlflow.log_metric("best_value", best[0].value)
        mlflow.log_params({f"best.{k}": v for k, v in best[0].params.items()})
        mlflow.log_dict(best[0].params, "best_params.json")
    mlflow.log_metrics({f"trials_{k}": float(summary[k]) for k in ("complete", "pruned", "fail")})

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    figures = {
        "optimization_history.png": (plots.plot_optimization_history, "no complete trial yet" if not complete else None),
        "intermediate_values.png": (
            plots.plot_intermediate_values,
            None if any(t.intermediate_values for t in study.get_trials(deepcopy=False)) else "no trial reported a value",
        ),
        "param_importances.png": (
            plots.plot_param_importances,
            "needs at least 2 complete trials" if len(complete) < 2
            else "no setting took different values in the complete trials" if not _varying_params(complete)
            else None,
        ),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for name, (plot, reason) in figures.items():
            if reason is None:
                try:
                    ax = plot(study)
                except (ValueError, RuntimeError) as exc:  # e.g. importances of a degenerate study
                    reason = f"optuna could not draw it: {exc}"
                else:
                    fig = ax.figure
                    fig.tight_layout()
                    mlflow.log_figure(fig, name)
                    plt.close(fig)
                    summary["plots"].append(name)
            if reason is not None:
                summary["skipped_plots"][name] = reason
                mlflow.set_tag(f"sweep.skipped.{name}", reason)

    rows = trials_table(study)
    if rows:
        mlflow.log_table({k: [r[k] for r in rows] for k in rows[0]}, "trials.json")
    mlflow.log_dict({"kept": kept}, "kept_models.json")
    return summary


def kept_refs(kept: list[dict[str, Any]]) -> list[ArtifactRef]:
    return [ArtifactRef(**k["model"]) for k in kept]
