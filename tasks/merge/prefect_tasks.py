"""Merging as cached Prefect tasks.

* `heldout_data`: the selection and test records, keyed by fine-tuning's files and split settings
  (and the model whose tokenizer renders them): every ingredient and merge is judged on the same.
* `unload_lora`: a LoRA adapter ingredient folded into its base, once per adapter and base.
* `merge_step`: one merge, keyed by the ingredients' keys (in order), the method's settings, the
  base's key and mergekit's version: changing one method re-makes only that merge.
* `score_step`: one model's selection and test loss, keyed by the model's and the records' keys.
* `merge_report`: the comparison of every ingredient and merge (table, chart): the `merge` MLflow
  run, keyed by what it compares.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smolforge import tracking
from smolforge.artifacts import ArtifactRef
from smolforge.model_source import model_folder
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step
from smolforge.tasks.merge.config import MergeMethod

_HERE = Path(__file__).parent


@artifact_step("merge-data", code=(_HERE / "score.py",))
def heldout_data(out: Path, files: dict[str, str], split: dict[str, Any], tokenizer_of: ArtifactRef, runtime: Runtime) -> dict[str, Any]:
    """`selection.jsonl` and `test.jsonl`: fine-tuning's held-out records (`files`: path -> content
    hash, `split`: `FinetuneConfig.split_settings()`), halved."""
    from smolforge.tasks.curate.tokenizer import load_tokenizer
    from smolforge.tasks.merge.score import write_heldout

    return write_heldout([Path(p) for p in files], load_tokenizer(str(model_folder(tokenizer_of.path))), split, out)


@artifact_step("lora-merged", code=(_HERE / "mergekit_run.py",))
def unload_lora(out: Path, base: ArtifactRef, adapter: ArtifactRef, runtime: Runtime) -> dict[str, Any]:
    """`model/`: the adapter in `adapter`'s folder folded into `base` (mergekit cannot read SmolLM3
    adapters itself)."""
    from smolforge.tasks.merge.mergekit_run import unload_adapter

    unload_adapter(model_folder(base.path), _adapter_folder(adapter.path), out / "model")
    return {}


def _adapter_folder(folder: Path) -> Path:
    for candidate in (folder / "adapter", folder / "model", folder):
        if (candidate / "adapter_config.json").is_file():
            return candidate
    raise FileNotFoundError(f"{folder} holds no LoRA adapter (adapter_config.json)")


@artifact_step("merged", code=(_HERE / "mergekit_run.py",), tags=["gpu"])
def merge_step(
    out: Path, ingredients: list[ArtifactRef], method: MergeMethod, base: ArtifactRef | None, dtype: str, mergekit: str,
    runtime: Runtime,
) -> dict[str, Any]:
    """`model/`: `ingredients` merged by `method` (on `base` for task-vector methods) with mergekit
    `mergekit` (its version: a new mergekit may merge differently, so it is part of the key)."""
    from smolforge.tasks.merge.mergekit_run import merge_models

    folders = [model_folder(i.path) for i in ingredients]
    result = merge_models(method, folders, None if base is None else model_folder(base.path), out / "model", dtype)
    return {"merge_seconds": result["merge_seconds"], "method": method.method}


@artifact_step("merge-score", code=(_HERE / "score.py",))
def score_step(out: Path, model: ArtifactRef, data: ArtifactRef, batch_size: int, device: str, runtime: Runtime) -> dict[str, Any]:
    """`scores.json`: `model`'s assistant-token loss on `data`'s selection and test records."""
    from smolforge.tasks.merge.score import score_model

    scores = score_model(model_folder(model.path), data.path, batch_size, device)
    (out / "scores.json").write_text(json.dumps(scores, indent=2), encoding="utf-8")
    return scores


def comparison_chart(rows: list[dict[str, Any]], path: Path) -> None:
    """Selection and test loss of every ingredient and merge, side by side."""
    import matplotlib

    matplotlib.use("Agg")  # files only, and safe off the main thread
    import matplotlib.pyplot as plt

    labels = [r["model"] for r in rows]
    x = range(len(rows))
    fig, ax = plt.subplots(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.6))
    ax.bar([i - 0.2 for i in x], [r["selection_loss"] for r in rows], width=0.4, label="selection", color="#4c72b0")
    ax.bar([i + 0.2 for i in x], [r["test_loss"] for r in rows], width=0.4, label="test", color="#dd8452")
    lows = [min(r["selection_loss"], r["test_loss"]) for r in rows]
    highs = [max(r["selection_loss"], r["test_loss"]) for r in rows]
    span = max(highs) - min(lows)
    ax.set_ylim(max(0.0, min(lows) - span - 0.05), max(highs) + 0.25 * span + 0.05)  # differences, not the common part
    ax.set_xticks(list(x), labels, rotation=35, ha="right", fontsize=8)
    ax.set_ylabel("assistant-token loss (lower is better)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


@artifact_step("merge-report")
def merge_report(out: Path, rows: list[dict[str, Any]], soup: list[dict[str, Any]], models: dict[str, ArtifactRef], runtime: Runtime) -> dict[str, Any]:
    """`comparison.json` (every ingredient and merge: kind, selection and test loss), the greedy
    soup's steps, `comparison.png`; the `merge` MLflow run holding them."""
    import mlflow

    comparison_chart(rows, out / "comparison.png")
    (out / "comparison.json").write_text(json.dumps({"rows": rows, "greedy_soup": soup}, indent=2), encoding="utf-8")
    tags = {f"smolforge.merge.{tracking.label_name(r['model'])}": models[r["model"]].key for r in rows}
    with tracking.run("merge", runtime.experiment, runtime.parent_run_id, tags=tags) as active:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        mlflow.log_table({c: [r.get(c) for r in rows] for c in columns}, "comparison.json")
        if soup:
            mlflow.log_table({c: [s[c] for s in soup] for c in soup[0]}, "greedy_soup.json")
        mlflow.log_artifact(str(out / "comparison.png"))
        mlflow.log_metrics({
            f"{tracking.label_name(r['model'])}.{k}": float(r[k]) for r in rows for k in ("selection_loss", "test_loss")
        })
        return {"mlflow_run_id": active.info.run_id, "models": len(rows)}
