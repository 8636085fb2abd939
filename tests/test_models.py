"""Model configs, the SmolLM3 build, parameter/FLOP counts, vocabulary checks and document masking."""

import subprocess
import sys

import pytest
import torch
from pydantic import ValidationError
from transformers import AutoModelForCausalLM, SmolLM3Config, SmolLM3ForCausalLM

from smolforge.models.architecture import (
    build_model,
    build_model_config,
    check_vocab,
    count_parameters,
    flops_per_token,
)
from smolforge.models.config import PRESETS, ModelConfig, MTPConfig, OptimizerConfig
from smolforge.models.masking import (
    document_ids_from_eos,
    document_labels,
    document_mask,
    document_positions,
    packed_attention_inputs,
)

IDS = {"bos_id": 0, "eos_id": 1, "pad_id": 2}
VOCAB = 97


def small_cfg(**overrides) -> ModelConfig:
    """A shape that runs in milliseconds but keeps GQA (2 query heads per KV head) and a NoPE layer."""
    base = dict(hidden_size=64, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=128, max_seq_len=64)
    return ModelConfig(**{**base, **overrides})


def small_model(attn="sdpa", **overrides) -> SmolLM3ForCausalLM:
    return build_model(small_cfg(**overrides), vocab_size=VOCAB, attn_implementation=attn, seed=0, **IDS).eval()


# ---------------------------------------------------------------------------------------------
# config


def test_config_module_does_not_import_torch():
    code = "import sys, smolforge.models.config; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_presets_resolve_and_overrides_apply():
    tiny = ModelConfig().resolve()
    assert tiny == PRESETS["tiny"]
    assert tiny.hidden_size % tiny.num_heads == 0 and tiny.num_heads % tiny.num_kv_heads == 0
    shape = ModelConfig(preset="small", num_layers=2, rope_theta=1e4).resolve()
    assert (shape.num_layers, shape.rope_theta, shape.hidden_size, shape.num_heads) == (2, 1e4, 576, 9)
    assert ModelConfig(nope_every=0).resolve().nope_layers() == []
    assert ModelConfig(num_layers=9, nope_every=4).resolve().nope_layers() == [3, 7]


def test_smollm3_preset_matches_transformers_smollm3_defaults():
    shape = ModelConfig(preset="smollm3-3b").resolve()
    ref = SmolLM3Config()  # its defaults are SmolLM3-3B's architecture
    assert shape.hidden_size == ref.hidden_size
    assert shape.num_layers == ref.num_hidden_layers
    assert shape.num_heads == ref.num_attention_heads
    assert shape.num_kv_heads == ref.num_key_value_heads
    assert shape.intermediate_size == ref.intermediate_size
    assert shape.nope_every == ref.no_rope_layer_interval
    ours = build_model_config(
        shape, vocab_size=ref.vocab_size, bos_id=ref.bos_token_id, eos_id=ref.eos_token_id, pad_id=ref.pad_token_id
    )
    assert ours.no_rope_layers == ref.no_rope_layers
    assert count_parameters(ours) == count_parameters(ref)
    assert 3.0e9 < count_parameters(ref) < 3.1e9  # "3B"


@pytest.mark.parametrize(
    "overrides, words",
    [
        ({"hidden_size": 100, "num_heads": 3}, ["hidden_size=100", "num_heads=3"]),
        ({"num_heads": 4, "num_kv_heads": 3}, ["num_heads=4", "num_kv_heads=3"]),
        ({"num_kv_heads": 3}, ["num_heads=4 (from preset 'tiny')", "num_kv_heads=3"]),
        ({"num_heads": 4, "num_kv_heads": 8}, ["num_kv_heads=8"]),
        ({"hidden_size": 36, "num_heads": 4, "num_kv_heads": 2}, ["odd", "9"]),
    ],
)
def test_impossible_head_splits_are_rejected_with_the_values(overrides, words):
    with pytest.raises(ValidationError) as err:
        ModelConfig(**overrides)
    for word in words:
        assert word in str(err.value)


def test_config_is_strict():
    with pytest.raises(ValidationError):
        ModelConfig(hidden=64)  # misspelt field
    with pytest.raises(ValidationError):
        ModelConfig(preset="huge")
    with pytest.raises(ValidationError):
        MTPConfig(heads=-1)
    with pytest.raises(ValidationError, match="beta2"):
        OptimizerConfig(betas=(0.9, 1.0))
    with pytest.raises(ValidationError):
        OptimizerConfig(qk_clip=0)
    assert OptimizerConfig(betas=[0.8, 0.99]).betas == (0.8, 0.99)  # YAML gives lists


# ---------------------------------------------------------------------------------------------
# architecture


def test_build_model_config_sets_shape_nope_ties_and_special_ids():
    c = build_model_config(small_cfg(num_layers=8), vocab_size=VOCAB, **IDS)
    assert (c.vocab_size, c.hidden_size, c.num_hidden_layers) == (VOCAB, 64, 8)
    assert (c.num_attention_heads, c.num_key_value_heads, c.intermediate_size) == (4, 2, 128)
    assert c.no_rope_layers == [1, 1, 1, 0, 1, 1, 1, 0]
    assert c.tie_word_embeddings
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (0, 1, 2)
    assert c.rope_parameters["rope_theta"] == PRESETS["tiny"].rope_theta
    assert c.max_position_embeddings == 64
    assert build_model_config(small_cfg(nope_every=0), vocab_size=VOCAB, **IDS).no_rope_layers == [1] * 4
    with pytest.raises(ValueError, match="pad_id=200"):
        build_model_config(small_cfg(), vocab_size=VOCAB, bos_id=0, eos_id=1, pad_id=200)


def test_build_model_is_plain_smollm3_with_tied_embeddings_and_nope(tmp_path):
    model = small_model()
    assert type(model) is SmolLM3ForCausalLM
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert [layer.self_attn.use_rope for layer in model.model.layers] == [1, 1, 1, 0]
    assert count_parameters(model) == count_parameters(model.config)
    assert count_parameters(model, embeddings=False) == count_parameters(model.config, embeddings=False)
    assert count_parameters(model) - count_parameters(model, embeddings=False) == VOCAB * 64
    # Seeded init is reproducible and leaves the global RNG alone.
    state = torch.random.get_rng_state()
    again = small_model()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True))
    # The export loads with transformers alone.
    model.save_pretrained(tmp_path)
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(5, VOCAB, (2, 12))
    with torch.no_grad():
        assert torch.allclose(model(ids).logits, loaded(ids).logits, atol=1e-5)


def test_count_parameters_of_the_presets():
    counts = {
        p: count_parameters(build_model_config(ModelConfig(preset=p), vocab_size=49152, **IDS)) for p in PRESETS
    }
    assert 1e6 < count_parameters(build_model_config(ModelConfig(), vocab_size=8192, **IDS)) < 1e7
    assert 130e6 < counts["small"] < 140e6  # SmolLM2-135M's shape with its 49152 vocabulary


def test_flops_per_token_formula():
    c = build_model_config(small_cfg(), vocab_size=VOCAB, **IDS)
    n_matmul = count_parameters(c, embeddings=False) + VOCAB * 64
    attention = 12 * 4 * 4 * 16 * 128  # 12 * layers * heads * head_dim * seq_len
    assert flops_per_token(c, 128) == 6 * n_matmul + attention
    assert flops_per_token(c, 128, causal=True) == 6 * n_matmul + attention / 2
    with pytest.raises(ValueError):
        flops_per_token(c, 0)


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer

    out = tmp_path_factory.mktemp("tok")
    texts = [f"the quick brown fox {i} jumps over the lazy dog {i * 7}" for i in range(200)]
    train_tokenizer(texts, vocab_size=320, out_dir=out)
    return load_tokenizer(str(out))


def test_check_vocab(tokenizer):
    size = len(tokenizer)
    good = build_model_config(small_cfg(), vocab_size=size, **IDS)
    check_vocab(good, tokenizer)
    check_vocab(good, tokenizer.backend_tokenizer)  # a raw tokenizers.Tokenizer works too
    with pytest.raises(ValueError, match=f"vocab_size={size + 64} but the tokenizer has {size} tokens"):
        check_vocab(build_model_config(small_cfg(), vocab_size=size + 64, **IDS), tokenizer)
    with pytest.raises(ValueError, match="pad_token_id=1 but the tokenizer has 2"):
        check_vocab(build_model_config(small_cfg(), vocab_size=size, bos_id=0, eos_id=1, pad_id=1), tokenizer)
    check_vocab(build_model_config(small_cfg(), vocab_size=size, bos_id=0, eos_id=[1, 4], pad_id=2), tokenizer)


# ---------------------------------------------------------------------------------------------
# masking


def test_document_mask_and_positions_values():
    doc = torch.tensor([[5, 5, 5, 9, 9, 5]])  # the last token is a third document (ids only need to change)
    m = document_mask(doc)
    assert m.shape == (1, 1, 6, 6) and m.dtype == torch.bool
    expected = torch.tensor(
        [
            [1, 0, 0, 0, 0, 0],
            [1, 1, 0, 0, 0, 0],
            [1, 1, 1, 0, 0, 0],
            [0, 0, 0, 1, 0, 0],
            [0, 0, 0, 1, 1, 0],
            [0, 0, 0, 0, 0, 1],
        ],
        dtype=torch.bool,
    )
    assert torch.equal(m[0, 0], expected)
    assert document_positions(doc).tolist() == [[0, 1, 2, 0, 1, 0]]
    additive = document_mask(doc, dtype=torch.float32)
    assert torch.equal(additive == 0, m) and additive.min() == torch.finfo(torch.float32).min
    ids = torch.tensor([[10, 11, 1, 12, 1, 13]])
    assert document_ids_from_eos(ids, eos_id=1).tolist() == [[0, 0, 0, 1, 1, 2]]
    assert document_labels(ids, doc).tolist() == [[10, 11, 1, -100, 1, -100]]


def _packed(seed: int):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, VOCAB, (2, 24), generator=g)
    doc = torch.tensor([[0] * 7 + [1] * 10 + [2] * 7, [0] * 12 + [1] * 12])
    return ids, doc


@pytest.mark.parametrize("attn", ["sdpa", "eager", "positions_only"])
def test_tokens_do_not_see_other_documents(attn):
    model = small_model("sdpa" if attn == "positions_only" else attn)
    ids, doc = _packed(0)
    inputs = packed_attention_inputs(doc, "flash_attention_2" if attn == "positions_only" else attn)
    if attn == "positions_only":
        assert inputs["attention_mask"] is None  # transformers derives the mask from the positions
    with torch.no_grad():
        base = model(ids, **inputs).logits
        # Change every token of the first document of row 0 and of the second document of row 1.
        changed = ids.clone()
        changed[0, :7] = (changed[0, :7] + 3) % VOCAB
        changed[1, 12:] = (changed[1, 12:] + 3) % VOCAB
        after = model(changed, **inputs).logits
        assert torch.allclose(base[0, 7:], after[0, 7:], atol=1e-5)
        assert torch.allclose(base[1, :12], after[1, :12], atol=1e-5)
        assert not torch.allclose(base[0, :7], after[0, :7], atol=1e-3)  # the changed document did change
        # Each packed document computes exactly what it computes alone.
        alone = model(ids[0:1, 7:17]).logits
        assert torch.allclose(base[0, 7:17], alone[0], atol=1e-5)


def test_plain_causal_mask_would_leak():
    """The control for the test above: without document masking the later documents do change."""
    model = small_model()
    ids, _ = _packed(0)
    changed = ids.clone()
    changed[0, :7] = (changed[0, :7] + 3) % VOCAB
    with torch.no_grad():
        assert not torch.allclose(model(ids).logits[0, 7:], model(changed).logits[0, 7:], atol=1e-3)
