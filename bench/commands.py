"""Running `smolforge` the way a user does, for the benches that time whole commands."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def user_env(home: Path | None = None) -> dict[str, str]:
    """This environment without Prefect, MLflow and project settings, so every command sets up its
    own project folder (`home`, when given) as a new user's does."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SMOLFORGE_"))}
    if home is not None:
        env["SMOLFORGE_HOME"] = str(home)
    return env


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """(wall seconds, stdout) of one process; the bench stops with its output when it fails."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return seconds, done.stdout
