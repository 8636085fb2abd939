"""Intra-document attention for packed training sequences.

Pretraining packs several documents into each fixed-length window. With a plain causal mask a
token would attend to the unrelated documents before it in the window: the model learns to use
context that is noise, and what a document's tokens predict depends on what happened to be packed
before them. SmolLM3 (like Llama 3) masks attention to the current document and restarts the
positions at each document start, so every document is seen as if it began the sequence.

`doc_ids` [B, T] labels the document of every token. Only changes between neighbours matter
(a new document starts wherever the id differs from the previous token's), so any labelling works,
e.g. a running document index, or the offsets of pack.py broadcast over the window. A window that
starts in the middle of a document simply treats that tail as a document.
"""

from __future__ import annotations

import torch


def document_segments(doc_ids: torch.Tensor) -> torch.Tensor:
    """Renumber documents 0, 1, 2, ... along each row, so non-adjacent equal ids stay separate."""
    if doc_ids.dim() != 2:
        raise ValueError(f"doc_ids must be [batch, seq_len], got shape {tuple(doc_ids.shape)}")
    starts = torch.zeros_like(doc_ids, dtype=torch.long)
    starts[:, 1:] = (doc_ids[:, 1:] != doc_ids[:, :-1]).long()
    return starts.cumsum(dim=1)


def document_mask(doc_ids: torch.Tensor, *, dtype: torch.dtype | None = None) -> torch.Tensor:
    """[B, 1, T, T] mask: query i may attend key j iff j <= i and both are in the same document.

    Boolean (True = attend) by default, the form transformers' "sdpa" attention (the default on
    CPU) and torch's scaled_dot_product_attention take as is; a 4-D mask bypasses transformers' own
    mask construction. With a floating `dtype` the mask is additive instead (0 where attending, the
    dtype's minimum elsewhere): transformers' "eager" attention adds the mask to the scores, so a
    boolean mask there would add 1/0 and mask nothing. The diagonal is always allowed, so no row is
    fully masked (a fully masked row would give NaN after the softmax).
    """
    seg = document_segments(doc_ids)
    t = seg.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=seg.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal  # [B, T, T]
    allowed = allowed[:, None]  # head dimension, broadcast over heads
    if dtype is None or dtype == torch.bool:
        return allowed
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be torch.bool or a floating dtype, got {dtype}")
    zero = torch.zeros((), dtype=dtype, device=seg.device)
    return torch.where(allowed, zero, torch.finfo(dtype).min)


def document_positions(doc_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] position ids restarting at 0 at each document start (RoPE sees each document alone)."""
    seg = document_segments(doc_ids)
    idx = torch.arange(seg.shape[1], device=seg.device).expand_as(seg)
    is_start = torch.ones_like(seg, dtype=torch.bool)
    is_start[:, 1:] = seg[:, 1:] != seg[:, :-1]
    # Index of the latest document start at or before each token: a running max of start indices.
    start_idx = torch.where(is_start, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx


def document_labels(input_ids: torch.Tensor, doc_ids: torch.Tensor, ignore_index: int = -100) -> torch.Tensor:
    """Labels for transformers' causal-LM loss that skip predictions across a document boundary.

    The loss shifts labels by one (logits at t are scored against labels[t+1]), so the first token
    of each document after the first in a row is set to `ignore_index`: under document masking the
    last token of the previous document cannot know it, and asking for it only adds noise.
    """
    if input_ids.shape != doc_ids.shape:
        raise ValueError(f"input_ids {tuple(input_ids.shape)} and doc_ids {tuple(doc_ids.shape)} differ in shape")
    seg = document_segments(doc_ids)
    labels = input_ids.clone()
    crossing = torch.zeros_like(seg, dtype=torch.bool)
    crossing[:, 1:] = seg[:, 1:] != seg[:, :-1]
    labels[crossing] = ignore_index
    return labels


def document_ids_from_eos(input_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """[B, T] document ids when only the tokens are at hand: a document ends with (and includes) eos."""
    ends = (input_ids == eos_id).long()
    # The token after an eos starts a new document: shift the running count of eos by one.
    return torch.cumsum(ends, dim=1) - ends


def packed_attention_inputs(
    doc_ids: torch.Tensor, attn_implementation: str = "sdpa", dtype: torch.dtype = torch.float32
) -> dict:
    """Keyword arguments for a SmolLM3 forward on a packed batch: `model(input_ids, **inputs)`.

    sdpa gets the boolean mask, eager the additive one in the model's `dtype`. Other kernels
    (flash attention, flex) get no explicit mask: transformers detects packing from position ids
    that restart at 0 and builds the per-document mask in the form the kernel needs. That detection
    only runs without a KV cache, and SmolLM3 creates one whenever `use_cache` is on (its config
    default, even in training), silently falling back to a plain causal mask; hence
    `use_cache=False`, which a training forward never needs anyway.
    """
    positions = document_positions(doc_ids)
    if attn_implementation == "sdpa":
        mask = document_mask(doc_ids)
    elif attn_implementation == "eager":
        mask = document_mask(doc_ids, dtype=dtype)
    else:
        mask = None
    return {"attention_mask": mask, "position_ids": positions, "use_cache": False}
