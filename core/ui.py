"""`smolforge ui`: the Prefect server and the MLflow UI over this project's own stores, on localhost.

The Prefect server opens the same database the embedded (ephemeral) runs wrote to, so earlier flow
runs are there; while it is up, `smolforge run` sends new runs to it (see `ui.json`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from rich.console import Console

from smolforge.environment import UI_FILE, mlflow_tracking_uri
from smolforge.processes import HOST, console_script, healthy, stop


def start(home: Path, prefect_port: int, mlflow_port: int, timeout: float = 90) -> tuple[list[subprocess.Popen], dict[str, str]]:
    """Start both servers, wait until they answer, return the processes and their URLs."""
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    # MLflow's server also starts seven job-queue workers (~240 MB each) for GenAI scorers this
    # project does not use.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    prefect = subprocess.Popen(
        [console_script("prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)],
        env=env, stdout=open(logs / "prefect-server.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    mlflow = subprocess.Popen(
        [console_script("mlflow"), "ui", "--backend-store-uri", mlflow_tracking_uri(home), "--host", HOST,
         "--port", str(mlflow_port), "--workers", "1"],
        env=env, stdout=open(logs / "mlflow-ui.log", "ab"), stderr=subprocess.STDOUT, start_new_session=True,
    )
    procs = [prefect, mlflow]
    urls = {"prefect": f"http://{HOST}:{prefect_port}", "mlflow": f"http://{HOST}:{mlflow_port}"}
    checks = {"prefect": f"{urls['prefect']}/api/health", "mlflow": f"{urls['mlflow']}/health"}
    deadline = time.monotonic() + timeout
    pending = set(checks)
    while pending and time.monotonic() < deadline:
        for name in list(pending):
            if healthy(checks[name]):
                pending.discard(name)
        for proc, name in zip(procs, ("prefect", "mlflow")):
            if proc.poll() is not None and name in pending:
                stop(procs)
                raise RuntimeError(f"the {name} server exited with code {proc.returncode}; see {logs}")
        time.sleep(0.5)
    if pending:
        stop(procs)
        raise RuntimeError(f"{', '.join(sorted(pending))} did not answer within {timeout:.0f} s; see {logs}")
    (home / UI_FILE).write_text(json.dumps({**urls, "pids": [p.pid for p in procs]}), encoding="utf-8")
    return procs, urls


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def serve(home: Path, prefect_port: int, mlflow_port: int, console: Console) -> None:
    console.print("starting the Prefect server and the MLflow UI …")
    # `kill` (SIGTERM) stops the servers as Ctrl-C does, instead of leaving them orphaned.
    signal.signal(signal.SIGTERM, _interrupt)
    procs, urls = start(home, prefect_port, mlflow_port)
    console.print(f"Prefect UI  {urls['prefect']}   (flow runs and task runs)")
    console.print(f"MLflow UI   {urls['mlflow']}   (runs, metrics, params, artifacts, models)")
    console.print("[dim]runs started with `smolforge run` now go to this Prefect server; Ctrl-C stops both[/]")
    try:
        while all(p.poll() is None for p in procs):
            time.sleep(1)
        console.print("[red]a server stopped; see the logs in[/] " + str(home / "logs"))
    except KeyboardInterrupt:
        pass
    finally:
        stop(procs)
        (home / UI_FILE).unlink(missing_ok=True)
