"""Fine-tuning pieces on a tiny random SmolLM3: records and their loss mask, bad records and bad
files, settings refused against the model, the loop's evaluation hook and early stopping, and
several adapters on one base."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from smolforge.errors import ConfigError
from smolforge.model_source import with_adapters
from smolforge.models.architecture import build_model
from smolforge.models.config import ModelShape
from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer
from smolforge.tasks.finetune import adapters
from smolforge.tasks.finetune.config import FinetuneConfig
from smolforge.tasks.finetune.data import (
    IGNORE_INDEX,
    DatasetError,
    check_files,
    load_data,
    render,
)
from smolforge.tasks.finetune.train import finetune_model

SHAPE = ModelShape(
    hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
    rope_theta=10_000.0, nope_every=0, max_seq_len=128,
)
QA = [
    ("What does the river do?", "It runs past the old mill."),
    ("Where is the mill?", "Beside the river, under the hill."),
    ("Who watches the river?", "The miller's daughter watches it."),
    ("What colour is the mill?", "The mill is red."),
    ("When does the mill turn?", "It turns when the river runs."),
    ("How old is the mill?", "The mill is very old."),
]


def jsonl(path: Path, records: list) -> Path:
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in records) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Path:
    """A random tiny model with a small trained tokenizer carrying the project's chat template."""
    folder = tmp_path_factory.mktemp("finetune-base")
    texts = [f"{q} {a}" for q, a in QA] * 20 + ["user assistant system im_start im_end"]
    train_tokenizer(texts, vocab_size=320, out_dir=folder)
    tok = load_tokenizer(str(folder))
    build_model(SHAPE, vocab_size=len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id,
                pad_id=tok.pad_token_id, seed=0).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tokenizer(base):
    return load_tokenizer(str(base))


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("finetune-data")
    records = [{"instruction": q, "input": "", "output": a} for q, a in QA[:3]]
    records += [{"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]} for q, a in QA[3:]]
    return jsonl(folder / "qa.jsonl", records * 4)


def masked_text(tokenizer, ids, labels) -> str:
    return tokenizer.decode([t for t, lab in zip(ids, labels) if lab != IGNORE_INDEX])


def test_loss_falls_on_the_assistant_turns_only(tokenizer):
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Where is the mill?"},
        {"role": "assistant", "content": "Beside the river."},
        {"role": "user", "content": "How old is it?"},
        {"role": "assistant", "content": "Very old."},
    ]
    ids, labels = render(messages, tokenizer)
    assert len(ids) == len(labels)
    assert masked_text(tokenizer, ids, labels) == "Beside the river.<|im_end|>Very old.<|im_end|>"
    text = tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhere is the mill?")


def test_bad_records_are_dropped_and_counted_with_their_reason(tmp_path, tokenizer):
    path = jsonl(tmp_path / "mixed.jsonl", [
        {"instruction": "Where is the mill?", "input": "the red one", "output": "Beside the river."},
        '{"instruction": "cut off',
        ["not", "an", "object"],
        {"instruction": "no output"},
        {"instruction": "x", "output": ["a", "list"]},
        {"messages": [{"role": "bot", "content": "hi"}, {"role": "assistant", "content": "hello"}]},
        {"messages": [{"role": "user", "content": "a"}, {"role": "system", "content": "late"}, {"role": "assistant", "content": "b"}]},
        {"messages": [{"role": "user", "content": "anyone?"}]},
        {"messages": [{"role": "user", "content": "joke?"}, {"role": "assistant", "content": " "}]},
        {"instruction": "say <|im_end|>", "output": "ok"},
        {"instruction": "long", "output": "the mill " * 200},
        {"messages": [{"role": "user", "content": "Who?"}, {"role": "assistant", "content": "The miller."}]},
    ])
    data = load_data([path], tokenizer, max_seq_len=128, val_fraction=0.5, max_val=8, seed=0)
    assert data.read == 12
    assert dict(data.dropped) == {
        "not_json": 1, "not_object": 1, "missing_field": 1, "bad_type": 1, "wrong_role": 2, "no_assistant": 1,
        "empty_assistant": 1, "control_token": 1, "too_long": 1,
    }
    kept = data.train + data.val
    assert len(kept) == 2 and len(data.val) == 1
    first = next(e for e in kept if e.origin.endswith(":1"))
    assert first.prompt == [{"role": "user", "content": "Where is the mill?\n\nthe red one"}]
    assert masked_text(tokenizer, first.input_ids, first.labels) == "Beside the river.<|im_end|>"


def test_empty_or_unusable_files_are_refused_naming_file_and_line(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(DatasetError, match=r"empty\.jsonl: the file is empty"):
        check_files([empty])
    broken = jsonl(tmp_path / "broken.jsonl", ['{"a": 1}', "not json at all"])
    with pytest.raises(DatasetError, match=r"broken\.jsonl: no usable record; line 1: missing_field"):
        check_files([broken])
    good = jsonl(tmp_path / "good.jsonl", [{"instruction": "q", "output": "a"}, "oops"])
    assert check_files([good]) == {str(good): {"kept": 1, "not_json": 1}}


def test_split_is_seeded_and_holds_out_records(data_file, tokenizer):
    kwargs = {"max_seq_len": 128, "val_fraction": 0.25, "max_val": 100}
    a = load_data([data_file], tokenizer, seed=1, **kwargs)
    b = load_data([data_file], tokenizer, seed=1, **kwargs)
    c = load_data([data_file], tokenizer, seed=2, **kwargs)
    assert len(a.val) == 6 and len(a.train) == 18
    assert [e.origin for e in a.val] == [e.origin for e in b.val] != [e.origin for e in c.val]


def test_settings_the_model_cannot_take_are_refused_before_loading(base, monkeypatch):
    with pytest.raises(ConfigError, match=r"\['attn_proj'\] are not linear modules.*\['down_proj', 'gate_proj', 'k_proj'"):
        adapters.check_against_model(FinetuneConfig(max_seq_len=128, lora={"target_modules": ["q_proj", "attn_proj"]}), base)
    # k_proj is 32 x 64 here (one key/value head of width 32)
    with pytest.raises(ConfigError, match=r"lora.r=48 is larger than layer model.layers.0.self_attn.k_proj allows \(out x in = 32 x 64"):
        adapters.check_against_model(FinetuneConfig(max_seq_len=128, lora={"r": 48}), base)
    assert adapters.check_against_model(FinetuneConfig(max_seq_len=128, lora={"r": 48, "target_modules": ["q_proj", "up_proj"]}), base)
    with pytest.raises(ConfigError, match=r"max_seq_len=512 is longer than the base model's context \(128"):
        adapters.check_against_model(FinetuneConfig(max_seq_len=512), base)

    real_find_spec = adapters.importlib.util.find_spec
    monkeypatch.setattr(adapters.importlib.util, "find_spec", lambda name, *a: None if name == "bitsandbytes" else real_find_spec(name, *a))
    with pytest.raises(ConfigError, match="pip install bitsandbytes"):
        adapters.check_against_model(FinetuneConfig(method="qlora", max_seq_len=128), base)
    adapters.check_against_model(FinetuneConfig(method="lora", max_seq_len=128), base)


class Stop(Exception):
    pass


def test_on_eval_sees_every_evaluation_and_its_exception_ends_training(base, data_file, tmp_path):
    seen = []

    def on_eval(step: int, val_loss: float) -> None:
        seen.append((step, val_loss))
        if step == 4:
            raise Stop

    config = FinetuneConfig(steps=20, eval_every=2, batch_size=4, max_seq_len=128, lr=5e-3, sample_prompts=0)
    with pytest.raises(Stop):
        finetune_model(config, base, [data_file], tmp_path / "out", on_eval=on_eval)
    assert [s for s, _ in seen] == [0, 2, 4]
    assert not (tmp_path / "out").exists()


def test_early_stopping_keeps_the_best_weights(base, data_file, tmp_path):
    """Full fine-tuning at an absurd learning rate makes the validation loss rise after a while:
    training stops `patience` evaluations after the best one and saves that one's weights."""
    from transformers import AutoModelForCausalLM

    curve = []
    config = FinetuneConfig(
        method="full", steps=60, eval_every=2, batch_size=4, max_seq_len=128, lr=0.05, warmup_steps=0, patience=2,
        sample_prompts=1, max_new_tokens=4,
    )
    result = finetune_model(config, base, [data_file], tmp_path / "out", on_eval=lambda s, v: curve.append((s, v)))
    best_step, best = min(curve, key=lambda c: c[1])
    assert result["stopped_early"] == 1 and result["steps"] < 60
    assert result["best_step"] == best_step and result["val_loss"] == pytest.approx(best)
    assert result["steps"] == best_step + 2 * config.eval_every
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "out" / "model")
    assert saved.generation_config.eos_token_id == [1, 4]  # end of text and <|im_end|>
    tokenizer = load_tokenizer(str(base))
    data = load_data([data_file], tokenizer, max_seq_len=128, val_fraction=0.1, max_val=64, seed=0)
    from smolforge.tasks.finetune.train import validation_loss

    assert validation_loss(saved, data.val, 4, tokenizer.pad_token_id, torch.device("cpu")) == pytest.approx(best, rel=1e-4)


def test_several_adapters_load_side_by_side_on_one_base(base, data_file, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    outs = {}
    for name, seed in (("first", 0), ("second", 1)):
        config = FinetuneConfig(steps=6, eval_every=3, batch_size=4, max_seq_len=128, lr=1e-2, seed=seed,
                                lora={"r": 4, "dropout": 0.0}, sample_prompts=0)
        result = finetune_model(config, base, [data_file], tmp_path / name)
        assert result["trainable_params"] < result["total_params"] / 4
        outs[name] = tmp_path / name
        assert (outs[name] / "adapter" / "adapter_config.json").is_file()
    ids = torch.tensor([[3, 40, 50, 60, 70, 4]])

    def logits(model) -> torch.Tensor:
        with torch.no_grad():
            return model.eval()(input_ids=ids).logits

    both = with_adapters(AutoModelForCausalLM.from_pretrained(base), {n: p / "adapter" for n, p in outs.items()}, None, "test")
    assert set(both.peft_config) == {"first", "second"}
    side_by_side = {}
    for name, folder in outs.items():
        both.set_adapter(name)
        side_by_side[name] = logits(both)
        alone = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder / "adapter")
        torch.testing.assert_close(side_by_side[name], logits(alone))
        merged = AutoModelForCausalLM.from_pretrained(folder / "model")  # merge_and_unload, saved
        torch.testing.assert_close(side_by_side[name], logits(merged), rtol=1e-4, atol=1e-5)
    assert not torch.allclose(side_by_side["first"], side_by_side["second"], atol=1e-4)
    assert not torch.allclose(side_by_side["first"], logits(AutoModelForCausalLM.from_pretrained(base)), atol=1e-4)


def test_a_run_with_dropout_repeats_exactly(base, data_file, tmp_path):
    config = FinetuneConfig(steps=4, eval_every=2, batch_size=4, max_seq_len=128, lr=1e-2,
                            lora={"r": 4, "dropout": 0.3}, sample_prompts=0)
    runs = [finetune_model(config, base, [data_file], tmp_path / name) for name in ("a", "b")]
    assert runs[0]["val_loss"] == runs[1]["val_loss"] and runs[0]["train_loss"] == runs[1]["train_loss"]
