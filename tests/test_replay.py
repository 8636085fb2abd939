"""A pipeline run that would change nothing is answered from the record of the run that made it,
without Prefect, and still leaves a `pipeline` run in MLflow; anything changed runs the flow."""

import json
import os
import subprocess
import sys

import mlflow
import pytest

from smolforge.flows.config import load_config
from smolforge.flows.replay import fingerprint, replay

pytestmark = pytest.mark.slow


def test_an_unchanged_pipeline_is_replayed_with_its_artifacts_and_runs(tiny_pipeline, session_home):
    config = load_config("tiny")
    # the last run of this config left the record: the session's pipeline, or a later cached
    # re-run of it by another stage's test
    record = session_home / "runs" / f"{fingerprint(config, session_home)}.json"
    recorded = json.loads(record.read_text(encoding="utf-8"))
    replayed = replay(config)
    assert replayed is not None
    assert list(replayed.stages) == list(tiny_pipeline.stages)
    assert all(r.cached for r in replayed.stages.values())
    assert replayed.finetune.model == tiny_pipeline.finetune.model
    assert replayed.pretrain.registered == tiny_pipeline.pretrain.registered
    run = mlflow.get_run(replayed.mlflow_run_id)
    assert run.info.run_name == "pipeline" and replayed.mlflow_run_id != tiny_pipeline.mlflow_run_id
    assert run.data.tags["smolforge.replayed_from"] == recorded["mlflow_run_id"]
    assert mlflow.get_run(recorded["mlflow_run_id"]).info.run_name == "pipeline"
    assert run.data.tags["smolforge.reused.finetune"] == recorded["finetune"]["mlflow_run_id"]
    assert "prefect.flow_run_id" not in run.data.tags  # no flow ran
    version = mlflow.MlflowClient().get_model_version_by_alias("smolforge-chat", "candidate")
    assert version.version == tiny_pipeline.finetune.registered.version


def test_a_changed_setting_or_a_damaged_artifact_runs_the_flow(tiny_pipeline):
    assert replay(load_config("tiny", overrides=["pretrain.seed=7"])) is None  # never recorded
    weights = tiny_pipeline.finetune.model.path / "model" / "model.safetensors"
    original = weights.read_bytes()
    try:
        weights.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        assert replay(load_config("tiny")) is None
    finally:
        weights.write_bytes(original)
    assert replay(load_config("tiny")) is not None


def test_the_cli_replays_without_starting_prefect(tiny_pipeline, session_home):
    # a Prefect API nobody answers: a run that touched Prefect would fail on it
    env = {**os.environ, "SMOLFORGE_HOME": str(session_home), "PREFECT_API_URL": "http://127.0.0.1:9/api"}
    done = subprocess.run(
        [sys.executable, "-m", "smolforge.cli", "run", "pipeline", "--preset", "tiny"],
        capture_output=True, text=True, env=env, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "nothing changed since the last run" in done.stdout
    assert "finetune cached" in done.stdout.replace("\n", " ")
