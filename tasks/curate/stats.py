"""Per-step counts with datatrove's counter names, the funnel table and its chart.

Every shard task returns `shard_metrics(...)`; the corpus step adds them up per step. Names follow
datatrove's stats: `docs_in` (total), `docs_out` (forwarded), `drops` by reason.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from smolforge.tasks.curate.documents import Doc, StepResult

FUNNEL_STEPS = ("extract", "language", "quality", "pii", "dedup")


def shard_metrics(docs_in: int, chars_in: int, result: StepResult, **extra: Any) -> dict[str, Any]:
    return {
        "docs_in": docs_in,
        "chars_in": chars_in,
        "docs_out": len(result.kept),
        "chars_out": sum(len(d.text) for d in result.kept),
        "drops": dict(Counter(d.reason for d in result.dropped)),
        "languages": dict(Counter(d.language for d in result.kept if d.language)),
        **extra,
    }


def doc_chars(docs: list[Doc]) -> int:
    return sum(len(d.text) for d in docs)


def add_up(metrics: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum shard metrics: numbers add, nested dicts (drops, languages) add per key."""
    total: dict[str, Any] = {}
    for m in metrics:
        for key, value in m.items():
            if isinstance(value, dict):
                bucket = total.setdefault(key, Counter())
                bucket.update(value)
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                total[key] = total.get(key, 0) + value
    return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in total.items()}


def funnel_rows(per_step: dict[str, dict[str, Any]], tokens: int) -> list[dict[str, Any]]:
    """One row per step in funnel order; the last row is packing, the only one that counts tokens."""
    rows = []
    for step in FUNNEL_STEPS:
        m = per_step.get(step)
        if not m:
            continue
        rows.append(
            {
                "step": step,
                "docs_in": m.get("docs_in", 0),
                "docs_out": m.get("docs_out", 0),
                "dropped": m.get("docs_in", 0) - m.get("docs_out", 0),
                "chars_in": m.get("chars_in", 0),
                "chars_out": m.get("chars_out", 0),
                "tokens_out": None,
                "top_reasons": ", ".join(
                    f"{r} {n}" for r, n in sorted(m.get("drops", {}).items(), key=lambda kv: -kv[1])[:3]
                ),
            }
        )
    if rows:
        last = rows[-1]
        rows.append(
            {
                "step": "pack",
                "docs_in": last["docs_out"],
                "docs_out": last["docs_out"],
                "dropped": 0,
                "chars_in": last["chars_out"],
                "chars_out": last["chars_out"],
                "tokens_out": tokens,
                "top_reasons": "",
            }
        )
    return rows


def plot_funnel(rows: list[dict[str, Any]], path: Path) -> None:
    """Documents and characters left after each step, and each step's main drop reasons."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_docs, ax_chars, ax_why) = plt.subplots(
        1, 3, figsize=(14, 0.55 * len(rows) + 1.8), gridspec_kw={"width_ratios": [3, 2, 3]}, sharey=True
    )
    y = list(range(len(rows)))[::-1]
    start_docs = rows[0]["docs_in"] if rows else 0
    ax_docs.barh(y, [start_docs] * len(rows), color="#e5e7eb", label="documents in at the start")
    ax_docs.barh(y, [r["docs_out"] for r in rows], color="#2563eb", label="kept after the step")
    for yi, r in zip(y, rows):
        dropped = f"  (−{r['dropped']:,})" if r["dropped"] else ""
        ax_docs.text(r["docs_out"], yi, f" {r['docs_out']:,}{dropped}", va="center", fontsize=8)
    ax_docs.set_yticks(y, [r["step"] for r in rows])
    ax_docs.set_xlabel("documents")
    ax_docs.set_title("Curation funnel")
    ax_docs.legend(loc="lower right", fontsize=7)
    mchars = [r["chars_out"] / 1e6 for r in rows]
    ax_chars.barh(y, mchars, color="#16a34a")
    for yi, v, r in zip(y, mchars, rows):
        tokens = f"\n {r['tokens_out']:,} tokens" if r["tokens_out"] else ""
        ax_chars.text(v, yi, f" {v:.2f} M{tokens}", va="center", fontsize=8)
    ax_chars.set_xlabel("characters kept (millions)")
    ax_chars.set_title("characters")
    ax_why.set_title("main drop reasons", loc="left")
    ax_why.axis("off")
    ax_why.set_xlim(0, 1)
    for yi, r in zip(y, rows):
        reasons = r["top_reasons"].split(", ") if r["top_reasons"] else []
        ax_why.text(0, yi, "\n".join(reasons), va="center", fontsize=7.5, family="monospace")
    for ax in (ax_docs, ax_chars):
        ax.spines[["top", "right"]].set_visible(False)
        ax.margins(x=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
