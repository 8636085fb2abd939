"""`smolforge up` / `smolforge down`: the team stack on one machine.

`up` starts a Prefect server, an MLflow tracking server and one worker per pool on 127.0.0.1, then
deploys every flow; `down` stops exactly the processes `up` started (by the PIDs it recorded). The
stack's addresses live in `stack.json` in the project folder while it runs: `smolforge run`,
`submit` and `ui` read it (through `environment.configure`) and use its servers.

With `--database-url postgresql://user@host:port` each service gets its own database on that server
(created when missing): Prefect through asyncpg, MLflow through psycopg, and the sweeps' Optuna
studies. Without it, SQLite files in the project folder: the same ones the embedded default
writes, so runs made before `up` are in the UIs.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from smolforge.deployments.catalog import CPU_POOL, GPU_POOL
from smolforge.environment import OPTUNA_STORAGE_VAR, STACK_FILE, mlflow_tracking_uri
from smolforge.errors import ConfigError
from smolforge.processes import HOST, console_script, healthy, stop

DATABASES = ("prefect", "mlflow", "optuna")  # one database per service, named smolforge_<service>


class StackError(ConfigError):
    """The stack cannot start (a port taken, a database that does not answer) or is not running."""


@dataclass
class Stack:
    prefect: str
    mlflow: str
    database: str | None = None  # the Postgres server, credentials hidden
    pids: dict[str, int] = field(default_factory=dict)
    optuna: str | None = None  # the sweeps' study storage when the stack runs on Postgres
    seconds_to_healthy: float = 0.0


def database_urls(url: str) -> dict[str, str]:
    """`postgresql://user@host:port` -> one SQLAlchemy URL per service, each its own database."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise StackError(f"--database-url {_public(url)}: expected postgresql://user[:password]@host[:port]")
    drivers = {"prefect": "postgresql+asyncpg", "mlflow": "postgresql+psycopg", "optuna": "postgresql+psycopg"}
    return {
        name: urlunsplit((drivers[name], parts.netloc, f"/smolforge_{name}", "", "")) for name in DATABASES
    }


def _public(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        return urlunsplit(parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@")))
    return url


def create_databases(url: str) -> list[str]:
    """Connect to the server (a clear error if it does not answer) and create the services'
    databases that are missing; returns the ones created."""
    import psycopg

    parts = urlsplit(url)
    admin = urlunsplit(("postgresql", parts.netloc, "/postgres", "", ""))
    try:
        conn = psycopg.connect(admin, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        raise StackError(f"cannot connect to the database server {_public(url)}: {str(exc).strip()}") from None
    created = []
    with conn:
        for name in DATABASES:
            db = f"smolforge_{name}"
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{db}"')
                created.append(db)
    return created


def _port_user(port: int) -> str:
    """Which process listens on `port`, for the error message."""
    import psutil

    try:
        for conn in psutil.net_connections(kind="tcp"):
            if conn.laddr and conn.laddr.port == port and conn.status == psutil.CONN_LISTEN and conn.pid:
                proc = psutil.Process(conn.pid)
                return f"{proc.name()} (pid {conn.pid}: {' '.join(proc.cmdline()[:4])})"
    except (psutil.Error, OSError):
        pass
    return "another process"


def check_port(port: int, what: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            raise StackError(
                f"port {port} on {HOST} (for the {what}) is taken by {_port_user(port)}: stop it, or pass another port"
            ) from None


def _start(cmd: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def up(home: Path, prefect_port: int = 4200, mlflow_port: int = 5000, database_url: str | None = None,
       timeout: float = 120, report=print) -> Stack:
    """Start the servers, wait until they answer, deploy, start the workers; on any failure stop
    everything started so far and raise."""
    state = home / STACK_FILE
    if state.exists() and running(home) is not None:
        raise StackError(f"a stack already runs for {home} (see {state}); `smolforge down` stops it")
    check_port(prefect_port, "Prefect server")
    check_port(mlflow_port, "MLflow server")
    urls = database_urls(database_url) if database_url else None
    if database_url:
        created = create_databases(database_url)
        report(f"database server {_public(database_url)}: " + (f"created {', '.join(created)}" if created else "databases exist"))
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")  # seven idle job workers, ~240 MB each
    prefect_env = dict(env)
    if urls:
        prefect_env["PREFECT_API_DATABASE_CONNECTION_URL"] = urls["prefect"]
    stack = Stack(
        prefect=f"http://{HOST}:{prefect_port}", mlflow=f"http://{HOST}:{mlflow_port}",
        database=_public(database_url) if database_url else None, optuna=urls["optuna"] if urls else None,
    )
    procs: dict[str, subprocess.Popen] = {}
    started = time.monotonic()
    try:
        procs["prefect-server"] = _start(
            [console_script("prefect"), "server", "start", "--host", HOST, "--port", str(prefect_port)], logs / "prefect-server.log", prefect_env
        )
        procs["mlflow-server"] = _start(
            [console_script("mlflow"), "server", "--backend-store-uri", urls["mlflow"] if urls else mlflow_tracking_uri(home),
             "--artifacts-destination", str(home / "mlartifacts"), "--host", HOST, "--port", str(mlflow_port), "--workers", "1"],
            logs / "mlflow-server.log", env,
        )
        _wait({"prefect-server": f"{stack.prefect}/api/health", "mlflow-server": f"{stack.mlflow}/health"}, procs, timeout, logs)
        stack.seconds_to_healthy = round(time.monotonic() - started, 1)
        report(f"servers healthy after {stack.seconds_to_healthy} s: Prefect {stack.prefect}, MLflow {stack.mlflow}")
        stack.pids = {name: p.pid for name, p in procs.items()}
        _write(home, stack)  # from here on `down` can stop what runs, whatever happens next
        worker_env = {**env, "PREFECT_API_URL": f"{stack.prefect}/api", "MLFLOW_TRACKING_URI": stack.mlflow}
        if stack.optuna:
            worker_env[OPTUNA_STORAGE_VAR] = stack.optuna
        deployed = subprocess.run([console_script("smolforge"), "deploy"], env=worker_env, capture_output=True, text=True, check=False)
        if deployed.returncode != 0:
            raise StackError(f"deploying failed: {(deployed.stderr or deployed.stdout).strip()[-800:]}")
        report(deployed.stdout.strip())
        for pool in (CPU_POOL, GPU_POOL):
            procs[f"worker-{pool}"] = _start([console_script("smolforge"), "worker", "--pool", pool], logs / f"worker-{pool}.log", worker_env)
        stack.pids = {name: p.pid for name, p in procs.items()}
        _write(home, stack)
    except BaseException:
        stop(list(procs.values()))
        (home / STACK_FILE).unlink(missing_ok=True)
        raise
    return stack


def _wait(checks: dict[str, str], procs: dict[str, subprocess.Popen], timeout: float, logs: Path) -> None:
    pending = set(checks)
    deadline = time.monotonic() + timeout
    while pending:
        for name in list(pending):
            if procs[name].poll() is not None:
                raise StackError(f"the {name} exited with code {procs[name].returncode}; see {logs / (name + '.log')}")
            if healthy(checks[name]):
                pending.discard(name)
        if pending and time.monotonic() > deadline:
            raise StackError(f"{', '.join(sorted(pending))} did not answer within {timeout:.0f} s; see {logs}")
        time.sleep(0.25)


def _write(home: Path, stack: Stack) -> None:
    tmp = home / f".{STACK_FILE}.tmp"
    tmp.write_text(json.dumps(stack.__dict__, indent=2), encoding="utf-8")
    os.replace(tmp, home / STACK_FILE)


def running(home: Path) -> Stack | None:
    """The stack recorded for this folder, or None when there is none."""
    try:
        return Stack(**json.loads((home / STACK_FILE).read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def down(home: Path) -> list[str]:
    """Stop every process `up` recorded, then forget the stack; returns what was stopped."""
    stack = running(home)
    if stack is None:
        raise StackError(f"no stack runs for {home} (no {STACK_FILE}); `smolforge up` starts one")
    stopped = []
    for name, pid in stack.pids.items():
        try:
            os.killpg(pid, 15)
            stopped.append(f"{name} (pid {pid})")
        except ProcessLookupError:
            stopped.append(f"{name} (pid {pid}, already gone)")
    deadline = time.monotonic() + 20
    for pid in stack.pids.values():
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.2)
        if _alive(pid):
            os.killpg(pid, 9)
    (home / STACK_FILE).unlink(missing_ok=True)
    return stopped


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a child of this process that exited stays a zombie until reaped
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True
