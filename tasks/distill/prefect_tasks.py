"""Distillation as cached Prefect tasks: the teacher's top-k store, and the student.

The top-k store's key covers the teacher artifact, the corpus, the data plan's settings and k, and
nothing about the student, the temperature or alpha: every student trained on that plan (a second
shape, a sweep over learning rates) reads the same store and the teacher runs once.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from smolforge import tracking
from smolforge.artifacts import ArtifactRef
from smolforge.device import pick_device
from smolforge.model_source import model_folder
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step
from smolforge.tasks.distill.config import DistillConfig
from smolforge.tasks.distill.teacher import load_teacher, write_topk
from smolforge.tasks.distill.train import distill_student, plan_for
from smolforge.tasks.train.config import StageConfig
from smolforge.tasks.train.data import CorpusSources, plan_stage

_HERE = Path(__file__).parent
_TASKS = _HERE.parent
_MODELS = _TASKS.parent / "models"


@artifact_step(
    "teacher-topk",
    code=(_HERE / "teacher.py", _TASKS / "train" / "data.py", _MODELS / "masking.py"),
    tags=["gpu"],
)
def teacher_topk(
    out: Path,
    teacher: ArtifactRef,
    corpus: ArtifactRef,
    data: StageConfig,
    batch_size: int,
    grad_accum: int,
    max_epochs: float,
    seed: int,
    k: int,
    device: str,
    runtime: Runtime,
) -> dict[str, Any]:
    """The teacher's top-k log-probabilities at every position of every step of the data plan."""
    started = time.perf_counter()
    sources = CorpusSources.from_corpus_json(corpus.path / "corpus.json")
    plan = plan_stage(data, sources, batch_size, grad_accum, max_epochs=max_epochs)
    resolved = pick_device(device)
    model = load_teacher(model_folder(teacher.path), resolved)
    with tracking.run("teacher-topk", runtime.experiment, runtime.parent_run_id, tags={"smolforge.teacher_key": teacher.key}):
        import mlflow

        metrics = write_topk(model, plan, seed, k, out, resolved)
        metrics["seconds"] = round(time.perf_counter() - started, 1)
        mlflow.log_params({"k": k, "steps": plan.steps, "seq_len": plan.seq_len, "teacher_key": teacher.key})
        mlflow.log_metrics({"mean_topk_mass": metrics["mean_topk_mass"], "seconds": metrics["seconds"]})
    return metrics


@artifact_step(
    "distilled",
    code=(
        _HERE / "train.py", _HERE / "loss.py", _HERE / "teacher.py", _TASKS / "train" / "data.py",
        _TASKS / "train" / "loop.py", _TASKS / "train" / "schedule.py", _MODELS / "architecture.py",
        _MODELS / "masking.py", _MODELS / "optim.py",
    ),
    tags=["gpu"],
    retries=1,
)
def distill_stage(
    out: Path,
    corpus: ArtifactRef,
    teacher: ArtifactRef,
    topk: ArtifactRef | None,
    config: DistillConfig,
    runtime: Runtime,
) -> dict[str, Any]:
    """Train the student and keep it as `model/`; curves go to the MLflow run `distill`."""
    sources = CorpusSources.from_corpus_json(corpus.path / "corpus.json")
    plan = plan_for(config, sources)
    tags = {"smolforge.teacher_key": teacher.key, "smolforge.corpus_key": corpus.key}
    with tracking.run("distill", runtime.experiment, runtime.parent_run_id, tags=tags) as active:
        import mlflow

        from smolforge.tasks.curate import dataset_mlflow

        dataset_mlflow.log_dataset(corpus, context="training")

        tracking.log_params(
            {
                "student": config.student.resolve().model_dump(),
                "temperature": config.temperature,
                "alpha": config.alpha,
                "top_k": config.top_k,
                "optimizer": config.optimizer.model_dump(),
                "batch_size": config.batch_size,
                "grad_accum": config.grad_accum,
                "teacher_key": teacher.key,
                "teacher_topk_key": topk.key if topk else None,
            }
        )
        mlflow.log_dict(plan.summary(), "plan.json")
        metrics = distill_student(
            config,
            teacher.path if topk is None else None,
            sources,
            out,
            topk=topk.path if topk else None,
            log=lambda values, step: mlflow.log_metrics(values, step=step),
        )
        mlflow.log_params({"parameters": metrics["parameters"]})
        mlflow.log_metrics({f"final_{k}": v for k, v in metrics.items() if k.startswith("val_loss")}, step=metrics["steps"])
        return {**metrics, "mlflow_run_id": active.info.run_id}
