"""The `small` preset (one GPU, ~135M parameters) cannot train here; what can be checked is: it
loads once a corpus folder is named, its model has the advertised size (built on the meta device,
no weights allocated), its budgets fit the corpus size its comment promises (and not a smaller
one), and the whole preset runs on CPU when only the budgets are cut through --set."""

from __future__ import annotations

import pytest
import torch

from smolforge.errors import ConfigError
from smolforge.flows.config import load_config
from smolforge.models.architecture import build_model, count_parameters
from smolforge.tasks.train.data import CorpusSources, Source, plan_stages

# train tokens per source of the corpus the preset's comment sizes it for
DOCUMENTED_CORPUS = {"web": 600_000_000, "crawl": 150_000_000, "pdfs": 150_000_000, "books": 150_000_000, "chat": 150_000_000}


def small(tmp_path, *overrides: str):
    return load_config("small", overrides=[f"curate.data_dir={tmp_path}", *overrides])


def corpus(tmp_path, tokens: dict[str, int], vocab_size: int) -> CorpusSources:
    """Sources with these train-token counts; planning reads counts only, never the token files."""
    meta = {"eos_id": 0, "vocab_size": vocab_size}
    return CorpusSources(
        {name: Source(name, tmp_path / name, {**meta, "train": {"n_tokens": n, "n_docs": n // 1000}}) for name, n in tokens.items()}
    )


def test_small_loads_once_a_corpus_folder_is_named(tmp_path):
    with pytest.raises(ConfigError, match="neither curate.data_dir nor curate.sample_corpus"):
        load_config("small")
    cfg = small(tmp_path)
    assert cfg.pretrain.dtype == "bfloat16" and cfg.pretrain.compile
    assert cfg.curate.data_folder(tmp_path / "unused") == tmp_path.resolve()


def test_small_model_has_135m_parameters_on_the_meta_device(tmp_path):
    cfg = small(tmp_path)
    with torch.device("meta"):
        model = build_model(cfg.pretrain.model, vocab_size=cfg.curate.tokenizer.vocab_size, bos_id=1, eos_id=0, pad_id=2)
    assert {p.device.type for p in model.parameters()} == {"meta"}
    n = count_parameters(model)
    assert n == count_parameters(model.config)  # the closed form agrees with the built module
    assert 134_000_000 < n < 136_000_000, n  # SmolLM2-135M's shape with its 49,152-token vocabulary
    assert model.config.num_hidden_layers == 30 and model.config.max_position_embeddings == 2048


def test_small_budgets_fit_the_documented_corpus_and_not_a_smaller_one(tmp_path):
    cfg = small(tmp_path)
    plans = plan_stages(cfg.pretrain, corpus(tmp_path, DOCUMENTED_CORPUS, cfg.curate.tokenizer.vocab_size))
    assert [p.stage for p in plans] == ["stable", "mix", "decay"]
    total = sum(p.tokens for p in plans)
    assert 2.6e9 <= total < 2.61e9, total  # budgets are rounded up to whole 262,144-token steps
    assert max(s.epochs_total for s in plans[-1].sources.values()) <= cfg.pretrain.max_epochs
    half = {name: n // 2 for name, n in DOCUMENTED_CORPUS.items()}
    with pytest.raises(ValueError, match="more than max_epochs=4"):
        plan_stages(cfg.pretrain, corpus(tmp_path, half, cfg.curate.tokenizer.vocab_size))


# Budgets cut to two steps of one 64-token sequence, and the depth to two of the 30 layers (the
# meta-device test above covers the full shape; 30 layers on a CPU made this test take minutes);
# the width, heads, tokenizer size and sources are the preset's. float32: bf16 autocast on a CPU without bf16 matmuls made each forward of the 30 layers
# about ten times slower (measured); compile is the GPU run's choice, worth it only for long runs.
SMOKE = [
    "pretrain.batch_size=1",
    "pretrain.model.num_layers=2",
    "pretrain.grad_accum=1",
    "pretrain.stages=[{name: stable, steps: 2, seq_len: 64, mixture: {web: 0.6, crawl: 0.1, pdfs: 0.1, books: 0.1, chat: 0.1}}]",
    "pretrain.schedule.warmup_steps=0",
    "pretrain.eval_batches=1",
    "pretrain.dtype=float32",
    "pretrain.compile=false",
    "pretrain.sample_prompts=[]",
    "pretrain.register_as=smolforge-small-smoke",  # never a version of the tiny run's smolforge-base
    "finetune=null",
    "evaluate=null",
    "promote=null",
]


@pytest.mark.slow
def test_small_preset_trains_on_cpu_with_tiny_budgets(sample_corpus):
    from smolforge.flows.pretrain import pretrain

    cfg = load_config("small", overrides=[f"curate.data_dir={sample_corpus}", *SMOKE])
    result = pretrain(cfg)
    (stage,) = result.stages
    assert stage["stage"] == "stable" and stage["steps"] == 2 and stage["tokens"] == 128
    assert 0 < stage["val_loss"] < 12  # finite, about log(vocabulary) for a model two steps old
