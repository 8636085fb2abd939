"""Perplexity and bits per byte of held-out documents, per corpus source.

The held-out documents are stored as text (decoded from the corpus's `val` split), and each model
reads them through its own tokenizer: a model with another vocabulary is scored on the same
documents. Token-level loss and perplexity depend on the tokenizer (a coarser one has fewer,
harder tokens), so they compare only models that share one; bits per byte, the summed loss in bits
over the document's UTF-8 bytes, compares any two models (as in Gao et al. 2020, The Pile).

Each document is its own sequence, ending with the model's eos token, as in pretraining, where a
position sees only its own document: its first token is context (never a target) and its eos is
a target. A document longer than `seq_len` is cut into windows that overlap by one token, so
every later token is a target exactly once. The first token's bytes stay in the byte count (a few
bytes of a document, the same for every model that shares a tokenizer).

The loop is kept bare on purpose: batches are tensors built before it, the loss is summed on the
device and read once per source (`bench/evaluate.py` holds it to >= 0.95x a plain no_grad loop).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from smolforge.tasks.evaluate.config import EvaluateConfig
from smolforge.tasks.evaluate.registry import EvaluationError, Subject, TaskOutput, evaluation_task

IGNORE_INDEX = -100
FOLDER = "perplexity"  # in the evaluation data: one <source>.jsonl of {"text": ...} per source


def document_windows(token_lists: Sequence[Sequence[int]], seq_len: int) -> list[tuple[list[int], list[int]]]:
    """(inputs, targets) windows of at most `seq_len` tokens: a document of n tokens gives n - 1
    targets, each once (windows start every `seq_len` tokens and read one more as the last target)."""
    windows = []
    for ids in token_lists:
        for start in range(0, max(len(ids) - 1, 0), seq_len):
            chunk = list(ids[start : start + seq_len + 1])
            if len(chunk) >= 2:
                windows.append((chunk[:-1], chunk[1:]))
    return windows


def make_batches(windows: Sequence[tuple[list[int], list[int]]], batch_size: int, pad_id: int) -> list[dict[str, torch.Tensor]]:
    """Right-padded batches, longest windows first (similar lengths share a batch: little padding)."""
    ordered = sorted(windows, key=lambda w: -len(w[0]))
    batches = []
    for i in range(0, len(ordered), batch_size):
        group = ordered[i : i + batch_size]
        width = len(group[0][0])
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        targets = torch.full((len(group), width), IGNORE_INDEX, dtype=torch.long)
        attention = torch.zeros((len(group), width), dtype=torch.long)
        for row, (inputs, labels) in enumerate(group):
            ids[row, : len(inputs)] = torch.tensor(inputs)
            targets[row, : len(labels)] = torch.tensor(labels)
            attention[row, : len(inputs)] = 1
        batches.append({"input_ids": ids, "attention_mask": attention, "targets": targets})
    return batches


@torch.inference_mode()
def summed_nll(model: torch.nn.Module, batches: Sequence[dict[str, torch.Tensor]], device: Any = "cpu") -> tuple[float, int]:
    """(summed next-token loss in nats, number of targets) over `batches`."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for batch in batches:
        targets = batch["targets"].to(device)
        logits = model(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)).logits
        total += F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
        count += int((targets != IGNORE_INDEX).sum())
    return float(total), count


def encode_documents(texts: Sequence[str], tokenizer: Any) -> list[list[int]]:
    """Each text through the model's tokenizer, without added specials, then its eos."""
    if tokenizer.eos_token_id is None:
        raise EvaluationError(f"tokenizer {tokenizer.name_or_path!r} has no eos token to end documents with")
    encoded = tokenizer(list(texts), add_special_tokens=False)["input_ids"]
    return [list(ids) + [tokenizer.eos_token_id] for ids in encoded]


def score_texts(model: torch.nn.Module, tokenizer: Any, texts: Sequence[str], seq_len: int, batch_size: int, device: Any = "cpu") -> dict[str, float]:
    """Loss per token, perplexity and bits per byte of `texts` under `model`."""
    batches = make_batches(document_windows(encode_documents(texts, tokenizer), seq_len), batch_size, _pad_id(tokenizer))
    nll, tokens = summed_nll(model, batches, device)
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    if tokens == 0 or n_bytes == 0:
        raise EvaluationError("no tokens to score: the held-out documents are empty")
    loss = nll / tokens
    return {
        "loss": loss, "perplexity": math.exp(min(loss, 700.0)), "bits_per_byte": nll / math.log(2) / n_bytes,
        "tokens": float(tokens), "bytes": float(n_bytes), "documents": float(len(texts)),
    }


def _pad_id(tokenizer: Any) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def read_texts(path: Path) -> list[str]:
    return [json.loads(line)["text"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@evaluation_task(
    "perplexity",
    "Perplexity and bits per byte per source (held-out split)",
    "https://arxiv.org/abs/2101.00027",
)
def perplexity(subject: Subject, evalset: Path, config: EvaluateConfig) -> TaskOutput:
    """One row per source; the totals over all sources weight each byte (and token) equally."""
    settings = config.perplexity
    rows, nll_bits, n_bytes, nll_nats, tokens = [], 0.0, 0.0, 0.0, 0.0
    for path in sorted((evalset / FOLDER).glob("*.jsonl")):
        scores = score_texts(subject.model, subject.tokenizer, read_texts(path), settings.seq_len, settings.batch_size, subject.device)
        rows.append({"source": path.stem, **scores})
        nll_nats += scores["loss"] * scores["tokens"]
        tokens += scores["tokens"]
        nll_bits += scores["bits_per_byte"] * scores["bytes"]
        n_bytes += scores["bytes"]
    if not rows:
        raise EvaluationError(f"{evalset / FOLDER}: no held-out documents of any source")
    metrics = {"bits_per_byte": nll_bits / n_bytes, "loss": nll_nats / tokens, "perplexity": math.exp(min(nll_nats / tokens, 700.0))}
    for r in rows:
        metrics[f"bits_per_byte.{r['source']}"] = r["bits_per_byte"]
        metrics[f"perplexity.{r['source']}"] = r["perplexity"]
    return TaskOutput(metrics=metrics, table=rows)
