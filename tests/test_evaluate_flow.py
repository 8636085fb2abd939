"""The evaluate stage on the tiny pipeline's models (the session's `tiny_pipeline` evaluates them
once): the comparison, perplexity that knows seen from unseen text, a cloze the pretrained base
solves and a random model does not, MLflow runs and registry tags, caching, and bad input refused."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import mlflow
import pytest

from smolforge.artifacts import ArtifactStore
from smolforge.errors import ConfigError
from smolforge.flows.config import load_config
from smolforge.flows.evaluate import evaluate
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.evaluate.data import held_out_texts
from smolforge.tasks.evaluate.harness import lm_eval
from smolforge.tasks.evaluate.perplexity import score_texts
from smolforge.tasks.evaluate.registry import Subject

pytestmark = pytest.mark.slow


def binomial_p_at_least(successes: int, trials: int, p: float) -> float:
    """One-sided exact binomial test: P(X >= successes) for X ~ Binomial(trials, p)."""
    return sum(math.comb(trials, k) * p**k * (1 - p) ** (trials - k) for k in range(successes, trials + 1))


def test_every_model_of_the_run_is_compared_on_the_same_data(tiny_pipeline):
    result = tiny_pipeline.evaluate
    assert [r["model"] for r in result.rows] == ["pretrain", "distill", "finetune", "merge"]
    assert result.inputs.models["merge"] == tiny_pipeline.merge.merges[tiny_pipeline.merge.chosen]
    assert result.inputs.models["finetune"] == tiny_pipeline.finetune.model
    for label, ref in result.evaluations.items():
        model = result.inputs.models[label]
        assert ref.manifest()["inputs"] == [{"kind": model.kind, "key": model.key}, {"kind": "eval-data", "key": result.data.key}]
    assert "share tokenizer A" in result.note  # one corpus tokenizer: perplexities compare
    for row in result.rows:
        assert 0 < row["bits_per_byte"] < 8 and row["perplexity"] > 1
        assert 0 <= row["chrf"] <= 100 and 0 <= row["cloze_acc"] <= 1 and row["chat_loss"] > 0
    by_model = {r["model"]: r for r in result.rows}
    assert by_model["finetune"]["chat_loss"] < by_model["pretrain"]["chat_loss"]  # fine-tuning learned the answers
    samples = json.loads((result.evaluations["finetune"].path / "samples.json").read_text())
    assert len(samples) == 4 and {"prompt", "reference", "answer"} <= set(samples[0])


def test_a_model_scores_lower_perplexity_on_text_it_was_trained_on(tiny_pipeline):
    """The small sources that pretraining read two to four times (pdfs, crawl, web): their training
    documents against their held-out ones, through the stage's own scoring."""
    from transformers import AutoModelForCausalLM

    corpus = tiny_pipeline.curate.corpus.path
    seen, _ = held_out_texts(corpus, "train")
    unseen, _ = held_out_texts(corpus, "val")
    folder = tiny_pipeline.pretrain.model.path / "model"
    model, tokenizer = AutoModelForCausalLM.from_pretrained(folder).eval(), load_tokenizer(str(folder))
    sources = ("pdfs", "crawl", "web")
    train = score_texts(model, tokenizer, [t for s in sources for t in seen[s]], 256, 8)
    held_out = score_texts(model, tokenizer, [t for s in sources for t in unseen[s]], 256, 8)
    assert train["loss"] < held_out["loss"] and train["perplexity"] < held_out["perplexity"]


def test_the_pretrained_base_beats_chance_on_the_cloze_and_a_random_model_does_not(tiny_pipeline):
    from transformers import AutoConfig

    from smolforge.models.architecture import build_model

    result = tiny_pipeline.evaluate
    items = int(json.loads((result.evaluations["pretrain"].path / "metrics.json").read_text())["cloze_items"])
    assert items >= 100
    base = next(r for r in result.rows if r["model"] == "pretrain")
    assert binomial_p_at_least(round(base["cloze_acc"] * items), items, 0.25) < 0.01
    folder = tiny_pipeline.pretrain.model.path / "model"
    random_model = build_model(AutoConfig.from_pretrained(folder), seed=1).eval()
    subject = Subject("random", random_model, load_tokenizer(str(folder)), folder, "cpu")
    scores = lm_eval(subject, result.data.path, load_config("tiny").evaluate).metrics
    assert scores["cloze_items"] == items
    assert binomial_p_at_least(round(scores["cloze_acc"] * items), items, 0.25) >= 0.01


def test_mlflow_holds_the_comparison_and_the_registry_versions_carry_the_metrics(tiny_pipeline):
    result = tiny_pipeline.evaluate
    client = mlflow.MlflowClient()
    run = client.get_run(result.mlflow_run_id)
    assert run.info.run_name == "evaluate" and run.data.tags["mlflow.parentRunId"] == tiny_pipeline.mlflow_run_id
    assert {a.path for a in client.list_artifacts(run.info.run_id)} >= {"comparison.json", "comparison.png"}
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="comparison.json")).read_text())
    assert {"model", "tokenizer", "bits_per_byte", "cloze_acc"} <= set(table["columns"]) and len(table["data"]) == 4
    model_run = client.get_run(run.data.tags["smolforge.eval_run.finetune"])
    assert model_run.info.run_name == "evaluate-model" and "chrf" in model_run.data.metrics
    assert {"samples.json", "tables"} <= {a.path for a in client.list_artifacts(model_run.info.run_id)}
    version = client.get_model_version_by_alias("smolforge-chat", "candidate")
    finetuned = next(r for r in result.rows if r["model"] == "finetune")
    assert float(version.tags["eval.bits_per_byte"]) == pytest.approx(finetuned["bits_per_byte"], rel=1e-3)
    assert version.tags["eval.run_id"] == result.mlflow_run_id


def test_rerunning_with_nothing_changed_runs_nothing(tiny_pipeline, session_home):
    store = ArtifactStore(session_home / "artifacts")
    before = sorted(p.name for kind in ("evaluation", "eval-data", "eval-report") for p in store.root.glob(f"{kind}/*"))
    again = evaluate(load_config("tiny"), tiny_pipeline, tiny_pipeline.mlflow_run_id)
    assert again.cached and again.report == tiny_pipeline.evaluate.report
    assert again.mlflow_run_id == tiny_pipeline.evaluate.mlflow_run_id
    assert sorted(p.name for kind in ("evaluation", "eval-data", "eval-report") for p in store.root.glob(f"{kind}/*")) == before


def _no_new_evaluations(session_home: Path):
    store = ArtifactStore(session_home / "artifacts")
    return sorted(p.name for p in store.root.glob("evaluation/*"))


def test_a_broken_task_yaml_is_named_before_any_work(tiny_pipeline, session_home, tmp_path):
    (tmp_path / "mine.yaml").write_text("task: mine\ndataset_path: json\n  doc_to_text: x\nmetric_list: []\n")
    before = _no_new_evaluations(session_home)
    with pytest.raises(ConfigError, match=rf"{tmp_path / 'mine.yaml'}:3: the lm-eval task YAML does not parse"):
        evaluate(load_config("tiny", overrides=[f"evaluate.lm_eval.include_path=[{tmp_path}]"]), tiny_pipeline)
    assert _no_new_evaluations(session_home) == before


def test_a_model_that_cannot_be_loaded_is_named_and_leaves_no_artifact(tiny_pipeline, session_home, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_pipeline.pretrain.model.path / "model", broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    before = _no_new_evaluations(session_home)
    config = load_config("tiny", overrides=["evaluate.pipeline_models=[]", f"evaluate.models=[{broken}]", "evaluate.tasks=[perplexity]"])
    with pytest.raises(ConfigError, match=r"model model-import:\w+ .* cannot be loaded"):
        evaluate(config, tiny_pipeline)
    assert _no_new_evaluations(session_home) == before
    assert not list((session_home / "artifacts" / "evaluation").glob(".tmp-*"))


def test_a_chat_evaluation_needs_a_chat_template(tiny_pipeline, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_pipeline.pretrain.model.path / "model", plain)
    (plain / "chat_template.jinja").unlink(missing_ok=True)
    settings = json.loads((plain / "tokenizer_config.json").read_text())
    settings.pop("chat_template", None)
    (plain / "tokenizer_config.json").write_text(json.dumps(settings))
    config = load_config("tiny", overrides=["evaluate.pipeline_models=[]", f"evaluate.models=[{plain}]", "evaluate.tasks=[chat]"])
    with pytest.raises(ConfigError, match=r"chat evaluation of model-import:\w+: its tokenizer .* has no chat template"):
        evaluate(config, tiny_pipeline)


@pytest.mark.parametrize(
    "override, message",
    [
        ("evaluate.tasks=[perplexity, hellaswagg]", r"evaluate.tasks: got .*no evaluation task \['hellaswagg'\]; available: perplexity"),
        ("evaluate.lm_eval.context_words=100000", r"the held-out passages give only 0 cloze items \(need at least 100\)"),
    ],
)
def test_bad_settings_and_an_empty_evaluation_set_are_refused(tiny_pipeline, session_home, override, message):
    before = _no_new_evaluations(session_home)
    with pytest.raises(ConfigError, match=message):
        evaluate(load_config("tiny", overrides=[override]), tiny_pipeline)
    assert _no_new_evaluations(session_home) == before
