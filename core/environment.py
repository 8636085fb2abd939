"""Where a project keeps its state, and the environment Prefect and MLflow read it from.

Everything lives in one project folder (default `./.smolforge`, or `$SMOLFORGE_HOME`): artifacts,
the sample corpus, Prefect's database and results, MLflow's SQLite store and artifacts. Pointing
`PREFECT_API_URL` or `MLFLOW_TRACKING_URI` at servers overrides the embedded defaults and changes
nothing else; while `smolforge up` runs a stack for the folder, its servers are the default, and
`SMOLFORGE_ARTIFACTS_URL` moves the artifacts (and MLflow's and Prefect's results with them) to
storage every worker sees. Prefect reads its settings at import, so `configure()` runs before
Prefect is imported.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def project_home() -> Path:
    return Path(os.environ.get("SMOLFORGE_HOME", ".smolforge")).resolve()


OPTUNA_STORAGE_VAR = "SMOLFORGE_OPTUNA_STORAGE"  # the sweeps' default study storage (a database URL)


def artifacts_location(home: Path) -> str:
    """Where artifacts are kept: `$SMOLFORGE_ARTIFACTS_URL` (an fsspec URL every worker reaches,
    `s3://bucket/prefix`), or the project folder's `artifacts`."""
    return os.environ.get("SMOLFORGE_ARTIFACTS_URL") or str(home / "artifacts")


def is_remote(location: str) -> bool:
    """Whether a store location is a URL of another filesystem than this machine's."""
    return "://" in location and not location.startswith("file://")


def results_block_name(url: str) -> str:
    """The Prefect block holding task results beside the remote store `url`: one per URL, so
    projects with different buckets can share a Prefect server."""
    return f"smolforge-results-{hashlib.blake2b(url.rstrip('/').encode(), digest_size=6).hexdigest()}"


def mlflow_tracking_uri(home: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"


STACK_FILE = "stack.json"  # the servers `smolforge up` started for this folder, while they run
UI_FILE = "ui.json"  # the viewers `smolforge ui` started (a Prefect server over the embedded database)


def running_servers(home: Path) -> dict[str, str] | None:
    """The servers `smolforge up` (else `smolforge ui`) started for this folder, if the Prefect
    server still answers: its URLs by service (`prefect`, and for the stack `mlflow`, `optuna`)."""
    import json
    import urllib.request

    for name in (STACK_FILE, UI_FILE):
        try:
            servers = json.loads((home / name).read_text(encoding="utf-8"))
            with urllib.request.urlopen(f"{servers['prefect']}/api/health", timeout=0.5) as response:
                if response.status == 200:
                    return {k: v for k, v in servers.items() if k in ("prefect", "mlflow", "optuna") and v}
        except (OSError, ValueError, KeyError):
            continue
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
    servers = running_servers(home) if "PREFECT_API_URL" not in os.environ else None
    if servers:
        os.environ["PREFECT_API_URL"] = f"{servers['prefect']}/api"
        if "mlflow" in servers:
            os.environ.setdefault("MLFLOW_TRACKING_URI", servers["mlflow"])
        if "optuna" in servers:
            os.environ.setdefault(OPTUNA_STORAGE_VAR, servers["optuna"])
    os.environ.setdefault("MLFLOW_TRACKING_URI", mlflow_tracking_uri(home))
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    store = artifacts_location(home)
    if is_remote(store):
        # Prefect's results follow the artifacts (a step cached on one worker is cached on all);
        # `steps.save_result_storage` saves the block before the first flow run
        os.environ.setdefault("PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK", f"remote-file-system/{results_block_name(store)}")
    # MLflow's S3 client reads its own variable for the endpoint (MinIO, a test server), not boto's.
    if os.environ.get("AWS_ENDPOINT_URL"):
        os.environ.setdefault("MLFLOW_S3_ENDPOINT_URL", os.environ["AWS_ENDPOINT_URL"])
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "true")
    return home
