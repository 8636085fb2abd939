"""MLflow helpers: one parent run per flow run, a child run per stage, parameters flattened.

The tracking URI comes from the environment (`environment.configure` sets the embedded SQLite store
unless `MLFLOW_TRACKING_URI` is set); nothing here hard-codes where runs go. With the embedded store
the experiment's artifacts go to `<project>/mlartifacts`, beside the database, or under
`$SMOLFORGE_ARTIFACTS_URL` when the artifact store is remote.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from typing import Any

from smolforge.environment import artifacts_location, is_remote, mlflow_tracking_uri, project_home


def _mlflow():
    import mlflow

    mlflow.set_tracking_uri(mlflow_tracking_uri(project_home()))
    return mlflow


# MLflow 3's UI opens an experiment without this tag on its GenAI "Traces" page; this value (the
# UI's "Machine learning" kind) opens the runs and their charts. The UI writes `*_inferred` values
# when it guesses, so only those are replaced in an existing experiment, never a kind a user chose.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


def experiment_id(name: str) -> str:
    """The experiment `name`, created if needed, with the kind that opens it on its training runs."""
    mlflow = _mlflow()
    found = mlflow.get_experiment_by_name(name)
    if found is not None:
        if found.tags.get(EXPERIMENT_KIND_TAG, "_inferred").endswith("_inferred"):
            mlflow.MlflowClient().set_experiment_tag(found.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND)
        return found.experiment_id
    location = None
    if mlflow.get_tracking_uri().startswith("sqlite:"):
        # beside the artifacts: on a remote store every worker (and the UI) reads the same files
        store = artifacts_location(project_home())
        location = f"{store.rstrip('/')}/mlartifacts" if is_remote(store) else (project_home() / "mlartifacts").as_uri()
    try:
        return mlflow.create_experiment(name, artifact_location=location, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND})
    except mlflow.exceptions.MlflowException as exc:
        if exc.error_code != "RESOURCE_ALREADY_EXISTS":
            raise
        # two runs starting at once on a tracking server (two workers): the other created it first
        return mlflow.get_experiment_by_name(name).experiment_id


def prefect_tags() -> dict[str, str]:
    """The Prefect flow run this MLflow run belongs to, when called inside one."""
    if "prefect" not in sys.modules:  # outside any flow (a replayed run): nothing to tag, nothing to import
        return {}
    from prefect.runtime import flow_run
    from prefect.settings import PREFECT_UI_URL

    tags = {}
    if flow_run.id:
        tags["prefect.flow_run_id"] = str(flow_run.id)
        tags["prefect.flow_run_name"] = str(flow_run.name)
        # Without a UI (Prefect's temporary server) `ui_url` reads "None/flow-runs/...": leave it out.
        if PREFECT_UI_URL.value():
            tags["prefect.flow_run_url"] = str(flow_run.ui_url)
    return tags


def start(name: str, experiment: str, parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> Any:
    """Start a run named `name`, nested under `parent_run_id` when given, tagged with the Prefect
    run and the stage (`name` unless `tags` says otherwise). The caller ends it; `run` does so for a block."""
    return _mlflow().start_run(
        experiment_id=experiment_id(experiment), run_name=name, parent_run_id=parent_run_id,
        nested=parent_run_id is not None, tags={**prefect_tags(), "smolforge.stage": name, **(tags or {})},
    )


@contextlib.contextmanager
def run(name: str, experiment: str, parent_run_id: str | None = None, tags: dict[str, str] | None = None) -> Iterator[Any]:
    """Start (and end) a run; nested under `parent_run_id` when given. Failures mark it FAILED."""
    mlflow = _mlflow()
    active = start(name, experiment, parent_run_id, tags)
    try:
        yield active
    except BaseException:
        mlflow.end_run(status="FAILED")
        raise
    mlflow.end_run()


@contextlib.contextmanager
def resume(run_id: str) -> Iterator[Any]:
    """Reopen a finished run (a stage's, to log its model into it) beside whatever run is active."""
    mlflow = _mlflow()
    with mlflow.start_run(run_id=run_id, nested=True) as active:
        yield active


def active_run_id() -> str | None:
    """The run this thread has open (a stage's, to nest work done on its behalf under it)."""
    active = _mlflow().active_run()
    return active.info.run_id if active else None


def client() -> Any:
    return _mlflow().MlflowClient()


def parent_of(run_id: str) -> str:
    """The run `run_id` is nested under, or itself when it has none."""
    return client().get_run(run_id).data.tags.get("mlflow.parentRunId", run_id)


def find_run(experiment: str, tags: dict[str, str]) -> str | None:
    """The newest finished run of `experiment` carrying all of `tags`: the run that recorded an
    artifact a cached stage reuses."""
    query = " and ".join([*(f"tags.`{k}` = '{v}'" for k, v in tags.items()), "attributes.status = 'FINISHED'"])
    found = client().search_runs([experiment_id(experiment)], query, max_results=1, order_by=["attributes.start_time DESC"])
    return found[0].info.run_id if found else None


def flatten(value: Any, prefix: str = "") -> dict[str, str]:
    """`{"a": {"b": 1}}` -> `{"a.b": "1"}`; lists of models are kept as one JSON-ish string."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    text = str(value)
    return {prefix: text if len(text) <= 6000 else text[:5997] + "..."}


def set_tags(tags: dict[str, str]) -> None:
    if tags:
        _mlflow().set_tags(tags)


def log_params(params: dict[str, Any]) -> None:
    _mlflow().log_params(flatten(params))


def metric_name(*parts: str) -> str:
    """MLflow accepts letters, digits, `_ - . / :` and spaces; anything else becomes `_`."""
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-./: ")
    return ".".join("".join(c if c in allowed else "_" for c in p) for p in parts)


def label_name(label: str) -> str:
    """A label that may be a folder or a registry URI (`/tmp/model`, `models:/chat/3`) as one part
    of a metric or tag name: MLflow refuses names that read as file paths, so those become `tmp_model`."""
    cleaned = "".join(c if c.isalnum() or c in "_-." else "_" for c in label)
    return "_".join(part for part in cleaned.split("_") if part).strip(".") or "model"


def run_url(run_id: str, experiment: str) -> str:
    """Where to see a run: a server's URL, or the path inside `smolforge ui`'s MLflow UI."""
    mlflow = _mlflow()
    uri = mlflow.get_tracking_uri()
    exp = experiment_id(experiment)
    if uri.startswith("http"):
        return f"{uri.rstrip('/')}/#/experiments/{exp}/runs/{run_id}"
    return f"#/experiments/{exp}/runs/{run_id} (in the MLflow UI that `smolforge ui` starts)"

