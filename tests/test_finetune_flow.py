"""The pipeline on the tiny preset through fine-tuning: the sample corpus's instruction set (its
planted bad records dropped and counted), MLflow curves and samples, the registered chat model,
caching, a QLoRA run on a base taken from the registry, and bad settings refused before work."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import pytest

from smolforge.artifacts import ArtifactStore
from smolforge.errors import ConfigError
from smolforge.flows.config import load_config
from smolforge.flows.finetune import finetune
from smolforge.flows.pipeline import pipeline
from smolforge.flows.results import PipelineResult

pytestmark = pytest.mark.slow
OVERRIDES = ["distill=null", "sweep=null", "merge=null", "evaluate=null", "promote=null"]


@pytest.fixture(scope="module")
def tuned(tiny_pipeline):
    return tiny_pipeline


def pretrained(result) -> PipelineResult:
    """The pipeline's pretraining result, as the finetune flow gets it from the pipeline."""
    return PipelineResult(pretrain=result.pretrain)


def test_lora_learns_the_instruction_set_and_drops_the_planted_records(tuned, sample_corpus):
    result = tuned.finetune
    metrics = result.metrics
    assert result.inputs.base == tuned.pretrain.model  # the pipeline's pretrained base by default
    assert metrics["val_loss"] < metrics["first_val_loss"] - 0.1
    assert metrics["trainable_params"] < 0.1 * metrics["total_params"]
    summary = json.loads((sample_corpus / "CORPUS.json").read_text())
    planted = [p["case"].removeprefix("instruct_") for p in summary["planted"] if p["case"].startswith("instruct_")]
    assert len(planted) == 9
    for reason in planted:
        assert metrics[f"dropped.{reason}"] >= 1, reason
    assert metrics["train_records"] > 500
    folder = result.model.path
    assert (folder / "adapter" / "adapter_model.safetensors").is_file()
    assert (folder / "model" / "model.safetensors").is_file() and (folder / "model" / "tokenizer.json").is_file()


def test_finetune_run_logs_curves_dropped_counts_and_sample_generations(tuned):
    client = mlflow.MlflowClient()
    run = client.get_run(tuned.finetune.mlflow_run_id)
    assert run.info.run_name == "finetune"
    assert run.data.tags["mlflow.parentRunId"] == tuned.mlflow_run_id
    assert {"loss", "val_loss", "lr", "grad_norm", "data.dropped.not_json", "data.dropped.too_long"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "loss")) == tuned.finetune.metrics["steps"]
    assert run.data.params["finetune.lora.r"] == "8" and run.data.params["finetune.method"] == "lora"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"samples.json", "data.json", "adapter"} <= artifacts
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="samples.json")).read_text())
    assert set(table["columns"]) == {"prompt", "reference", "completion"} and len(table["data"]) == 4


def test_the_registered_chat_model_loads_and_answers(tuned):
    from transformers import AutoModelForCausalLM

    from smolforge.tasks.curate.tokenizer import load_tokenizer

    version = mlflow.MlflowClient().get_model_version_by_alias("smolforge-chat", "candidate")
    assert version.tags["smolforge.base_key"] == tuned.pretrain.model.key
    assert version.tags["smolforge.artifact_key"] == tuned.finetune.model.key
    path = Path(mlflow.artifacts.download_artifacts("models:/smolforge-chat@candidate"))
    model = AutoModelForCausalLM.from_pretrained(path / "model")
    tokenizer = load_tokenizer(str(path / "components" / "tokenizer"))
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What does `json.dumps` do?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]


def test_rerun_is_cached(tuned, session_home):
    store = ArtifactStore(session_home / "artifacts")
    before = {p.name for p in store.root.glob("finetuned/*")}
    versions = len(mlflow.MlflowClient().search_model_versions("name='smolforge-chat'"))
    again = pipeline(load_config("tiny", overrides=OVERRIDES))
    assert again.finetune.model == tuned.finetune.model
    assert again.finetune.mlflow_run_id == tuned.finetune.mlflow_run_id  # no new training run
    assert {p.name for p in store.root.glob("finetuned/*")} == before
    assert len(mlflow.MlflowClient().search_model_versions("name='smolforge-chat'")) == versions


def test_qlora_on_a_base_from_the_registry(tuned, session_home):
    qlora = OVERRIDES + [
        "finetune.method=qlora", "finetune.base=models:/smolforge-base@candidate", "finetune.steps=6",
        "finetune.eval_every=3", "finetune.sample_prompts=1", "finetune.max_val_records=8",
        "finetune.register_as=smolforge-chat-qlora",
    ]
    result = finetune(load_config("tiny", overrides=qlora), None, tuned.mlflow_run_id)
    assert result.inputs.base.kind == "model-import"  # imported from the registry, keyed by its files
    assert result.metrics["steps"] == 6 and result.metrics["val_loss"] < result.metrics["first_val_loss"]
    run = mlflow.get_run(result.mlflow_run_id)
    assert run.data.params["finetune.qlora.quant_type"] == "nf4"
    assert mlflow.MlflowClient().get_model_version_by_alias("smolforge-chat-qlora", "candidate").tags[
        "smolforge.finetune_method"] == "qlora"
    # training read the base the quantisation step saved in 4-bit; the merged model is full precision
    quantized = result.inputs.quantized
    assert quantized.kind == "model-4bit" and quantized.manifest()["inputs"] == [{"kind": "model-import", "key": result.inputs.base.key}]
    tuned_ref = result.model
    assert {"kind": "model-4bit", "key": quantized.key} in tuned_ref.manifest()["inputs"]
    assert "quantization_config" not in json.loads((Path(tuned_ref.uri) / "model" / "config.json").read_text())
    # another qlora run on the same base (a different learning rate) trains again on the same 4-bit base
    store = ArtifactStore(session_home / "artifacts")
    before = sorted(p.name for p in store.root.glob("model-4bit/*"))
    again = finetune(load_config("tiny", overrides=qlora + ["finetune.lr=0.001", "finetune.steps=3"]), None, tuned.mlflow_run_id)
    assert again.model.key != result.model.key and again.inputs.quantized == result.inputs.quantized
    assert sorted(p.name for p in store.root.glob("model-4bit/*")) == before


@pytest.mark.parametrize(
    "override, message",
    [
        ("finetune.lora.target_modules=[q_proj, qkv]", r"\['qkv'\] are not linear modules .* \['down_proj', 'gate_proj'"),
        ("finetune.lora.r=100", r"finetune.lora.r=100 is larger than layer model.layers.0.self_attn.k_proj allows"),
        ("finetune.data=[instruct/nothing-here*.jsonl]", r"finetune.data: .*matches no file"),
        ("finetune.base=/no/such/folder", r"finetune.base='/no/such/folder': no such folder"),
    ],
)
def test_bad_settings_are_refused_before_any_training(tuned, session_home, override, message):
    store = ArtifactStore(session_home / "artifacts")
    before = {p.name for p in store.root.glob("finetuned/*")}
    with pytest.raises(ConfigError, match=message):
        finetune(load_config("tiny", overrides=OVERRIDES + [override]), pretrained(tuned))
    assert {p.name for p in store.root.glob("finetuned/*")} == before


def test_an_empty_data_file_is_named(tuned, tmp_path):
    empty = tmp_path / "chats.jsonl"
    empty.write_text("")
    with pytest.raises(ConfigError, match=rf"{empty}: the file is empty"):
        finetune(load_config("tiny", overrides=OVERRIDES + [f"finetune.data=[{empty}]"]), pretrained(tuned))
