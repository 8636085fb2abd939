"""Evaluation as cached Prefect tasks that log to MLflow.

* `evaluation_data`: the held-out sets, keyed by the corpus, the fine-tuning records and split, and
  the data settings: every model of a run (and of later runs with the same data) reads the same.
* `evaluate_model`: one model through every configured evaluation task, keyed by the model's key,
  the evaluation settings and the data's key; its own MLflow run.
* `evaluation_report`: the comparison across the run's models (table, chart), keyed by the
  evaluations it compares; the `evaluate` MLflow run.

A task that fails (a model that does not load, a chat evaluation without a chat template) raises
before its artifact is renamed into place: nothing half-written is left under a key.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, file_hash
from smolforge.device import pick_device
from smolforge.model_source import load_causal_lm, model_folder
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step
from smolforge.tasks.evaluate import chat, harness, perplexity  # noqa: F401 - registers the evaluation tasks
from smolforge.tasks.evaluate.config import EvaluateConfig, EvaluationData
from smolforge.tasks.evaluate.data import build_evaluation_data
from smolforge.tasks.evaluate.registry import TASKS, EvaluationError, Subject
from smolforge.tasks.evaluate.report import comparison_chart, comparison_rows, name_part

_HERE = Path(__file__).parent
_TASK_CODE = tuple(_HERE / f for f in ("registry.py", "perplexity.py", "chat.py", "harness.py"))


@artifact_step("eval-data", code=(_HERE / "data.py",))
def evaluation_data(
    out: Path, corpus: ArtifactRef, chat_files: dict[str, str], chat_split: dict[str, Any] | None,
    settings: EvaluationData, runtime: Runtime,
) -> dict[str, Any]:
    """The held-out sets (see `data.py`). `chat_files` (path -> content hash) and `chat_split`
    (fine-tuning's split settings) find fine-tuning's held-out records."""
    return build_evaluation_data(out, corpus.path, [Path(p) for p in chat_files], chat_split, settings)


def load_subject(model: ArtifactRef, device: str) -> Subject:
    """The model and its tokenizer, in eval mode (a base with an unmerged adapter, as prefix and
    prompt tuning leave it, with the adapter on); a model that cannot be loaded is named with why."""
    from smolforge.tasks.curate.tokenizer import load_tokenizer

    label = f"{model.kind}:{model.key[:12]}"
    try:
        folder = model_folder(model.path)
        tokenizer = load_tokenizer(str(folder))
        loaded = load_causal_lm(folder)
    except Exception as exc:  # noqa: BLE001 - any failure to load is reported the same way, with its cause
        raise EvaluationError(f"model {label} ({model.path}) cannot be loaded: {type(exc).__name__}: {exc}") from None
    target = pick_device(device)
    return Subject(label=label, model=loaded.to(target).eval(), tokenizer=tokenizer, folder=folder, device=target)


def tokenizer_hash(folder: Path) -> str:
    """Identity of a model's tokenizer: its `tokenizer.json`'s content (or the folder's config)."""
    for name in ("tokenizer.json", "tokenizer_config.json"):
        if (folder / name).is_file():
            return file_hash(folder / name)
    return "unknown"


@artifact_step("evaluation", code=_TASK_CODE, tags=["gpu"])
def evaluate_model(out: Path, model: ArtifactRef, data: ArtifactRef, config: EvaluateConfig, runtime: Runtime) -> dict[str, Any]:
    """Every task of `config.tasks` on `model`; writes `metrics.json`, `tables.json`, `samples.json`."""
    import mlflow

    subject = load_subject(model, config.device)
    tags = {"smolforge.model_key": model.key, "smolforge.model_kind": model.kind, "smolforge.eval_data_key": data.key}
    with tracking.run("evaluate-model", runtime.experiment, runtime.parent_run_id, tags=tags) as active:
        tracking.log_params({"evaluate": config.model_dump(mode="json"), "model_key": model.key, "data_key": data.key})
        metrics: dict[str, float] = {}
        tables: dict[str, Any] = {}
        samples: list[dict[str, Any]] = []
        seconds: dict[str, float] = {}
        for name in config.tasks:
            started = time.perf_counter()
            result = TASKS[name].run(subject, data.path, config)
            seconds[name] = round(time.perf_counter() - started, 2)
            metrics.update(result.metrics)
            tables[name] = result.table
            samples += result.samples
            if result.table:
                mlflow.log_table({k: [r.get(k) for r in result.table] for k in result.table[0]}, f"tables/{name}.json")
        mlflow.log_metrics({tracking.metric_name(k): v for k, v in metrics.items()})
        mlflow.log_metrics({f"seconds.{k}": v for k, v in seconds.items()})
        if samples:
            mlflow.log_table({k: [s[k] for s in samples] for k in samples[0]}, "samples.json")
        for name, content in (("metrics.json", metrics), ("tables.json", tables), ("samples.json", samples)):
            (out / name).write_text(json.dumps(content, indent=2, ensure_ascii=False), encoding="utf-8")
        return {
            "mlflow_run_id": active.info.run_id, "seconds": round(sum(seconds.values()), 2),
            "tokenizer_hash": tokenizer_hash(subject.folder),
        }


@artifact_step("eval-report", code=(_HERE / "report.py",))
def evaluation_report(out: Path, evaluations: dict[str, ArtifactRef], runtime: Runtime) -> dict[str, Any]:
    """The comparison of `evaluations` (label -> `evaluate_model` artifact): `comparison.json`,
    `comparison.png`, and the `evaluate` MLflow run holding both and each model's run id."""
    import mlflow

    entries = []
    for label, ref in evaluations.items():
        meta = ref.manifest()["metrics"]
        metrics = json.loads((ref.path / "metrics.json").read_text(encoding="utf-8"))
        entries.append({"label": label, "tokenizer_hash": meta["tokenizer_hash"], "metrics": metrics})
    rows, note = comparison_rows(entries)
    comparison_chart(rows, out / "comparison.png")
    (out / "comparison.json").write_text(json.dumps({"rows": rows, "note": note}, indent=2), encoding="utf-8")
    with tracking.run("evaluate", runtime.experiment, runtime.parent_run_id) as active:
        tracking.set_tags({
            f"smolforge.eval_run.{name_part(label)}": ref.manifest()["metrics"]["mlflow_run_id"] for label, ref in evaluations.items()
        })
        tracking.set_tags({"smolforge.tokenizer_note": note})
        columns = list(dict.fromkeys(k for r in rows for k in r))
        mlflow.log_table({c: [r.get(c) for r in rows] for c in columns}, "comparison.json")
        mlflow.log_artifact(str(out / "comparison.png"))
        mlflow.log_metrics({
            tracking.metric_name(name_part(r["model"]), k): float(v) for r in rows for k, v in r.items() if isinstance(v, (int, float))
        })
        return {"mlflow_run_id": active.info.run_id, "models": len(rows)}
