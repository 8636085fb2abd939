"""`smolforge lineage` on the tiny pipeline's registered models: the chain from a version back to
the corpus, the same chain in the version's run, and references that name nothing refused."""

from __future__ import annotations

import os
import subprocess
import sys

import mlflow
import pytest

from smolforge import tracking
from smolforge.artifacts import ArtifactStore
from smolforge.errors import ConfigError
from smolforge.tasks.registry.lineage import lineage

pytestmark = pytest.mark.slow


def kinds_below(node: dict) -> list[str]:
    """The kinds met walking down a lineage, depth first."""
    found = [node.get("kind")]
    for item in node.get("inputs", []):
        found += kinds_below(item)
    return found


def smolforge(home, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "SMOLFORGE_HOME": str(home), "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "smolforge.cli", *args], capture_output=True, text=True, env=env, timeout=120)


def test_a_merged_version_leads_back_through_its_ingredients_and_base_to_the_corpus(tiny_pipeline, session_home):
    store = ArtifactStore(session_home / "artifacts")
    version = tiny_pipeline.merge.registered.version  # `candidate` may have moved on: later tests register more
    chain = lineage(f"models:/smolforge-merged/{version}", store)
    merged = tiny_pipeline.merge.model
    assert chain["registered"] == f"models:/smolforge-merged/{version}"
    assert chain["tags"]["smolforge.artifact_key"] == merged.key
    node = chain["artifact"]
    assert (node["kind"], node["key"]) == (merged.kind, merged.key)
    kinds = kinds_below(node)
    assert kinds.count("finetuned") >= 2 and "pretrained" in kinds and "corpus" in kinds
    corpus = next(n for n in _walk(node) if n.get("kind") == "corpus")
    assert corpus["key"] == tiny_pipeline.curate.corpus.key
    assert corpus["corpus"]["funnel"][0]["step"] == "extract" and corpus["corpus"]["sources"]
    assert any(item.get("shown") == "above" for n in _walk(node) for item in n.get("inputs", []))  # the shared base, once
    pretrained = next(n for n in _walk(node) if n.get("kind") == "pretrained")
    assert pretrained["run"]["stage"].startswith("pretrain") and pretrained["run"]["prefect_flow_run"]


def _walk(node: dict):
    yield node
    for item in node.get("inputs", []):
        yield from _walk(item)


def test_registration_logs_the_chain_in_the_versions_run(tiny_pipeline, session_home):
    registered = tiny_pipeline.finetune.registered
    version = tracking.client().get_model_version(registered.name, registered.version)
    logged = mlflow.artifacts.load_dict(f"runs:/{version.run_id}/lineage.json")
    assert logged["registered"] == f"models:/{registered.name}/{registered.version}"
    assert logged["artifact"]["key"] == tiny_pipeline.finetune.model.key
    assert "corpus" in kinds_below(logged["artifact"])


def test_the_command_prints_the_tree_and_refuses_what_names_nothing(tiny_pipeline, session_home):
    done = smolforge(session_home, "lineage", f"models:/smolforge-chat/{tiny_pipeline.finetune.registered.version}")
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"finetuned:{tiny_pipeline.finetune.model.key}" in done.stdout
    assert f"corpus:{tiny_pipeline.curate.corpus.key}" in done.stdout and "curation (documents in->out): extract" in done.stdout
    done = smolforge(session_home, "lineage", "models:/smolforge-chat@nosuch")
    assert done.returncode == 2 and "smolforge-chat has no alias 'nosuch'; its aliases: @candidate" in done.stdout, done.stdout


@pytest.mark.parametrize(
    "spec, message",
    [
        ("models:/smolforge-nope@candidate", "no registered model 'smolforge-nope'; registered: .*smolforge-base"),
        ("models:/smolforge-chat/99", r"smolforge-chat has no version '99'; its versions: \[1"),
        ("0123456789abcdef", "names no registry version"),
        ("/no/such/folder", "names no registry version"),
    ],
)
def test_references_that_name_nothing_are_refused_with_what_exists(tiny_pipeline, session_home, spec, message):
    with pytest.raises(ConfigError, match=message):
        lineage(spec, ArtifactStore(session_home / "artifacts"))


def test_an_artifact_key_alone_gives_its_chain(tiny_pipeline, session_home):
    chain = lineage(f"corpus:{tiny_pipeline.curate.corpus.key}", ArtifactStore(session_home / "artifacts"))
    assert chain["kind"] == "corpus" and chain["corpus"]["tokens"] > 0
