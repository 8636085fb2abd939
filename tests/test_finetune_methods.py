"""Prefix tuning, prompt tuning and (IA)³ on a tiny random SmolLM3 through the stage's own loop:
each learns, saves the artifact every method saves and loads back to the loss it was saved at;
settings they cannot take are refused before training; an out-of-memory error in a step halves
the micro-batch and the run ends as the uninterrupted one does."""

from __future__ import annotations

import json

import pytest
import test_finetune
import torch
from pydantic import ValidationError

from smolforge.errors import ConfigError
from smolforge.model_source import ADAPTERS, DEFAULT_ADAPTER, load_causal_lm
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.finetune import adapters
from smolforge.tasks.finetune.config import FinetuneConfig
from smolforge.tasks.finetune.data import load_data
from smolforge.tasks.finetune.train import OutOfMemory, finetune_model, validation_loss

base, data_file = test_finetune.base, test_finetune.data_file  # the same tiny model and records, as fixtures
COMMON = {"steps": 6, "eval_every": 3, "batch_size": 4, "max_seq_len": 128, "lr": 3e-2, "sample_prompts": 1,
          "max_new_tokens": 4, "warmup_steps": 0, "patience": None}


@pytest.mark.parametrize(
    "method, settings",
    [("prefix", {"prefix": {"num_virtual_tokens": 4}, "lr": 0.3}),  # soft prompts want large steps (Lester et al.: 0.3)
     ("prompt", {"prompt": {"num_virtual_tokens": 6, "init_text": "Answer about the mill."}, "lr": 0.3}),
     ("ia3", {"lr": 0.1})],
)
def test_each_method_learns_and_saves_what_serving_loads(base, data_file, tmp_path, method, settings):
    config = FinetuneConfig(method=method, **{**COMMON, **settings})
    result = finetune_model(config, base, [data_file], tmp_path / "out")
    assert result["val_loss"] < result["first_val_loss"] - 0.02
    assert 0 < result["trainable_params"] < result["total_params"] / 20
    assert result["step_seconds"] > 0
    out = tmp_path / "out"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["peft_type"] == {
        "prefix": "PREFIX_TUNING", "prompt": "PROMPT_TUNING", "ia3": "IA3"}[method]
    tokenizer = load_tokenizer(str(out / "model"))
    val = load_data([data_file], tokenizer, **config.split_settings()).val
    loaded = load_causal_lm(out / "model")
    if method == "ia3":  # merged into the weights: a plain model, no adapter left beside it
        assert result["merged"] == 1 and not (out / "model" / ADAPTERS).exists()
        assert not hasattr(loaded, "peft_config")
    else:  # the base's own weights, with the adapter beside them
        assert result["merged"] == 0
        assert (out / "model" / ADAPTERS / DEFAULT_ADAPTER / "adapter_model.safetensors").is_file()
        assert set(loaded.peft_config) == {DEFAULT_ADAPTER}
    again = validation_loss(loaded, val, 4, tokenizer.pad_token_id, torch.device("cpu"))
    assert again == pytest.approx(result["val_loss"], rel=1e-4)


def test_prompt_tuning_starts_from_the_init_texts_embeddings(base):
    config = FinetuneConfig(method="prompt", prompt={"num_virtual_tokens": 4, "init_text": "the mill"}, max_seq_len=128)
    model = adapters.add_adapter(adapters.load_base(base, config, torch.device("cpu")), config, base)
    ids = load_tokenizer(str(base))("the mill", add_special_tokens=False)["input_ids"]
    ids = (ids * 4)[:4]  # peft repeats a short text to the prompt's length
    soft = model.prompt_encoder[DEFAULT_ADAPTER].embedding.weight
    torch.testing.assert_close(soft, model.get_input_embeddings().weight[ids])


def test_settings_these_methods_cannot_take_are_refused(base):
    with pytest.raises(ValidationError, match=r"prompt.num_virtual_tokens=124 leaves 4 of max_seq_len=128 .* at least 8"):
        FinetuneConfig(method="prompt", prompt={"num_virtual_tokens": 124}, max_seq_len=128)
    with pytest.raises(ValidationError, match=r"prefix.num_virtual_tokens=300 leaves -44 of max_seq_len=256"):
        FinetuneConfig(method="prefix", prefix={"num_virtual_tokens": 300}, max_seq_len=256)
    FinetuneConfig(method="lora", prompt={"num_virtual_tokens": 300}, max_seq_len=256)  # not the method: not checked
    with pytest.raises(ValidationError, match=r"ia3.feedforward_modules \['up_proj'\] are not in ia3.target_modules"):
        FinetuneConfig(method="ia3", ia3={"target_modules": ["k_proj"], "feedforward_modules": ["up_proj"]})
    with pytest.raises(ConfigError, match=r"finetune.ia3.target_modules: \['c_attn'\] are not linear modules.*\['down_proj'"):
        adapters.check_against_model(
            FinetuneConfig(method="ia3", max_seq_len=128, ia3={"target_modules": ["c_attn", "k_proj"], "feedforward_modules": []}), base
        )
    with pytest.raises(ValidationError, match="finetune.adapters names must be unique, repeated: a"):
        FinetuneConfig(adapters=[{"name": "a", "data": ["x.jsonl"]}, {"name": "a", "data": ["y.jsonl"]}])
    with pytest.raises(ValidationError, match="micro_batch_size=16 is larger than batch_size=8"):
        FinetuneConfig(micro_batch_size=16)


def fail_above(model: torch.nn.Module, records: int) -> None:
    """Make the model's training forward raise the allocator's own error for a batch of more than
    `records` (validation, in eval mode, runs as it would)."""

    def hook(module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if module.training and ids is not None and ids.shape[0] > records:
            raise torch.OutOfMemoryError(f"injected: {ids.shape[0]} records > {records}")

    model.get_decoder().register_forward_pre_hook(hook, with_kwargs=True)


def test_out_of_memory_halves_the_micro_batch_and_the_run_ends_as_without_it(base, data_file, tmp_path, monkeypatch):
    config = FinetuneConfig(method="lora", lora={"r": 4, "dropout": 0.0}, **{**COMMON, "batch_size": 8, "sample_prompts": 0})
    curves: dict[str, list[float]] = {"plain": [], "oom": []}
    events: list[tuple[str, dict]] = []
    plain = finetune_model(config, base, [data_file], tmp_path / "plain",
                           log=lambda m, s: curves["plain"].append(m["loss"]) if "loss" in m else None)

    real_load = adapters.load_base

    def load_then_break(*args, **kwargs):
        model = real_load(*args, **kwargs)
        fail_above(model, 2)
        return model

    monkeypatch.setattr(adapters, "load_base", load_then_break)
    recovered = finetune_model(config, base, [data_file], tmp_path / "oom", on_event=lambda n, d: events.append((n, d)),
                               log=lambda m, s: curves["oom"].append(m["loss"]) if "loss" in m else None)
    assert [(n, d["step"], d["previous_micro_batch_size"], d["micro_batch_size"], d["accumulation_steps"]) for n, d in events] == [
        ("oom_recovered", 1, 8, 4, 2), ("oom_recovered", 1, 4, 2, 4)]
    assert recovered["micro_batch_size"] == 2 and recovered["oom_recoveries"] == 2 and recovered["steps"] == 6
    # the same records make every step, only in smaller pieces: the same curve, up to rounding
    assert curves["oom"] == pytest.approx(curves["plain"], rel=1e-4)
    assert recovered["val_loss"] == pytest.approx(plain["val_loss"], rel=1e-4)

    monkeypatch.setattr(adapters, "load_base", lambda *a, **k: (m := real_load(*a, **k), fail_above(m, 0))[0])
    with pytest.raises(OutOfMemory, match=r"out of memory at step 1 with one record per micro-batch"):
        finetune_model(config.model_copy(update={"micro_batch_size": 2}), base, [data_file], tmp_path / "dies")
    assert not (tmp_path / "dies").exists()


def test_a_merge_stage_is_refused_for_adapters_that_stay_apart_from_the_base():
    from smolforge.flows.config import load_config

    with pytest.raises(ConfigError, match=r"finetune.method=prompt leaves the adapters apart from the base: set merge=null"):
        load_config("tiny", overrides=["finetune.method=prompt"])
    with pytest.raises(ConfigError, match=r"finetune.method=lora with finetune.adapters leaves"):
        load_config("tiny", overrides=["finetune.adapters=[{name: a, data: [x.jsonl]}]"])
    assert load_config("tiny", overrides=["finetune.method=prompt", "merge=null"]).finetune.method == "prompt"
