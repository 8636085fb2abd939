"""Build SmolLM3-architecture models with transformers' own classes, sized by `ModelConfig`.

Why transformers' `SmolLM3ForCausalLM` rather than our own module: the exported checkpoint then
loads anywhere SmolLM3 loads (`AutoModelForCausalLM`, vLLM, llama.cpp converters) with no custom
code, and the architecture is exactly SmolLM3's: grouped-query attention, SwiGLU MLP, RMSNorm,
tied input/output embeddings, and NoPE (no rotary embedding) in every `nope_every`-th layer.

Training-only additions (multi-token-prediction heads, see mtp.py) live outside the model so the
exported model stays a plain transformers model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from transformers import SmolLM3Config, SmolLM3ForCausalLM

from smolforge.models.config import ModelConfig, ModelShape


def _nope_flags(shape: ModelShape) -> list[int]:
    # SmolLM3Config.no_rope_layers: 1 = the layer uses RoPE, 0 = NoPE. transformers derives it from
    # `no_rope_layer_interval` with the same rule, but an explicit list is saved in config.json and
    # so does not depend on a default that a future transformers might change.
    nope = set(shape.nope_layers())
    return [0 if i in nope else 1 for i in range(shape.num_layers)]


def build_model_config(
    cfg: ModelConfig | ModelShape, *, vocab_size: int, bos_id: int | None, eos_id: int | list[int], pad_id: int | None
) -> SmolLM3Config:
    """A `SmolLM3Config` with our shape and our tokenizer's vocabulary and special ids.

    The special ids are always passed: SmolLM3Config's defaults are those of SmolLM3's 128k Llama-3
    vocabulary (bos 128000, pad 128004), which would index outside a small vocabulary.
    """
    shape = cfg.resolve() if isinstance(cfg, ModelConfig) else cfg
    if vocab_size < 1:
        raise ValueError(f"vocab_size must be positive, got {vocab_size}")
    eos_ids = eos_id if isinstance(eos_id, list) else [eos_id]
    for name, value in [("bos_id", bos_id), ("pad_id", pad_id), *(("eos_id", e) for e in eos_ids)]:
        if value is not None and not 0 <= value < vocab_size:
            raise ValueError(f"{name}={value} is outside the vocabulary (0..{vocab_size - 1})")
    return SmolLM3Config(
        vocab_size=vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers,
        num_attention_heads=shape.num_heads,
        num_key_value_heads=shape.num_kv_heads,
        max_position_embeddings=shape.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": float(shape.rope_theta)},
        no_rope_layers=_nope_flags(shape),
        no_rope_layer_interval=shape.nope_every or shape.num_layers + 1,
        tie_word_embeddings=True,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        attention_bias=False,
        mlp_bias=False,
        use_sliding_window=False,
    )


def tokenizer_ids(tokenizer: Any) -> dict[str, int]:
    """The vocabulary size and special ids of a model built for `tokenizer` (`build_model` and
    `build_model_config` keywords)."""
    return {
        "vocab_size": len(tokenizer),
        "bos_id": tokenizer.bos_token_id,
        "eos_id": tokenizer.eos_token_id,
        "pad_id": tokenizer.pad_token_id,
    }


def build_model(
    cfg: ModelConfig | ModelShape | SmolLM3Config,
    *,
    vocab_size: int | None = None,
    bos_id: int | None = None,
    eos_id: int | list[int] | None = None,
    pad_id: int | None = None,
    attn_implementation: str = "sdpa",
    seed: int | None = None,
) -> SmolLM3ForCausalLM:
    """A freshly initialised `SmolLM3ForCausalLM` (weights from transformers' own init, std 0.02).

    `cfg` may already be a SmolLM3Config (e.g. read back from a checkpoint); otherwise the vocabulary
    and special ids are required. `attn_implementation` is "sdpa" by default: it takes the boolean
    document masks of masking.py as they are (see `masking.packed_attention_inputs` for "eager").
    `seed` makes the initial weights reproducible without touching the caller's global RNG.
    """
    if isinstance(cfg, SmolLM3Config):
        config = copy.deepcopy(cfg)  # the attention choice below must not leak into the caller's config
    else:
        if vocab_size is None or eos_id is None:
            raise ValueError("build_model needs vocab_size and eos_id (and bos_id, pad_id) when given a ModelConfig")
        config = build_model_config(cfg, vocab_size=vocab_size, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)
    config._attn_implementation = attn_implementation
    if seed is None:
        return SmolLM3ForCausalLM(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SmolLM3ForCausalLM(config)


def count_parameters(model_or_config: nn.Module | SmolLM3Config, *, embeddings: bool = True) -> int:
    """Number of distinct parameters; a tied weight counts once.

    From a config it is computed in closed form, so the 3B shape can be sized without allocating
    12 GB. `embeddings=False` leaves out the token embedding table (and an untied output head): the
    "non-embedding" count that scaling laws use.
    """
    if isinstance(model_or_config, nn.Module):
        seen: dict[int, nn.Parameter] = {id(p): p for p in model_or_config.parameters()}
        total = sum(p.numel() for p in seen.values())
        if not embeddings:
            tables = {id(m.weight): m.weight for m in model_or_config.modules() if isinstance(m, nn.Embedding)}
            get_out = getattr(model_or_config, "get_output_embeddings", None)
            out = get_out() if callable(get_out) else None
            if out is not None:
                tables[id(out.weight)] = out.weight
            total -= sum(t.numel() for t in tables.values())
        return total

    c = model_or_config
    d, L, V, ff = c.hidden_size, c.num_hidden_layers, c.vocab_size, c.intermediate_size
    hd = getattr(c, "head_dim", None) or d // c.num_attention_heads
    q, kv = c.num_attention_heads * hd, c.num_key_value_heads * hd
    attn = d * q + 2 * d * kv + q * d + (q + 2 * kv + d if c.attention_bias else 0)
    mlp = 3 * d * ff + (2 * ff + d if c.mlp_bias else 0)
    per_layer = attn + mlp + 2 * d  # two RMSNorm weights
    body = L * per_layer + d  # final norm
    if not embeddings:
        return body
    return body + V * d * (1 if c.tie_word_embeddings else 2)


def flops_per_token(config: SmolLM3Config, seq_len: int, *, causal: bool = False) -> float:
    """Training FLOPs per token (forward + backward), for throughput and MFU.

        flops_per_token = 6 * N + 12 * L * H * d_head * T

    N counts the parameters that take part in a matrix multiply: every non-embedding weight plus the
    output projection (vocab x hidden; with tied embeddings that is the embedding table, counted
    once; the input lookup itself costs nothing). Each such weight costs 2 FLOPs per token forward and
    4 backward, hence 6N. The second term is attention itself, which has no parameters: per layer
    and head, QK^T and the product with V are each 2*T*d_head FLOPs per token forward, times 3 for
    forward + backward. Grouped-query attention shares K/V projections, not this work, so it is H
    (query heads), not the key/value heads. This is PaLM's estimate (Chowdhery et al. 2022, app. B),
    which counts the full T x T score matrix; `causal=True` halves the attention term, counting only
    the lower triangle that causal kernels actually compute. Document masking is not discounted:
    MFU figures are conventionally quoted against the dense count.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be positive, got {seq_len}")
    # Non-embedding weights plus the output projection; tied or not, the input table is a lookup.
    n = count_parameters(config, embeddings=False) + config.vocab_size * config.hidden_size
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    attention = 12 * config.num_hidden_layers * config.num_attention_heads * hd * seq_len
    return 6.0 * n + attention * (0.5 if causal else 1.0)


def _tokenizer_size(tokenizer: Any) -> int:
    if hasattr(tokenizer, "get_vocab_size"):  # a raw `tokenizers.Tokenizer`
        return tokenizer.get_vocab_size(with_added_tokens=True)
    return len(tokenizer)  # transformers tokenizers: base vocabulary plus added tokens


def check_vocab(config: SmolLM3Config, tokenizer: Any) -> None:
    """Raise ValueError unless the model's vocabulary and special ids are the tokenizer's.

    A mismatch does not always crash: a tokenizer smaller than the embedding table trains silently
    with dead rows, one larger fails deep in an embedding lookup on the first rare token, and a
    wrong eos id makes generation never stop. So the check runs before training and after loading.
    """
    size = _tokenizer_size(tokenizer)
    problems = []
    if size != config.vocab_size:
        problems.append(f"the model has vocab_size={config.vocab_size} but the tokenizer has {size} tokens")
    for what in ("bos", "eos", "pad"):
        tok_id = getattr(tokenizer, f"{what}_token_id", None)
        model_id = getattr(config, f"{what}_token_id", None)
        if isinstance(model_id, list):
            # Several stop ids (eos and im_end for chat): the tokenizer's eos must be one of them.
            if tok_id is not None and tok_id not in model_id:
                problems.append(f"the tokenizer's {what}_token_id={tok_id} is not among the model's {model_id}")
        elif tok_id is not None and model_id is not None and tok_id != model_id:
            problems.append(f"the model has {what}_token_id={model_id} but the tokenizer has {tok_id}")
    if problems:
        raise ValueError("model and tokenizer do not match: " + "; ".join(problems))
