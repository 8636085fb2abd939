"""The command line as a user's shell sees it: a subprocess with its output piped (not a terminal),
as in CI logs and `| less`, where a line broken inside a key cannot be pasted back."""

import importlib
import os
import pkgutil
import subprocess
import sys
import textwrap
from pathlib import Path

import smolforge.tasks
from smolforge.artifacts import ArtifactStore
from smolforge.flows.config import ARTIFACT_KINDS
from smolforge.model_source import KIND as MODEL_IMPORT_KIND
from smolforge.tasks.sweep.study import KIND as SWEEP_TRIAL_KIND


def cli(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOLFORGE_HOME": str(home), "COLUMNS": "80"}
    return subprocess.run(
        [sys.executable, "-m", "smolforge.cli", *args], capture_output=True, text=True, env=env, timeout=120
    )


def test_keys_and_paths_come_out_whole_when_the_output_is_piped(tmp_path):
    home = tmp_path / "a-project-folder-whose-path-is-longer-than-one-line-of-eighty-columns" / "proj"
    store = ArtifactStore(home / "artifacts")
    key = "63938844959d36b34030da7ddf4d2b3e"
    with store.write("corpus", key, step="corpus_task") as (folder, _):
        (folder / "corpus.json").write_text("{}")
    done = cli(home, "artifacts", "--kind", "corpus")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert any(str(store.root) in line for line in lines), done.stdout
    assert any(key in line for line in lines), done.stdout


def test_an_unknown_artifact_kind_is_an_error_that_lists_the_kinds(tmp_path):
    done = cli(tmp_path, "artifacts", "--kind", "nonsense")
    assert done.returncode != 0
    assert "unknown artifact kind 'nonsense'; the kinds are: extracted, language," in done.stdout
    assert "corpus, pretrained" in done.stdout


def test_the_declared_artifact_kinds_are_the_kinds_the_steps_write():
    """The CLI checks `--kind` against the composition's list; every artifact step (and the
    sweep's kept trials, and models imported from the registry, a folder or the hub) must be in it,
    so a new step cannot be unlistable."""
    written = {SWEEP_TRIAL_KIND, MODEL_IMPORT_KIND}
    for module in pkgutil.walk_packages(smolforge.tasks.__path__, "smolforge.tasks."):
        for value in vars(importlib.import_module(module.name)).values():
            if hasattr(value, "key_of") and isinstance(getattr(value, "kind", None), str):
                written.add(value.kind)
    assert written == set(ARTIFACT_KINDS)
    assert len(ARTIFACT_KINDS) == len(set(ARTIFACT_KINDS))


def test_run_help_shows_the_default_preset(tmp_path):
    done = cli(tmp_path, "run", "--help")
    assert done.returncode == 0
    words = " ".join(done.stdout.replace("│", " ").split())  # the help box wraps inside its borders
    assert "[default: tiny; none when --config is given]" in words


QUIET_RUN = textwrap.dedent(
    """
    from smolforge.environment import configure
    configure()
    from smolforge.cli import quiet_task_runs_on_console
    quiet_task_runs_on_console()

    from prefect import flow, get_run_logger, task
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogWorker
    from prefect.runtime import flow_run

    @task
    def step():
        get_run_logger().info("task info line")
        get_run_logger().warning("task warning line")

    @flow
    def demo():
        get_run_logger().info("flow info line")
        step()
        return flow_run.id

    run_id = demo()
    APILogWorker.drain_all(timeout=30)
    with get_client(sync_client=True) as client:
        logs = client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
    print("sent to the API:", sorted(log.message for log in logs))
    """
)


def test_task_run_info_stays_off_the_console_and_still_reaches_prefect(tmp_path):
    """The console of `smolforge run` shows flow runs and warnings, not a line per finished task
    run; the Prefect UI (its API) still gets every record."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(SMOLFORGE_HOME=str(tmp_path / "proj"), PREFECT_LOGGING_LEVEL="INFO")
    done = subprocess.run([sys.executable, "-c", QUIET_RUN], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "flow info line" in done.stderr and "task warning line" in done.stderr
    assert "task info line" not in done.stderr and "Finished in state Completed" in done.stderr  # the flow's own
    sent = done.stdout.split("sent to the API:", 1)[1]
    assert "'task info line'" in sent and "'flow info line'" in sent and "'task warning line'" in sent
