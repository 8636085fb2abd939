"""Adapters kept apart from the base, through the finetune flow on the tiny pipeline's pretrained
base: prefix tuning registered as base + adapter (the logged model holds the base's weights, loads
offline in a fresh process, evaluates with its adapter on), and `finetune.adapters` training two
named adapters on one base, registered as one model whose served form and `smolforge generate
--adapter` answer with the adapter asked for, on one base loaded once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import mlflow
import pytest
import transformers

from smolforge.artifacts import ArtifactStore
from smolforge.flows.config import load_config
from smolforge.flows.finetune import finetune
from smolforge.flows.results import PipelineResult
from smolforge.model_source import ModelSourceError
from smolforge.tasks.evaluate.prefect_tasks import load_subject
from smolforge.tasks.serve.adapters import BASE_PLUS_ADAPTER, SERVING_TAG
from smolforge.tasks.serve.generate import Sampling, generate_from

pytestmark = pytest.mark.slow
OVERRIDES = ["distill=null", "sweep=null", "merge=null", "evaluate=null", "promote=null", "finetune.steps=6",
             "finetune.eval_every=3", "finetune.sample_prompts=1", "finetune.max_val_records=8", "finetune.heldout_records=0"]
ANSWERS = {"red": "The mill is red, red, red.", "blue": "The sky is blue, blue, blue."}
QUESTIONS = ["What colour is it?", "Tell me the colour.", "Which colour?", "Say a colour.", "Name the colour.", "Colour?"]


def upstream(tiny_pipeline) -> PipelineResult:
    return PipelineResult(pretrain=tiny_pipeline.pretrain)


@pytest.fixture(scope="module")
def prefix(tiny_pipeline):
    overrides = OVERRIDES + ["finetune.method=prefix", "finetune.prefix.num_virtual_tokens=8", "finetune.lr=0.05",
                             "finetune.register_as=smolforge-chat-prefix"]
    return finetune(load_config("tiny", overrides=overrides), upstream(tiny_pipeline), tiny_pipeline.mlflow_run_id)


@pytest.fixture(scope="module")
def two_adapters(tiny_pipeline, tmp_path_factory):
    folder = tmp_path_factory.mktemp("adapter-data")
    for name, answer in ANSWERS.items():
        lines = [json.dumps({"instruction": q, "output": answer}) for q in QUESTIONS] * 4
        (folder / f"{name}.jsonl").write_text("\n".join(lines) + "\n")
    adapters = "[" + ", ".join(f"{{name: {n}, data: [{folder / n}.jsonl]}}" for n in ANSWERS) + "]"
    overrides = OVERRIDES + [f"finetune.adapters={adapters}", "finetune.lr=0.02", "finetune.steps=16",
                             "finetune.register_as=smolforge-chat-adapters"]
    config = load_config("tiny", overrides=overrides)
    return config, finetune(config, upstream(tiny_pipeline), tiny_pipeline.mlflow_run_id)


def test_prefix_tuning_is_registered_as_base_plus_adapter_holding_the_base(prefix):
    assert prefix.metrics["merged"] == 0 and prefix.metrics["val_loss"] < prefix.metrics["first_val_loss"]
    version = mlflow.MlflowClient().get_model_version(prefix.registered.name, prefix.registered.version)
    assert version.tags[SERVING_TAG] == BASE_PLUS_ADAPTER and version.tags["smolforge.adapters"] == "default"
    assert version.tags["smolforge.finetune_method"] == "prefix"
    logged = Path(mlflow.artifacts.download_artifacts(prefix.registered.uri))
    assert (logged / "artifacts" / "model" / "model.safetensors").is_file()  # the base's weights themselves
    assert (logged / "artifacts" / "model" / "adapters" / "default" / "adapter_model.safetensors").is_file()
    assert "huggingface" not in (logged / "MLmodel").read_text()
    # the evaluation stage loads it with the adapter on
    subject = load_subject(prefix.model, "cpu")
    assert set(subject.model.peft_config) == {"default"}


def test_a_base_plus_adapter_model_loads_offline_in_a_fresh_process(prefix):
    code = (
        "import sys, mlflow; m = mlflow.pyfunc.load_model(sys.argv[1]); "
        "print(repr(m.predict(['What does json.dumps do?'], params={'max_new_tokens': 6})[0]))"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", code, prefix.registered.uri], env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().startswith("'")


def test_two_adapters_answer_differently_on_one_base_loaded_once(two_adapters, monkeypatch):
    _, result = two_adapters
    assert set(result.adapters) == {"red", "blue"}
    assert result.adapters["red"].key != result.adapters["blue"].key  # each adapter on its own key
    version = mlflow.MlflowClient().get_model_version(result.registered.name, result.registered.version)
    assert version.tags[SERVING_TAG] == BASE_PLUS_ADAPTER and version.tags["smolforge.adapters"] == "blue,red"

    loads = []
    real = transformers.AutoModelForCausalLM.from_pretrained.__func__

    def counted(cls, *args, **kwargs):
        loads.append(args[0])
        return real(cls, *args, **kwargs)

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", classmethod(counted))
    served = mlflow.pyfunc.load_model(result.registered.uri)
    answers = {n: served.predict(["What colour is it?"], params={"adapter": n, "max_new_tokens": 10})[0] for n in ANSWERS}
    again = served.predict(["What colour is it?"], params={"adapter": "red", "max_new_tokens": 10})[0]
    assert len(loads) == 1  # the base, once, for both adapters
    assert answers["red"] != answers["blue"] and again == answers["red"]
    assert "red" in answers["red"] and "blue" in answers["blue"], answers
    with pytest.raises(Exception, match=r"adapter 'green': this model has adapters \['blue', 'red'\]"):
        served.predict(["x"], params={"adapter": "green"})

    # `smolforge generate --adapter` gives the served model's answers
    store = ArtifactStore(Path(result.model.path).parent.parent)
    for name, expected in answers.items():
        said = generate_from(result.registered.uri, "What colour is it?", store, Sampling(max_new_tokens=10), adapter=name)
        assert said == expected
    with pytest.raises(ModelSourceError, match=r"adapter 'green': .* has adapters \['blue', 'red'\]"):
        generate_from(result.registered.uri, "x", store, Sampling(max_new_tokens=2), adapter="green")



def test_the_same_adapters_again_train_nothing_and_register_nothing(two_adapters, tiny_pipeline):
    config, result = two_adapters
    again = finetune(config, upstream(tiny_pipeline), tiny_pipeline.mlflow_run_id)
    assert again.cached and again.adapters == result.adapters and again.registered == result.registered
