"""The pipeline as an operated service: `smolforge up` starts real servers and workers on
127.0.0.1 for the session's project folder (where the tiny pipeline already ran, so every flow run
here comes from the cache), `deploy` is idempotent, `submit` creates runs that the workers execute,
the training stages run on the `gpu` pool's worker, a one-minute schedule fires, and `down` stops
what `up` started (the session's `stack` fixture, tests/stack_fixtures.py). Bad input first: each
refused with a clear message before anything starts."""

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
from stack_fixtures import cli as _cli
from stack_fixtures import free_port as _free_port
from stack_fixtures import user_env as _user_env
from stack_fixtures import wait_for_runs

pytestmark = pytest.mark.slow


def _api(stack: dict, path: str, body: dict | None = None):
    request = urllib.request.Request(
        f"{stack['prefect']}/api/{path}", data=json.dumps(body).encode() if body is not None else None,
        headers={"Content-Type": "application/json"}, method="POST" if body is not None else "GET",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read() or b"null")


def test_deploy_without_a_server_says_how_to_start_one(outside_env, tmp_path):
    done = _cli(_user_env(outside_env, tmp_path / "new-project"), "deploy", check=False)
    assert done.returncode == 2
    assert "no Prefect server" in done.stdout and "smolforge up" in done.stdout
    dead = f"http://127.0.0.1:{_free_port()}/api"
    done = _cli({**_user_env(outside_env, tmp_path / "new-project"), "PREFECT_API_URL": dead}, "deploy", check=False)
    assert done.returncode == 2 and f"no Prefect server answers at PREFECT_API_URL={dead}" in done.stdout


def test_up_refuses_a_taken_port_and_a_database_that_does_not_answer(outside_env, tmp_path):
    home = tmp_path / "new-project"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = _cli(_user_env(outside_env, home), "up", "--prefect-port", str(port), "--mlflow-port", str(_free_port()), check=False)
    assert done.returncode == 2
    assert f"port {port} on 127.0.0.1 (for the Prefect server) is taken by" in done.stdout
    assert f"pid {os.getpid()}" in done.stdout  # the process holding it is named
    closed = _free_port()
    done = _cli(
        _user_env(outside_env, home), "up", "--prefect-port", str(_free_port()), "--mlflow-port", str(_free_port()),
        "--database-url", f"postgresql://nobody:secret@127.0.0.1:{closed}", check=False,
    )
    assert done.returncode == 2
    assert f"cannot connect to the database server postgresql://nobody:***@127.0.0.1:{closed}" in done.stdout
    assert "secret" not in done.stdout
    assert not (home / "stack.json").exists() and not (home / "logs").exists()  # nothing was started


def test_up_deploys_one_deployment_per_flow_with_the_config_form(stack):
    from smolforge.flows.config import FLOWS, STAGES

    assert "servers healthy after" in stack["up"]
    deployments = {d["name"] and f"{_flow_name(stack, d['flow_id'])}/{d['name']}": d for d in _api(stack, "deployments/filter", {})}
    assert sorted(deployments) == sorted(f"{f}/smolforge" for f in FLOWS)
    gpu = {s.name for s in STAGES if s.gpu}
    for name, d in deployments.items():
        flow = name.split("/")[0]
        assert d["work_pool_name"] == ("gpu" if flow in gpu else "cpu"), name
        config = d["parameter_openapi_schema"]["definitions"]["PipelineConfig"]
        assert config["properties"]["curate"]["description"].startswith("Curation")  # the form's help text
        assert d["parameters"]["config"]["preset"] == "tiny"  # the form's defaults: the whole tiny preset
        assert d["parameters"]["config"]["pretrain"]["stages"][0]["steps"] > 0
    retrain = deployments["retrain/smolforge"]
    assert sorted((s["slug"], s["schedule"]["cron"], s["active"]) for s in retrain["schedules"]) == [
        ("daily", "0 3 * * *", False), ("weekly", "0 3 * * 1", False),
    ]
    pools = {p["name"] for p in _api(stack, "work_pools/filter", {})}
    assert {"cpu", "gpu"} <= pools
    limit = _api(stack, "v2/concurrency_limits/filter", {})
    assert [(c["name"], c["limit"]) for c in limit if c["name"] == "gpu"] == [("gpu", 1)]


def _flow_name(stack: dict, flow_id: str) -> str:
    return _api(stack, f"flows/{flow_id}")["name"]


def test_deploy_again_changes_nothing_and_keeps_a_schedule_a_user_switched_on(stack):
    retrain = next(d for d in _api(stack, "deployments/filter", {}) if _flow_name(stack, d["flow_id"]) == "retrain")
    weekly = next(s for s in retrain["schedules"] if s["slug"] == "weekly")
    request = urllib.request.Request(
        f"{stack['prefect']}/api/deployments/{retrain['id']}/schedules/{weekly['id']}",
        data=json.dumps({"active": True}).encode(), headers={"Content-Type": "application/json"}, method="PATCH",
    )
    urllib.request.urlopen(request, timeout=30).close()  # what the UI's toggle does
    again = _cli(stack["env"], "deploy")
    rows = [line for line in again.stdout.splitlines() if "deployment " in line]
    assert rows and all("unchanged" in row for row in rows), again.stdout
    retrain = _api(stack, f"deployments/{retrain['id']}")
    assert {s["slug"]: s["active"] for s in retrain["schedules"]} == {"weekly": True, "daily": False}


def test_worker_for_a_pool_that_does_not_exist_is_refused(stack):
    done = _cli(stack["env"], "worker", "--pool", "tpu", check=False, timeout=120)
    assert done.returncode == 2
    assert "no work pool 'tpu'" in done.stdout and "pools: cpu, gpu" in done.stdout


def test_pipeline_submitted_runs_its_training_stages_on_the_gpu_worker(stack, session_home):
    """The pipeline's own run on the cpu pool; pretraining, distillation and fine-tuning each a flow
    run of its deployment on the gpu pool, executed by the gpu worker; all from the cache."""
    done = _cli(stack["env"], "submit", "pipeline", "--set", "execution.gpu_pool=gpu", "--wait")
    assert "completed" in done.stdout.splitlines()[-1], done.stdout
    run_id = done.stdout.split("(", 1)[1].split(")", 1)[0]
    parent = _api(stack, f"flow_runs/{run_id}")
    assert parent["work_pool_name"] == "cpu" and parent["state_type"] == "COMPLETED"
    children = [
        r for r in _api(stack, "flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [run_id]}}})
        if r["deployment_id"]
    ]
    by_flow = {_flow_name(stack, r["flow_id"]): r for r in children}
    assert sorted(by_flow) == ["distill", "finetune", "pretrain"]
    logs = {pool: (session_home / "logs" / f"worker-{pool}.log").read_text() for pool in ("cpu", "gpu")}
    for flow, run in by_flow.items():
        assert run["work_pool_name"] == "gpu" and run["state_type"] == "COMPLETED", flow
        assert "gpu" in run["tags"]
        assert run["id"] in logs["gpu"] and run["id"] not in logs["cpu"], flow  # the gpu worker executed it
    assert run_id in logs["cpu"] and run_id not in logs["gpu"]


def test_two_training_runs_with_one_gpu_slot_run_one_after_the_other(stack):
    submitted = [_cli(stack["env"], "submit", "finetune") for _ in range(2)]
    ids = [s.stdout.split("(", 1)[1].split(")", 1)[0] for s in submitted]
    assert wait_for_runs(stack, ids, 600) == ["COMPLETED", "COMPLETED"]
    runs = [_api(stack, f"flow_runs/{i}") for i in ids]
    first, second = sorted(runs, key=lambda r: r["start_time"])
    assert second["start_time"] >= first["end_time"], (first["start_time"], first["end_time"], second["start_time"])


def test_a_one_minute_schedule_produces_a_completed_run(stack, session_home):
    """A deployment of the (cached) curate flow on a one-minute cron: the server's scheduler makes
    the runs, the cpu worker executes one to Completed within three minutes."""
    script = (
        "from smolforge.deployments.catalog import default_parameters\n"
        "from smolforge.flows.curate import curate\n"
        "from prefect.types.entrypoint import EntrypointType\n"
        "curate.to_deployment(name='every-minute', parameters=default_parameters(), cron='* * * * *',\n"
        "    work_pool_name='cpu', entrypoint_type=EntrypointType.MODULE_PATH).apply(work_pool_name='cpu')\n"
    )
    env = {**stack["env"], "PREFECT_API_URL": f"{stack['prefect']}/api"}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300)
    deployment = _api(stack, "deployments/name/curate/every-minute")
    deadline = time.monotonic() + 180
    completed = []
    while not completed and time.monotonic() < deadline:
        runs = _api(stack, "flow_runs/filter", {"deployments": {"id": {"any_": [deployment["id"]]}}})
        completed = [r for r in runs if r["state_type"] == "COMPLETED"]
        time.sleep(3)
    request = urllib.request.Request(f"{stack['prefect']}/api/deployments/{deployment['id']}", method="DELETE")
    urllib.request.urlopen(request, timeout=30).close()  # no more runs every minute under the other tests
    assert completed, [(r["name"], r["state_type"], r["expected_start_time"]) for r in runs]
    assert completed[0]["auto_scheduled"] is True


def test_ui_points_at_the_stack(stack):
    ui = _cli(stack["env"], "ui", timeout=120)
    assert f"Prefect UI {stack['prefect']}" in ui.stdout
