"""Every test session gets its own project folder, set before Prefect is imported (it reads its
settings at import): Prefect's temporary server, MLflow's SQLite store and the artifacts live there,
never in the developer's own folders or servers."""

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

for var in (
    "PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH", "SMOLFORGE_ARTIFACTS_URL",
    "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK",
):
    os.environ.pop(var, None)
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["HF_HUB_OFFLINE"] = "1"

from smolforge.environment import configure  # noqa: E402

SESSION_HOME = configure(Path(tempfile.mkdtemp(prefix="smolforge-tests-")))


@pytest.fixture(scope="session")
def session_home() -> Path:
    return SESSION_HOME


@pytest.fixture(scope="session")
def sample_corpus(session_home) -> Path:
    """The scale-1 sample corpus, built once per session where the tiny preset looks for it."""
    from smolforge.tasks.curate.sample_corpus import build_sample_corpus

    dest = session_home / "sample-corpus-1"
    build_sample_corpus(dest, scale=1)
    return dest


@pytest.fixture(scope="session")
def tiny_pipeline(sample_corpus) -> dict:
    """The tiny preset's whole pipeline (curate, pretrain, distill, finetune), run once per session.
    The flow tests of every stage read this one result instead of each module running its own
    variant, which cost a further pipeline run even when every stage was cached (Prefect and MLflow
    bookkeeping, a hash check of every artifact). A stage first trained here is this run's child."""
    from smolforge.flows.config import load_config
    from smolforge.flows.pipeline import pipeline

    return pipeline(load_config("tiny"))


@pytest.fixture(scope="module")
def stack(tiny_pipeline, session_home, outside_env):
    """`smolforge up` on the session's project folder for one module's tests, stopped (and checked
    to be gone) after them: see tests/stack_fixtures.py. Not shared across modules: an idle stack's
    Prefect server would keep writing to the session's database under every later test."""
    from stack_fixtures import start_stack

    yield from start_stack(session_home, outside_env)


@pytest.fixture(scope="session")
def outside_env() -> dict[str, str]:
    """This process's environment without the session's Prefect, MLflow and project settings: for a
    command run the way a user runs it, which sets up its own project folder."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_", "SMOLFORGE_"))}
    env["COLUMNS"] = "200"  # rich tables as wide as they need, so their rows can be read back
    return env


def _remove_home() -> None:
    if os.environ.get("SMOLFORGE_KEEP_TEST_HOME") != "1":
        shutil.rmtree(SESSION_HOME, ignore_errors=True)


# Registered before Prefect starts its temporary server, so it runs after the server has stopped.
atexit.register(_remove_home)
