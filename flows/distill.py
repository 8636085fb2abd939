"""Knowledge distillation: a smaller student learns from a teacher, registered as a candidate.

Everything that can be refused is refused first, before the teacher runs: the data plan against
the corpus, the teacher's whereabouts, its tokenizer against the corpus's, and its size against the
student's. Then the optional top-k store (once per teacher and data plan), the student, and its
registration as `smolforge-student@candidate`, tagged with the teacher's and the corpus's keys.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from smolforge.artifacts import ArtifactRef, stable_hash
from smolforge.config import ConfigError, PipelineConfig
from smolforge.flows.curate import stage_runtime
from smolforge.registry import register_model


@flow(name="distill", log_prints=True)
def distill(
    config: PipelineConfig, corpus: ArtifactRef, teacher: ArtifactRef | None = None, parent_run_id: str | None = None
) -> dict[str, Any]:
    """Distil `config.distill.teacher` (or, when that is unset, `teacher`, the pipeline's pretrained
    model) into `config.distill.student` on `corpus`."""
    from smolforge.model_source import model_folder, resolve
    from smolforge.tasks.curate.tokenizer import load_tokenizer
    from smolforge.tasks.distill.prefect_tasks import distill_stage, teacher_topk
    from smolforge.tasks.distill.teacher import check_teacher
    from smolforge.tasks.distill.train import plan_for
    from smolforge.tasks.train.data import CorpusSources

    cfg = config.distill
    if cfg is None:
        raise ConfigError("the distill flow needs a `distill` section in the config")
    runtime = stage_runtime(config, parent_run_id)
    sources = CorpusSources.from_corpus_json(corpus.path / "corpus.json")
    try:
        plan = plan_for(cfg, sources)
    except ValueError as exc:
        raise ConfigError(f"distill: {exc}") from None
    teacher_ref = resolve(cfg.teacher, teacher, runtime, "distill.teacher")
    sizes = check_teacher(model_folder(teacher_ref.path), load_tokenizer(sources.tokenizer), sources.tokenizer, cfg.student)
    print(plan.describe())
    print(f"teacher {teacher_ref.kind}:{teacher_ref.key[:12]} with {sizes['teacher_parameters']:,} parameters -> "
          f"student with {sizes['student_parameters']:,}")

    topk = None
    if cfg.top_k is not None and cfg.alpha > 0:
        topk = teacher_topk(
            teacher_ref, corpus, cfg.data, cfg.batch_size, cfg.grad_accum, cfg.max_epochs, cfg.seed, cfg.top_k,
            cfg.device, runtime,
        )
    # the teacher counts by its artifact's key, not by the name it was given
    keyed = cfg.model_copy(update={"teacher": None})
    student = distill_stage(corpus, teacher_ref, topk, keyed, runtime)
    lineage = {
        "smolforge.teacher_key": teacher_ref.key,
        "smolforge.corpus_key": corpus.key,
        "smolforge.config_key": stable_hash(keyed.model_dump(mode="json")),
    }
    registered = register_model(student, cfg.register_as, lineage, runtime.experiment, parent_run_id)
    return {
        "model": student.model_dump(),
        "teacher": teacher_ref.model_dump(),
        "topk": topk.model_dump() if topk else None,
        "metrics": student.manifest()["metrics"],
        **sizes,
        "registered": registered,
    }
