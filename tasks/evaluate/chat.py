"""Held-out instruction and chat answers: the loss on the assistant's tokens, and greedy answers
scored against the references with BLEU and chrF (sacrebleu), ROUGE-L (rouge-score) and exact match.

The metric libraries are called directly: `evaluate.load(...)` fetches its metric scripts from the
hub, which an offline run does not have. Conversations are rendered with the model's own chat
template and assistant mask (`finetune.data.render`), so for a model sharing fine-tuning's
tokenizer the records and masks are exactly those fine-tuning validated on.

ROUGE-L uses rouge-score's default tokenizer, which keeps only ASCII letters and digits: answers in
other scripts score 0 there, and chrF (character n-grams) is the metric to read for them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from smolforge.tasks.registry.serving import turn_stop_ids
from smolforge.tasks.evaluate.config import EvaluateConfig
from smolforge.tasks.evaluate.registry import EvaluationError, Subject, TaskOutput, evaluation_task
from smolforge.tasks.finetune.data import Example, collate, render
from smolforge.tasks.finetune.train import masked_loss


def answer_scores(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Corpus BLEU and chrF (0-100), mean ROUGE-L F1 (0-1) and exact match share (0-1)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    if len(hypotheses) != len(references) or not references:
        raise ValueError(f"need as many hypotheses as references, at least one; got {len(hypotheses)} and {len(references)}")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references, strict=True)]
    exact = [" ".join(h.split()) == " ".join(r.split()) for h, r in zip(hypotheses, references, strict=True)]
    return {
        "bleu": sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score,
        "chrf": sacrebleu.corpus_chrf(list(hypotheses), [list(references)]).score,
        "rouge_l": sum(rouge) / len(rouge),
        "exact_match": sum(exact) / len(exact),
    }


@torch.inference_mode()
def generate_answers(subject: Subject, prompts: Sequence[list[dict[str, str]]], max_new_tokens: int) -> list[str]:
    """Greedy answers, one prompt at a time (no padding to get wrong in a left-to-right model)."""
    tok, answers = subject.tokenizer, []
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    for messages in prompts:
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        ids = torch.tensor([list(ids)], device=subject.device)
        out = subject.model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=turn_stop_ids(tok), pad_token_id=pad,
        )
        answers.append(tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip())
    return answers


@torch.inference_mode()
def assistant_loss(subject: Subject, examples: Sequence[Example], batch_size: int) -> tuple[float, int]:
    """Mean loss per assistant token (nats) and the number of those tokens."""
    pad = subject.tokenizer.pad_token_id if subject.tokenizer.pad_token_id is not None else subject.tokenizer.eos_token_id
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(subject.device) for k, v in collate(examples[i : i + batch_size], pad).items()}
        loss, n = masked_loss(subject.model, batch)
        total, count = total + float(loss), count + n
    return total / max(count, 1), count


@evaluation_task("chat", "Held-out chat answers: assistant loss, BLEU, chrF, ROUGE-L, exact match", "https://github.com/mjpost/sacrebleu")
def chat(subject: Subject, evalset: Path, config: EvaluateConfig) -> TaskOutput:
    settings = config.chat
    if not getattr(subject.tokenizer, "chat_template", None):
        raise EvaluationError(
            f"chat evaluation of {subject.label}: its tokenizer ({subject.folder}) has no chat template; evaluate it "
            "without `chat` in evaluate.tasks, or give it a template"
        )
    path = evalset / "chat.jsonl"
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if not records:
        raise EvaluationError(f"{path}: no held-out chat records to evaluate on")
    examples = []
    for r in records:
        ids, labels = render(r["messages"], subject.tokenizer)
        examples.append(Example(ids, labels, r["messages"][:-1], r["messages"][-1]["content"], r["origin"]))
    loss, tokens = assistant_loss(subject, examples, settings.batch_size)
    metrics: dict[str, float] = {"chat_loss": loss, "chat_records": float(len(examples)), "chat_target_tokens": float(tokens)}
    samples: list[dict[str, Any]] = []
    answered = examples[: settings.generate]
    if answered:
        hypotheses = generate_answers(subject, [e.prompt for e in answered], settings.max_new_tokens)
        metrics.update(answer_scores(hypotheses, [e.reference for e in answered]))
        samples = [
            {"prompt": e.prompt[-1]["content"], "reference": e.reference, "answer": h, "origin": e.origin}
            for e, h in zip(answered, hypotheses, strict=True)
        ]
    return TaskOutput(metrics=metrics, table=[{k: v for k, v in metrics.items()}], samples=samples[: settings.samples])
