"""The pipeline on the tiny preset through three-stage pretraining: learning, logging, registry,
caching per stage, and bad settings refused before any training."""

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest

from smolforge.artifacts import ArtifactStore
from smolforge.errors import ConfigError
from smolforge.flows.config import load_config
from smolforge.flows.pipeline import pipeline
from smolforge.tasks.curate.pack import open_split

pytestmark = pytest.mark.slow


# The stages after pretraining are off wherever a test retrains the base: they have their own tests.
PRETRAIN_ONLY = ["distill=null", "finetune=null", "merge=null", "evaluate=null", "promote=null"]


@pytest.fixture(scope="module")
def trained(tiny_pipeline):
    return tiny_pipeline


def unigram_entropy(corpus_json: Path) -> float:
    """Entropy (nats per token) of the corpus's training tokens: the loss of the best model that
    ignores context, which a trained language model must beat."""
    report = json.loads(corpus_json.read_text())
    counts: np.ndarray | None = None
    for meta in report["sources"].values():
        tokens, _ = open_split(Path(meta["uri"]), "train")
        c = np.bincount(np.asarray(tokens), minlength=1 << 16)
        counts = c if counts is None else counts + c
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def test_three_stages_learn_below_the_unigram_entropy(trained):
    stages = trained.pretrain.stages
    assert [s["stage"] for s in stages] == ["stable", "mix", "decay"]
    assert [s["steps"] for s in stages] == [150, 200, 240]  # one global step count across stages
    entropy = unigram_entropy(Path(trained.curate.corpus.uri) / "corpus.json")
    assert stages[-1]["val_loss"] < entropy - 0.3, (stages[-1]["val_loss"], entropy)
    assert stages[-1]["val_loss"] < stages[0]["val_loss"]


def test_stage_runs_log_curves_samples_and_the_model_is_a_candidate(trained):
    client = mlflow.MlflowClient()
    run = client.get_run(trained.pretrain.stages[0]["mlflow_run_id"])
    # under a `pretrain` run: this one's, or the one that first trained the (cached) stage
    assert client.get_run(run.data.tags["mlflow.parentRunId"]).info.run_name == "pretrain"
    assert {"loss", "val_loss", "lr", "grad_norm", "tokens_per_s", "mfu"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "loss")) >= 10
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples.json", "plan.json", "instability_events.json"} <= artifacts
    version = client.get_model_version_by_alias("smolforge-base", "candidate")
    assert version.tags["smolforge.corpus_key"] == trained.curate.corpus.key
    assert version.tags["smolforge.artifact_key"] == trained.pretrain.model.key


def test_registered_model_loads_as_a_plain_transformers_model(trained):
    from transformers import AutoModelForCausalLM

    path = mlflow.artifacts.download_artifacts("models:/smolforge-base@candidate")
    model = AutoModelForCausalLM.from_pretrained(Path(path) / "model")
    assert type(model).__name__ == "SmolLM3ForCausalLM"
    assert model.config.no_rope_layers == [1, 1, 1, 0]  # NoPE in every 4th layer


def test_rerun_is_cached_and_changing_stage_three_reruns_only_stage_three(trained, session_home):
    store = ArtifactStore(session_home / "artifacts")
    before = {p.name for p in store.root.glob("pretrained/*")}
    versions = len(mlflow.MlflowClient().search_model_versions("name='smolforge-base'"))
    again = pipeline(load_config("tiny"))
    assert again.pretrain.model == trained.pretrain.model
    assert {p.name for p in store.root.glob("pretrained/*")} == before
    assert len(mlflow.MlflowClient().search_model_versions("name='smolforge-base'")) == versions

    changed = pipeline(load_config("tiny", overrides=[*PRETRAIN_ONLY, "pretrain.stages.2.steps=30"]))
    after = {p.name for p in store.root.glob("pretrained/*")}
    assert len(after - before) == 1  # a new stage-3 artifact only
    assert changed.pretrain.stages[1]["mlflow_run_id"] == trained.pretrain.stages[1]["mlflow_run_id"]
    assert changed.pretrain.stages[2]["steps"] == 230


def test_budget_beyond_the_data_is_refused_before_training(trained, session_home):
    store = ArtifactStore(session_home / "artifacts")
    before = {p.name for p in store.root.glob("pretrained/*")}
    with pytest.raises(ConfigError, match=r"would read source '\w+' .* more than max_epochs"):
        pipeline(load_config("tiny", overrides=[*PRETRAIN_ONLY, "pretrain.stages.0.steps=5000"]))
    assert {p.name for p in store.root.glob("pretrained/*")} == before


SHORT = [
    "pretrain.stages.0.steps=12", "pretrain.stages.1.steps=4", "pretrain.stages.2.steps=4",
    "pretrain.eval_every=4", "pretrain.checkpoint.every_steps=4", "pretrain.schedule.warmup_steps=4",
]


@pytest.mark.parametrize(
    "variant, expected",
    [(["pretrain.optimizer.name=muon"], {"optimizer.name": "muon", "mtp.heads": "1"}),
     (["pretrain.mtp.heads=0"], {"optimizer.name": "adamw", "mtp.heads": "0"})],
)
def test_ablation_variants_run_from_config_and_log_comparable_runs(trained, variant, expected):
    result = pipeline(load_config("tiny", overrides=PRETRAIN_ONLY + SHORT + variant))
    client = mlflow.MlflowClient()
    last = client.get_run(result.pretrain.stages[-1]["mlflow_run_id"])
    assert {k: last.data.params[k] for k in expected} == expected
    assert {"loss", "val_loss", "lr", "grad_norm"} <= set(last.data.metrics)
    assert result.pretrain.stages[-1]["val_loss"] < result.pretrain.stages[0]["val_loss"] + 0.5
