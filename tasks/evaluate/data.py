"""The held-out data every model of a run is scored on, built once per corpus, records and settings.

* `perplexity/<source>.jsonl`: the first documents of each source's `val` split, decoded to text
  (so a model with another tokenizer reads the same documents).
* `chat.jsonl`: the instruction and chat records fine-tuning held out, found by the very call
  fine-tuning makes (`finetune.data.load_data`, same files, seed, share and length cap), so no
  evaluated record was trained on.
* `lm_eval/cloze.jsonl`: a four-way multiple-choice cloze. Held-out documents are cut into
  passages (`context_words` + twice `continuation_words` words), and each passage at several word
  positions (so a document gives many items); the true next words compete with three spans of the
  same number of words taken from other passages of the same source and language, so neither the
  length, the language nor the register gives the answer away: only the fit to the context does.
* `lm_eval/rolling.jsonl`: held-out documents (capped in words) for lm-eval's
  `loglikelihood_rolling` (word and byte perplexity, bits per byte as lm-eval computes them).

An evaluation set that ends up empty, or a cloze with fewer than 100 items, is an error that says
which and how to get more.
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path
from typing import Any

from smolforge.tasks.curate.langid import identify
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.evaluate.config import EvaluationData
from smolforge.tasks.evaluate.perplexity import FOLDER as PERPLEXITY_FOLDER
from smolforge.tasks.evaluate.registry import EvaluationError
from smolforge.tasks.finetune.data import DatasetError, load_data
from smolforge.tasks.train.data import CorpusSources

MIN_CLOZE_ITEMS = 100
CHOICES = 4


def held_out_texts(corpus: Path, split: str = "val") -> tuple[dict[str, list[str]], Any]:
    """Every source's documents of `split` (`val`: held out) as text, eos dropped, and the corpus's
    tokenizer."""
    sources = CorpusSources.from_corpus_json(corpus)
    tokenizer = load_tokenizer(str(sources.tokenizer))
    texts: dict[str, list[str]] = {}
    for name, source in sources.items():
        tokens, offsets = source.split(split)
        docs = []
        for i in range(len(offsets) - 1):
            ids = [int(t) for t in tokens[int(offsets[i]) : int(offsets[i + 1])] if int(t) != source.eos_id]
            text = tokenizer.decode(ids)
            if text.strip():
                docs.append(text)
        texts[name] = docs
    return texts, tokenizer


def passages(words: list[str], length: int) -> list[list[str]]:
    """A document cut into consecutive passages of `length` words (a short tail is dropped)."""
    return [words[i : i + length] for i in range(0, len(words) - length + 1, length)]


def cloze_items(texts: dict[str, list[str]], s: EvaluationData) -> list[dict[str, Any]]:
    """Multiple-choice items (`context`, `choices`, `gold`), seeded; see the module docstring."""
    rng = random.Random(s.seed)
    length = s.context_words + s.continuation_words * 2
    groups: dict[tuple[str, str], list[list[str]]] = defaultdict(list)
    for source, docs in texts.items():
        for text in docs:
            for passage in passages(text.split(), length):
                groups[(source, identify(" ".join(passage))[0])].append(passage)
    items = []
    for (source, language), group in sorted(groups.items()):
        if len(group) < 2:  # distractors must come from other passages
            continue
        for index, words in enumerate(group):
            cuts = range(s.context_words, len(words) - s.continuation_words + 1)
            step = max(1, len(cuts) // s.cuts_per_passage)
            for cut in list(cuts)[::step][: s.cuts_per_passage]:
                true = words[cut : cut + s.continuation_words]
                distractors = []
                for _ in range(CHOICES - 1):
                    other = group[rng.choice([j for j in range(len(group)) if j != index])]
                    start = rng.randrange(0, len(other) - s.continuation_words + 1)
                    distractors.append(other[start : start + s.continuation_words])
                choices = [" ".join(true), *(" ".join(d) for d in distractors)]
                order = list(range(CHOICES))
                rng.shuffle(order)
                items.append({
                    "context": " ".join(words[cut - s.context_words : cut]),
                    "choices": [choices[k] for k in order],
                    "gold": order.index(0),
                    "source": source,
                    "language": language,
                })
    rng.shuffle(items)
    if len(items) < MIN_CLOZE_ITEMS:
        raise EvaluationError(
            f"the held-out passages give only {len(items)} cloze items (need at least {MIN_CLOZE_ITEMS}): raise "
            "evaluate.lm_eval.cuts_per_passage, lower context_words or continuation_words, or pack a larger val "
            "split (curate.pack.val_fraction)"
        )
    return items[: s.cloze_items]


def rolling_documents(texts: dict[str, list[str]], s: EvaluationData) -> list[str]:
    """Documents taken from the sources in turn, each capped at `rolling_words` words."""
    queues = {name: list(docs) for name, docs in sorted(texts.items())}
    picked: list[str] = []
    while len(picked) < s.rolling_docs and any(queues.values()):
        for docs in queues.values():
            if docs and len(picked) < s.rolling_docs:
                picked.append(" ".join(docs.pop(0).split()[: s.rolling_words]))
    return picked


def capped(docs: list[str], words: int) -> list[str]:
    """The documents in order until `words` words in all; the last one cut (at a word boundary,
    whitespace kept, so its bytes are those of the text scored)."""
    kept, left = [], words
    for text in docs:
        if left <= 0:
            break
        pieces = text.split()
        if len(pieces) > left:
            end = 0
            for piece in pieces[:left]:
                end = text.index(piece, end) + len(piece)
            text = text[:end]
        kept.append(text)
        left -= len(pieces)
    return kept


def held_out_records(files: list[Path], tokenizer: Any, split: dict[str, Any], limit: int) -> list[dict[str, Any]]:
    """Fine-tuning's held-out records (the same call, so the same records), as whole conversations."""
    try:
        loaded = load_data(files, tokenizer, **split)
    except DatasetError as exc:
        raise EvaluationError(f"chat evaluation: {exc}") from None
    return [{"messages": [*e.prompt, {"role": "assistant", "content": e.reference}], "origin": e.origin} for e in loaded.val[:limit]]


def _write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def build_evaluation_data(
    out: Path, corpus: Path, chat_files: list[Path], chat_split: dict[str, Any] | None, settings: EvaluationData
) -> dict[str, Any]:
    """Write the held-out sets the configured tasks read into `out`; return their sizes."""
    texts, tokenizer = held_out_texts(corpus)
    summary: dict[str, Any] = {}
    if not any(texts.values()):
        raise EvaluationError(f"{corpus}: no source has a held-out (val) document; set curate.pack.val_fraction > 0")
    if "perplexity" in settings.tasks:
        for source, docs in texts.items():
            if docs:
                kept = capped(docs[: settings.perplexity_docs], settings.perplexity_words)
                _write_jsonl(out / PERPLEXITY_FOLDER / f"{source}.jsonl", [{"text": t} for t in kept])
        summary["perplexity_docs"] = {s: min(len(d), settings.perplexity_docs) for s, d in texts.items()}
    if "lm_eval" in settings.tasks:
        items = cloze_items(texts, settings)
        _write_jsonl(out / "lm_eval" / "cloze.jsonl", items)
        _write_jsonl(out / "lm_eval" / "rolling.jsonl", [{"text": t} for t in rolling_documents(texts, settings)])
        summary["cloze_items"] = len(items)
        summary["cloze_groups"] = sorted({f"{i['source']}/{i['language']}" for i in items})
    if "chat" in settings.tasks:
        if chat_split is None:
            raise EvaluationError("evaluate.tasks names chat, but there is no finetune section whose held-out records it reads")
        records = held_out_records(chat_files, tokenizer, chat_split, settings.chat_records)
        _write_jsonl(out / "chat.jsonl", records)
        summary["chat_records"] = len(records)
    return summary
