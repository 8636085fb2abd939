"""Instruction and chat records from JSONL, checked, rendered with the chat template, split.

Two record shapes are accepted, one per line:

    {"instruction": "...", "input": "...", "output": "..."}      (`input` optional, may be "")
    {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}

An instruction record becomes a two-turn conversation (the instruction, followed by the input
after a blank line, as the user; the output as the assistant). A conversation is rendered with the
tokenizer's own chat template and its assistant mask (`{% generation %}` in the template), so the
loss falls exactly on the tokens the model must produce: each assistant turn's content and the
`<|im_end|>` that closes it. A message that spells one of the tokenizer's special tokens is
dropped (`control_token`): the template would read it as a marker, and transformers cannot encode
such text literally while it computes the assistant mask.

A bad record is dropped and counted under a stable reason (the names in `REASONS`); a file that
yields no usable record at all is an error that names the file and its first bad line, raised by
`check_files` before any model is loaded.
"""

from __future__ import annotations

import glob
import json
import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

IGNORE_INDEX = -100  # cross-entropy skips these targets (prompt tokens, padding)
ROLES = ("system", "user", "assistant")

REASONS = {
    "not_json": "the line is not valid JSON",
    "not_object": "the line is JSON but not an object",
    "missing_field": "neither instruction+output nor messages (or a message without role/content)",
    "bad_type": "a field has the wrong type (text fields must be strings, messages a list of objects)",
    "wrong_role": "a role other than system/user/assistant, or a system message after the first turn",
    "no_assistant": "no assistant turn to learn from",
    "empty_assistant": "an assistant turn (or an output) is empty",
    "control_token": "a message spells a special token such as <|im_start|>",
    "too_long": "longer than max_seq_len tokens once rendered",
}


class DatasetError(ValueError):
    """The data cannot be used at all; the message names the file (and line) and what was expected."""


def resolve_files(patterns: Sequence[str], root: Path | None) -> list[Path]:
    """Expand paths and globs (relative ones against `root`), in sorted order; each must match."""
    files: list[Path] = []
    for pattern in patterns:
        full = Path(pattern).expanduser()
        if not full.is_absolute():
            if root is None:
                raise DatasetError(f"finetune.data entry {pattern!r} is relative but no data_dir is known")
            full = root / full
        matches = sorted(Path(p) for p in glob.glob(str(full), recursive=True) if Path(p).is_file())
        if not matches:
            raise DatasetError(f"finetune.data entry {pattern!r} matches no file (looked for {full})")
        files.extend(m for m in matches if m not in files)
    return files


def to_messages(record: Any) -> tuple[list[dict[str, str]] | None, str | None]:
    """(messages, None) for a usable record, else (None, reason)."""
    if not isinstance(record, dict):
        return None, "not_object"
    if "messages" in record:
        messages = record["messages"]
        if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
            return None, "bad_type"
        if any("role" not in m or "content" not in m for m in messages):
            return None, "missing_field"
        if any(not isinstance(m["role"], str) or not isinstance(m["content"], str) for m in messages):
            return None, "bad_type"
        roles = [m["role"] for m in messages]
        if any(r not in ROLES for r in roles) or "system" in roles[1:]:
            return None, "wrong_role"
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        if not answers:
            return None, "no_assistant"
        if any(not a.strip() for a in answers):
            return None, "empty_assistant"
        return [{"role": m["role"], "content": m["content"]} for m in messages], None
    if "instruction" not in record or "output" not in record:
        return None, "missing_field"
    instruction, extra, output = record["instruction"], record.get("input") or "", record["output"]
    if not all(isinstance(v, str) for v in (instruction, extra, output)):
        return None, "bad_type"
    if not output.strip():
        return None, "empty_assistant"
    user = f"{instruction}\n\n{extra}" if extra.strip() else instruction
    return [{"role": "user", "content": user}, {"role": "assistant", "content": output}], None


def read_records(path: Path) -> Iterator[tuple[int, list[dict[str, str]] | None, str | None]]:
    """(line number, messages or None, drop reason or None) for each non-blank line."""
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except ValueError:
                yield number, None, "not_json"
                continue
            messages, reason = to_messages(record)
            yield number, messages, reason


def check_files(files: Sequence[Path]) -> dict[str, dict[str, int]]:
    """Structure-only pass (no tokenizer): per file, kept and dropped counts by reason.

    Raises DatasetError for an empty file or one in which no line is a usable record, naming the
    first bad line and why, so a wrong file is refused before a model is loaded.
    """
    report: dict[str, dict[str, int]] = {}
    for path in files:
        counts: Counter[str] = Counter()
        first_bad: tuple[int, str] | None = None
        for number, messages, reason in read_records(path):
            if reason is None:
                counts["kept"] += 1
            else:
                counts[reason] += 1
                first_bad = first_bad or (number, reason)
        if not counts:
            raise DatasetError(f"{path}: the file is empty (expected one JSON record per line)")
        if not counts["kept"]:
            line, reason = first_bad  # type: ignore[misc]
            raise DatasetError(
                f"{path}: no usable record; line {line}: {reason} ({REASONS[reason]}). Expected lines like "
                '{"instruction": ..., "input": ..., "output": ...} or {"messages": [{"role": ..., "content": ...}]}'
            )
        report[str(path)] = dict(counts)
    return report


@dataclass
class Example:
    """One rendered conversation: token ids, targets (IGNORE_INDEX off the assistant's tokens) and,
    for sample generations, the conversation up to its last answer and that answer."""

    input_ids: list[int]
    labels: list[int]
    prompt: list[dict[str, str]]
    reference: str
    origin: str  # "file:line"


@dataclass
class InstructData:
    train: list[Example]
    val: list[Example]
    dropped: Counter = field(default_factory=Counter)
    read: int = 0
    heldout: list[Example] = field(default_factory=list)  # set aside for judging the result: never trained or validated on

    def summary(self) -> dict[str, Any]:
        return {
            "records_read": self.read,
            "train_records": len(self.train),
            "val_records": len(self.val),
            "heldout_records": len(self.heldout),
            "dropped": dict(sorted(self.dropped.items())),
            "train_target_tokens": sum(sum(1 for t in e.labels if t != IGNORE_INDEX) for e in self.train),
        }


def render(messages: list[dict[str, str]], tokenizer: Any) -> tuple[list[int], list[int]]:
    """Token ids and targets of one conversation through the tokenizer's chat template."""
    out = tokenizer.apply_chat_template(
        messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True
    )
    ids, mask = list(out["input_ids"]), list(out["assistant_masks"])
    if not any(mask):
        raise DatasetError(
            "the tokenizer's chat template marks no assistant tokens: it needs {% generation %} around assistant "
            "content (see smolforge.tasks.curate.tokenizer.CHAT_TEMPLATE)"
        )
    return ids, [t if m else IGNORE_INDEX for t, m in zip(ids, mask, strict=True)]


def load_data(
    files: Sequence[Path], tokenizer: Any, *, max_seq_len: int, val_fraction: float, max_val: int, seed: int,
    holdout: int = 0,
) -> InstructData:
    """Read, check, render and split. The split is a seeded shuffle of the kept records, so the
    same files and seed always hold out the same records: the first `holdout` of the shuffle are
    set aside (`heldout`), the next ones validate, the rest train."""
    examples: list[Example] = []
    dropped: Counter[str] = Counter()
    read = 0
    specials = [t for t in tokenizer.all_special_tokens if t]
    for path in files:
        for number, messages, reason in read_records(Path(path)):
            read += 1
            if messages is None:
                dropped[reason] += 1
                continue
            if any(t in m["content"] for m in messages for t in specials):
                dropped["control_token"] += 1
                continue
            ids, labels = render(messages, tokenizer)
            if len(ids) > max_seq_len:
                dropped["too_long"] += 1
                continue
            last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
            examples.append(Example(ids, labels, messages[:last], messages[last]["content"], f"{path}:{number}"))
    if len(examples) < holdout + 2:
        raise DatasetError(
            f"only {len(examples)} usable record(s) in {[str(f) for f in files]} (dropped: {dict(dropped)}); "
            f"training needs at least one record to train on and one to validate on, besides {holdout} held out"
        )
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    heldout = [examples[i] for i in order[:holdout]]
    order = order[holdout:]
    n_val = min(max_val, max(1, round(len(order) * val_fraction)), len(order) - 1)
    val = [examples[i] for i in order[:n_val]]
    train = [examples[i] for i in order[n_val:]]
    return InstructData(train=train, val=val, dropped=dropped, read=read, heldout=heldout)


def collate(batch: Sequence[Example], pad_id: int) -> dict[str, Any]:
    """Right-padded tensors; padded positions are masked out of attention and of the loss."""
    import torch

    width = max(len(e.input_ids) for e in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(batch), width), dtype=torch.long)
    for row, e in enumerate(batch):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        attention[row, :n] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": attention}
