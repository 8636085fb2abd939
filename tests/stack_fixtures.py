"""The team stack as tests use it: `smolforge up` on the session's project folder (where the tiny
pipeline already ran, so the flow runs the tests submit come from the cache), up for one module's
tests and stopped by `smolforge down` after them, which checks that every process `up` started is
gone. Helpers to run the command as a user does."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

SMOLFORGE = Path(sys.executable).parent / "smolforge"
FAST = {  # the scheduler and the workers look every few seconds instead of every minute / 10 s
    "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    "PREFECT_WORKER_QUERY_SECONDS": "2",
    "PREFECT_WORKER_PREFETCH_SECONDS": "5",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def user_env(outside_env: dict, home: Path) -> dict:
    return {**outside_env, **FAST, "SMOLFORGE_HOME": str(home), "PREFECT_LOGGING_LEVEL": "WARNING"}


def cli(env: dict, *args: str, check: bool = True, timeout: int = 900) -> subprocess.CompletedProcess:
    done = subprocess.run([str(SMOLFORGE), *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check:
        assert done.returncode == 0, f"smolforge {' '.join(args)}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def start_stack(session_home: Path, outside_env: dict):
    """Generator behind the session fixture `stack`: the stack's state, then `down` and its checks."""
    env = user_env(outside_env, session_home)
    started = time.monotonic()
    # the workers inherit `up`'s environment: at Prefect's INFO level their logs name the flow runs
    # they execute, which is how the tests tell which worker ran what
    up_env = {k: v for k, v in env.items() if k != "PREFECT_LOGGING_LEVEL"}
    up = cli(up_env, "up", "--prefect-port", str(free_port()), "--mlflow-port", str(free_port()))
    state = json.loads((session_home / "stack.json").read_text())
    try:
        yield {**state, "env": env, "up": up.stdout, "up_seconds": time.monotonic() - started}
    finally:
        down = cli(env, "down", check=False)
        for pid in state["pids"].values():  # whatever `down` could not stop
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert down.returncode == 0, down.stdout + down.stderr
    assert all(name in down.stdout for name in ("prefect-server", "mlflow-server", "worker-cpu", "worker-gpu")), down.stdout
    assert not (session_home / "stack.json").exists()
    again = cli(env, "down", check=False)
    assert again.returncode == 2 and "no stack runs" in again.stdout


def wait_for_runs(stack: dict, ids: list[str], timeout: float) -> list[str]:
    """The flow runs' state types once all are final (or `timeout` seconds have passed)."""
    deadline = time.monotonic() + timeout
    while True:
        states = []
        for run_id in ids:
            with urllib.request.urlopen(f"{stack['prefect']}/api/flow_runs/{run_id}", timeout=30) as response:
                states.append(json.loads(response.read())["state_type"])
        if all(s in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for s in states) or time.monotonic() > deadline:
            return states
        time.sleep(3)
