"""lm-evaluation-harness through its Python API, on tasks written from the held-out data.

lm-eval ships no task data, and its standard tasks download theirs from the hub; an offline run
needs local task YAMLs with `dataset_path: json`. Two are written per evaluation, pointing at the
evaluation data's files: `smolforge_cloze` (multiple choice) and `smolforge_rolling`
(`loglikelihood_rolling`: word and byte perplexity, bits per byte). Users add folders of their own
YAMLs (`evaluate.lm_eval.include_path`) and name their tasks, or standard tasks when they have the
hub (indexing lm-eval's built-in tasks costs ~9 s, so it happens only when a named task is not
found in the included folders). A metric lm-eval lacks belongs in a task's `process_results`
(`!function` in the YAML): its fallback, `evaluate.load`, needs the hub for the metric's script.

The cloze's headline accuracy (`cloze_acc`) is lm-eval's `acc_mutual_info`: each choice scored by
log P(choice | context) - log P(choice), so a choice made of common words does not win on its own
likelihood (the "surface form competition" of Holtzman et al. 2021); a model that ignores the
context sits at chance, and one that reads it rises above. Raw `acc` and `acc_norm` are logged too.

YAMLs are parsed before any model is loaded: one that does not parse is named with its line.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from smolforge.tasks.evaluate.config import EvaluateConfig
from smolforge.tasks.evaluate.registry import EvaluationError, Subject, TaskOutput, evaluation_task

CLOZE, ROLLING = "smolforge_cloze", "smolforge_rolling"


class _TaskYamlLoader(yaml.SafeLoader):
    """lm-eval's YAMLs use tags (`!function utils.process_docs`) a plain safe loader refuses."""


_TaskYamlLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def check_task_yamls(folders: Sequence[str]) -> list[str]:
    """The task names the YAMLs under `folders` define; a missing folder, a YAML that does not parse
    or one without a `task` (or `group`) is an EvaluationError naming the file (and line)."""
    names = []
    for folder in folders:
        root = Path(folder).expanduser()
        if not root.is_dir():
            raise EvaluationError(f"evaluate.lm_eval.include_path: {folder!r} is not a folder ({root.resolve()})")
        for path in sorted(root.rglob("*.yaml")):
            try:
                doc = yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskYamlLoader)  # noqa: S506 - SafeLoader subclass
            except yaml.YAMLError as exc:
                mark = getattr(exc, "problem_mark", None)
                where = f"{path}:{mark.line + 1}" if mark is not None else str(path)
                reason = getattr(exc, "problem", None) or str(exc)
                raise EvaluationError(f"{where}: the lm-eval task YAML does not parse: {reason}") from None
            if not isinstance(doc, dict) or not (doc.get("task") or doc.get("group")):
                raise EvaluationError(f"{path}: an lm-eval task YAML needs a `task` (or `group`) name at its top level")
            task = doc.get("task") or doc.get("group")
            names.extend(task if isinstance(task, list) else [str(task)])
    return names


def write_task_yamls(folder: Path, evalset: Path) -> list[str]:
    """The two generated tasks, as YAMLs reading the evaluation data's JSONL files."""
    common = {"dataset_path": "json", "test_split": "test"}
    cloze = {
        "task": CLOZE, **common, "dataset_kwargs": {"data_files": {"test": str(evalset / "lm_eval" / "cloze.jsonl")}},
        "output_type": "multiple_choice", "doc_to_text": "context", "doc_to_choice": "choices", "doc_to_target": "gold",
        "target_delimiter": " ",
        "metric_list": [{"metric": m, "aggregation": "mean", "higher_is_better": True} for m in ("acc", "acc_norm", "acc_mutual_info")],
    }
    rolling = {
        "task": ROLLING, **common, "dataset_kwargs": {"data_files": {"test": str(evalset / "lm_eval" / "rolling.jsonl")}},
        "output_type": "loglikelihood_rolling", "doc_to_text": "", "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
    }
    folder.mkdir(parents=True, exist_ok=True)
    for spec in (cloze, rolling):
        (folder / f"{spec['task']}.yaml").write_text(yaml.safe_dump(spec, sort_keys=False), encoding="utf-8")
    return [CLOZE, ROLLING]


def run_harness(subject: Subject, include: Sequence[str], tasks: Sequence[str], config: EvaluateConfig) -> dict[str, Any]:
    """`simple_evaluate` on the in-memory model: lm-eval's results per task."""
    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    settings = config.lm_eval
    manager = TaskManager(include_path=list(include), include_defaults=False)
    missing = [t for t in tasks if t not in manager.all_tasks]
    if missing:  # standard tasks: index lm-eval's own (they need the hub or its cache for data)
        manager = TaskManager(include_path=list(include), include_defaults=True)
        unknown = [t for t in missing if t not in manager.all_tasks]
        if unknown:
            raise EvaluationError(
                f"evaluate.lm_eval.tasks: no lm-eval task named {unknown} in {list(include)} or lm-eval's own tasks"
            )
    model = HFLM(pretrained=subject.model, tokenizer=subject.tokenizer, device=str(subject.device), batch_size=settings.batch_size)
    # bootstrap_iters=0: no bootstrapped stderr (100,000 resamples per metric by default, minutes on a CPU)
    out = simple_evaluate(
        model=model, tasks=list(tasks), task_manager=manager, limit=settings.limit, log_samples=False, bootstrap_iters=0
    )
    return out["results"]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


@evaluation_task("lm_eval", "lm-evaluation-harness: held-out cloze, rolling loglikelihood, your tasks", "https://github.com/EleutherAI/lm-evaluation-harness")
def lm_eval(subject: Subject, evalset: Path, config: EvaluateConfig) -> TaskOutput:
    settings = config.lm_eval
    with tempfile.TemporaryDirectory(prefix="smolforge-lm-eval-") as scratch:
        generated = write_task_yamls(Path(scratch), evalset)
        results = run_harness(subject, [scratch, *settings.include_path], [*generated, *settings.tasks], config)
    rows, metrics = [], {}
    for task, values in results.items():
        for key, value in values.items():
            number = _number(value)
            if number is None or "stderr" in key:
                continue
            metric = key.split(",")[0]
            rows.append({"task": task, "metric": metric, "value": number, "stderr": _number(values.get(f"{metric}_stderr,{key.split(',', 1)[-1]}"))})
            metrics[f"{task}.{metric}"] = number
    cloze = results.get(CLOZE, {})
    if "acc_mutual_info,none" in cloze:
        metrics["cloze_acc"] = float(cloze["acc_mutual_info,none"])
        items = sum(1 for line in (evalset / "lm_eval" / "cloze.jsonl").read_text(encoding="utf-8").splitlines() if line.strip())
        metrics["cloze_items"] = float(min(items, settings.limit or items))
    return TaskOutput(metrics=metrics, table=rows, samples=[])
