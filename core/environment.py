"""Where a project keeps its state, and the environment Prefect and MLflow read it from.

Everything lives in one project folder (default `./.smolforge`, or `$SMOLFORGE_HOME`): artifacts,
the sample corpus, Prefect's database and results, MLflow's SQLite store and artifacts. Pointing
`PREFECT_API_URL` or `MLFLOW_TRACKING_URI` at servers overrides the embedded defaults and changes
nothing else. Prefect reads its settings at import, so `configure()` runs before Prefect is imported.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_home() -> Path:
    return Path(os.environ.get("SMOLFORGE_HOME", ".smolforge")).resolve()


def mlflow_tracking_uri(home: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"


def _running_ui_server(home: Path) -> str | None:
    """The Prefect server `smolforge ui` started for this folder, if it is still answering."""
    import json
    import urllib.request

    try:
        url = json.loads((home / "ui.json").read_text(encoding="utf-8"))["prefect"]
        with urllib.request.urlopen(f"{url}/api/health", timeout=0.5) as response:
            return url if response.status == 200 else None
    except (OSError, ValueError, KeyError):
        return None


def configure(home: Path | None = None) -> Path:
    """Create the project folder and point Prefect and MLflow at it unless the user chose otherwise."""
    home = (home or project_home()).resolve()
    home.mkdir(parents=True, exist_ok=True)
    os.environ["SMOLFORGE_HOME"] = str(home)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    os.environ.setdefault("PREFECT_LOCAL_STORAGE_PATH", str(home / "prefect" / "results"))
    os.environ.setdefault("PREFECT_RESULTS_PERSIST_BY_DEFAULT", "true")
    # Telemetry and update checks would try the network, which a closed machine refuses noisily.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # The temporary server needs 10-15 s to start on a fresh database on 2 busy cores; Prefect's
    # default 20 s limit then fails runs for no reason of their own.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    os.environ.setdefault("MLFLOW_TRACKING_URI", mlflow_tracking_uri(home))
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    if "PREFECT_API_URL" not in os.environ:
        server = _running_ui_server(home)
        if server:
            os.environ["PREFECT_API_URL"] = f"{server}/api"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    return home
