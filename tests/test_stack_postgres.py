"""The team stack on a real PostgreSQL server (Debian's, started here on 127.0.0.1 in a temporary
cluster and stopped by its PID): `smolforge up --database-url` creates one database per service,
two pipeline runs submitted at once through the deployment both complete and both reach MLflow
with no artifact half-written, and a sweep's two parallel trials keep their study on Postgres."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
from stack_fixtures import cli as _cli
from stack_fixtures import free_port as _free_port
from stack_fixtures import user_env as _user_env
from stack_fixtures import wait_for_runs
from test_cli_runs import small_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def postgres():
    """A throwaway cluster owned by the `postgres` user, trusting local connections; its URL. It
    lives outside pytest's temporary folders, which only root may enter."""
    binaries = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not binaries or shutil.which("runuser") is None:
        pytest.skip("PostgreSQL is not installed (.ci/run installs Debian's postgresql)")
    bin_dir = Path(binaries[-1]).parent
    root = Path(tempfile.mkdtemp(prefix="smolforge-postgres-"))
    root.chmod(0o777)
    data = root / "data"
    as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    made = subprocess.run([*as_postgres, str(bin_dir / "initdb"), "-D", str(data), "-U", "smolforge", "--auth=trust"],
                          capture_output=True, text=True, timeout=120, check=False)
    assert made.returncode == 0, made.stdout + made.stderr
    port = _free_port()
    with open(root / "postgres.log", "wb") as log:
        server = subprocess.Popen(
            [*as_postgres, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), "-c", "listen_addresses=127.0.0.1",
             "-k", str(root), "-c", "max_connections=200"],
            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True,
        )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.3)
    try:
        yield f"postgresql://smolforge@127.0.0.1:{port}"
    finally:
        os.killpg(server.pid, signal.SIGINT)  # a fast shutdown
        server.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)


def test_two_pipelines_at_once_and_a_parallel_sweep_on_postgres(postgres, sample_corpus, outside_env, tmp_path):
    import optuna
    import psycopg

    home = tmp_path / "new-project"
    env = _user_env(outside_env, home)
    ports = (_free_port(), _free_port())
    up = _cli(env, "up", "--prefect-port", str(ports[0]), "--mlflow-port", str(ports[1]), "--database-url", postgres)
    try:
        assert "created smolforge_prefect, smolforge_mlflow, smolforge_optuna" in up.stdout
        with psycopg.connect(f"{postgres}/postgres") as conn:
            names = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        assert {"smolforge_prefect", "smolforge_mlflow", "smolforge_optuna"} <= names
        stack = json.loads((home / "stack.json").read_text())
        assert stack["database"] == postgres and "smolforge_optuna" in stack["optuna"]

        # two runs at once: the same small pipeline with two seeds (two pretrained models)
        settings = [*small_run(sample_corpus), "--set", "pretrain.stages.0.steps=20"]
        ids = []
        for seed in (0, 1):
            done = _cli(env, "submit", "pipeline", *settings, "--set", f"pretrain.seed={seed}")
            ids.append(done.stdout.split("(", 1)[1].split(")", 1)[0])
        states = wait_for_runs(stack, ids, 900)
        assert states == ["COMPLETED", "COMPLETED"], _worker_logs(home)

        runs = _mlflow(stack, "runs/search", {"experiment_ids": _experiments(stack), "max_results": 200})["runs"]
        pipeline_runs = {r["data"].get("tags") and _tag(r, "prefect.flow_run_id") for r in runs if r["info"]["run_name"] == "pipeline"}
        assert set(ids) <= pipeline_runs  # both in MLflow, on the Postgres-backed server
        artifacts = home / "artifacts"
        assert not list(artifacts.rglob(".tmp-*"))  # nothing half-written
        from smolforge.artifacts import ArtifactStore

        store = ArtifactStore(artifacts)
        assert [row["kind"] for row in store.list() if store.problem(row["kind"], row["key"])] == []
        assert len({row["key"] for row in store.list() if row["kind"] == "pretrained"}) >= 2

        sweep = (
            "sweep={stage: pretrain, trials: 2, parallel: 2, keep: 0, pruner: none, "
            "space: {pretrain.optimizer.lr: float 1e-3..1e-2 log}, fixed: {pretrain.stages.0.steps: 8, pretrain.schedule.warmup_steps: 2}}"
        )
        done = _cli(env, "submit", "sweep", *settings, "--set", sweep, "--wait")
        assert done.stdout.strip().splitlines()[-1].endswith("completed"), done.stdout + _worker_logs(home)
        summaries = optuna.study.get_all_study_summaries(stack["optuna"])
        assert len(summaries) == 1 and summaries[0].n_trials == 2
        trials = optuna.load_study(study_name=summaries[0].study_name, storage=stack["optuna"]).trials
        assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
        starts, ends = sorted(t.datetime_start for t in trials), sorted(t.datetime_complete for t in trials)
        assert starts[1] < ends[0]  # the two trials ran at the same time
    finally:
        _cli(env, "down", check=False)


def _mlflow(stack: dict, path: str, body: dict) -> dict:
    request = urllib.request.Request(
        f"{stack['mlflow']}/api/2.0/mlflow/{path}", data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _experiments(stack: dict) -> list[str]:
    return [e["experiment_id"] for e in _mlflow(stack, "experiments/search", {"max_results": 100})["experiments"]]


def _tag(run: dict, key: str) -> str | None:
    return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)


def _worker_logs(home: Path) -> str:
    return "\n".join(p.read_text()[-3000:] for p in sorted((home / "logs").glob("worker-*.log")))
