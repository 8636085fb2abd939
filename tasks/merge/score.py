"""The held-out records every ingredient and merge is judged on, and the judging.

The records are fine-tuning's `heldout` set (`finetune.heldout_records`): set aside by the split
seed before the validation split, so no ingredient trained or early-stopped on them, whatever its
seed. Half of them select (which merge is best, which ingredients join the greedy soup), the
other half test: the number reported for a choice is never the one it was chosen on.

The score is the loss on the assistant's tokens (mean per target token, lower is better), the
objective the fine-tunes were trained on, through fine-tuning's own rendering and loss.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

SPLITS = ("selection", "test")


class ScoreError(ValueError):
    """Held-out records that cannot judge a merge (too few, none set aside)."""


def write_heldout(files: list[Path], tokenizer: Any, split: dict[str, Any], out: Path) -> dict[str, int]:
    """`selection.jsonl` and `test.jsonl` (conversations) from fine-tuning's held-out records."""
    from smolforge.tasks.finetune.data import load_data

    records = load_data(files, tokenizer, **split).heldout
    if len(records) < 2:
        raise ScoreError(
            f"finetune.heldout_records={split.get('holdout', 0)}: merging needs held-out records to select and test "
            "on (at least 2; say 64): set finetune.heldout_records"
        )
    half = len(records) // 2
    counts = {}
    for name, part in (("selection", records[:half]), ("test", records[half:])):
        rows = [{"messages": [*e.prompt, {"role": "assistant", "content": e.reference}], "origin": e.origin} for e in part]
        (out / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
        counts[name] = len(rows)
    return counts


def read_split(data: Path, split: str) -> list[list[dict[str, str]]]:
    lines = (data / f"{split}.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line)["messages"] for line in lines if line.strip()]


def score_model(folder: Path, data: Path, batch_size: int = 8, device: str = "cpu") -> dict[str, float]:
    """Assistant-token loss of the model in `folder` on each split of `data` (`selection_loss`,
    `test_loss`) and the number of records of each."""
    import torch
    from transformers import AutoModelForCausalLM

    from smolforge.device import pick_device
    from smolforge.tasks.curate.tokenizer import load_tokenizer
    from smolforge.tasks.finetune.data import Example, render
    from smolforge.tasks.finetune.train import validation_loss

    target = pick_device(device)
    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(target)
    scores: dict[str, float] = {}
    for split in SPLITS:
        examples = []
        for messages in read_split(data, split):
            ids, labels = render(messages, tokenizer)
            examples.append(Example(ids, labels, messages[:-1], messages[-1]["content"], ""))
        scores[f"{split}_loss"] = validation_loss(model, examples, batch_size, tokenizer.pad_token_id, target)
        scores[f"{split}_records"] = float(len(examples))
    return scores
