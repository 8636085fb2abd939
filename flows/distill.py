"""Knowledge distillation: a smaller student learns from a teacher, registered as a candidate.

Everything that can be refused is refused first, before the teacher runs: the data plan against
the corpus, the teacher's whereabouts, its tokenizer against the corpus's, and its size against the
student's. Then the optional top-k store (once per teacher and data plan), the student, and its
registration as `smolforge-student@candidate`, tagged with the teacher's and the corpus's keys.
"""

from __future__ import annotations

from prefect import flow

from smolforge.artifacts import stable_hash
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.curate import corpus_of
from smolforge.flows.pretrain import pretrained_model
from smolforge.flows.results import DistillInputs, DistillResult, PipelineResult, Registered
from smolforge.flows.routing import gpu_slot
from smolforge.model_source import model_folder, resolve
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.distill.prefect_tasks import distill_stage, teacher_topk
from smolforge.tasks.distill.teacher import check_teacher
from smolforge.tasks.distill.train import plan_for
from smolforge.tasks.registry.register import register_model
from smolforge.tasks.train.data import CorpusSources


def distill_inputs(config: PipelineConfig, upstream: PipelineResult | None, parent_run_id: str | None) -> DistillInputs:
    """The corpus, the teacher (`distill.teacher`, else the pipeline's pretrained model, pretrained
    here when run alone) and, when the config asks for one, the teacher's top-k store. Refuses a
    data plan the corpus cannot give, and a teacher whose tokenizer or size does not fit, before
    the teacher runs."""
    cfg = config.distill
    if cfg is None:
        raise ConfigError("the distill flow needs a `distill` section in the config")
    corpus = corpus_of(config, upstream, parent_run_id)
    sources = CorpusSources.from_corpus_json(corpus.path / "corpus.json")
    try:
        plan_for(cfg, sources)
    except ValueError as exc:
        raise ConfigError(f"distill: {exc}") from None
    pretrained = pretrained_model(config, upstream, parent_run_id) if cfg.teacher is None else None
    runtime = config.runtime(parent_run_id)
    teacher = resolve(cfg.teacher, pretrained, runtime, "distill.teacher")
    sizes = check_teacher(model_folder(teacher.path), load_tokenizer(sources.tokenizer), sources.tokenizer, cfg.student)
    topk = None
    if cfg.top_k is not None and cfg.alpha > 0:
        topk = teacher_topk(
            teacher, corpus, cfg.data, cfg.batch_size, cfg.grad_accum, cfg.max_epochs, cfg.seed, cfg.top_k,
            cfg.device, runtime,
        )
    return DistillInputs(corpus=corpus, teacher=teacher, topk=topk, sizes=sizes)


@flow(name="distill", log_prints=True)
def distill(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None) -> DistillResult:
    """Distil `distill.teacher` (or, when that is unset, the pipeline's pretrained model) into
    `distill.student` on the corpus."""
    inputs = distill_inputs(config, upstream, parent_run_id)
    cfg, runtime = config.distill, config.runtime(parent_run_id)
    sizes = inputs.sizes
    print(plan_for(cfg, CorpusSources.from_corpus_json(inputs.corpus.path / "corpus.json")).describe())
    print(f"teacher {inputs.teacher.kind}:{inputs.teacher.key[:12]} with {sizes['teacher_parameters']:,} parameters -> "
          f"student with {sizes['student_parameters']:,}")
    # the teacher counts by its artifact's key, not by the name it was given
    keyed = cfg.model_copy(update={"teacher": None})
    cached = distill_stage.existing(inputs.corpus, inputs.teacher, inputs.topk, keyed, runtime) is not None
    with gpu_slot():
        student = distill_stage(inputs.corpus, inputs.teacher, inputs.topk, keyed, runtime)
    lineage = {
        "smolforge.teacher_key": inputs.teacher.key,
        "smolforge.corpus_key": inputs.corpus.key,
        "smolforge.config_key": stable_hash(keyed.model_dump(mode="json")),
    }
    registered = register_model(student, cfg.register_as, lineage)
    metrics = student.manifest()["metrics"]
    return DistillResult(
        model=student, inputs=inputs, metrics=metrics, registered=Registered(**registered),
        mlflow_run_id=metrics.get("mlflow_run_id"), seconds=metrics.get("seconds", 0.0), cached=cached, **sizes,
    )
