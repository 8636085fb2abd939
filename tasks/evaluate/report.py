"""One comparison across the models of a run: a table (rows = models, columns = key metrics), a
chart, and the key metrics as tags on each registered model version.

Token-level perplexity depends on the tokenizer, so the table names each model's tokenizer (by
the hash of its `tokenizer.json`, lettered A, B, ...) and states whether the perplexities compare;
bits per byte compares across tokenizers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from smolforge import tracking

# The comparison's columns, in order: (metric, header). A model lacking one shows nothing there.
COLUMNS = (
    ("bits_per_byte", "bits/byte"),
    ("perplexity", "ppl"),
    ("chat_loss", "chat loss"),
    ("bleu", "BLEU"),
    ("chrf", "chrF"),
    ("rouge_l", "ROUGE-L"),
    ("exact_match", "exact"),
    ("cloze_acc", "cloze acc"),
    ("smolforge_rolling.bits_per_byte", "lm-eval bpb"),
)


def name_part(label: str) -> str:
    """A model's label as part of an MLflow metric or tag name: MLflow refuses names that read as
    other file paths (`/tmp/model.loss`), so a folder or registry URI becomes `tmp_model`."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label).strip("_.") or "model"


def comparison_rows(evaluations: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], str]:
    """Rows of `{"model", "tokenizer", <metric>...}` and the note on what compares with what.
    `evaluations` are `{"label", "tokenizer_hash", "metrics"}` in the order to show."""
    letters: dict[str, str] = {}
    for e in evaluations:
        letters.setdefault(e["tokenizer_hash"], chr(ord("A") + len(letters)))
    rows = []
    for e in evaluations:
        row = {"model": e["label"], "tokenizer": letters[e["tokenizer_hash"]]}
        row.update({metric: e["metrics"][metric] for metric, _ in COLUMNS if metric in e["metrics"]})
        rows.append(row)
    if len(letters) <= 1:
        note = "all models share tokenizer A: token-level perplexity and losses compare across rows"
    else:
        note = (
            f"{len(letters)} tokenizers ({', '.join(sorted(letters.values()))}): perplexity and losses compare only "
            "between rows with the same tokenizer letter; bits per byte compares all rows"
        )
    return rows, note


def comparison_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """One bar panel per metric that at least one model has, models side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only, and safe off the main thread
    import matplotlib.pyplot as plt

    present = [(m, h) for m, h in COLUMNS if any(m in r for r in rows)]
    fig, axes = plt.subplots(1, max(len(present), 1), figsize=(3.2 * max(len(present), 1), 3.4), squeeze=False)
    for ax, (metric, header) in zip(axes[0], present, strict=False):
        ax.bar([r["model"] for r in rows], [r.get(metric, 0.0) for r in rows], color="#4c72b0")
        ax.set_title(header)
        ax.tick_params(axis="x", labelrotation=45, labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tag_model_versions(
    versions: list[tuple[str, str, dict[str, float], str]], metrics: list[str], report_run_id: str | None, data_key: str
) -> None:
    """Set `eval.<metric>` tags on each `(name, version, metrics, evaluation run id)`, with the
    comparison run, the model's own evaluation run and the data key: the promotion gate reads the
    full metrics from that run and compares only evaluations of the same data."""
    client = tracking.client()
    for name, version, values, model_run_id in versions:
        for metric in metrics:
            if metric in values:
                client.set_model_version_tag(name, version, f"eval.{metric}", f"{values[metric]:.4g}")
        if report_run_id:
            client.set_model_version_tag(name, version, "eval.run_id", report_run_id)
        client.set_model_version_tag(name, version, "eval.model_run_id", model_run_id)
        client.set_model_version_tag(name, version, "eval.data_key", data_key)
