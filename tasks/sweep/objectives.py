"""What a sweep can optimise: one registry of objectives keyed by stage name.

An objective runs one stage's training for a trial, with the trial's settings applied to the full
pipeline config, on the upstream artifacts the pipeline produced (the corpus, a base model), and
returns the final validation loss to minimise. Its training calls `on_eval(step, val_loss)` after
every evaluation; the sweep reports those values to Optuna's pruner there, and a pruned trial stops
by the exception raised from that call.

Importing this module stays light (the config module imports it to check stage names): each
objective imports its training code when it runs.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from smolforge.artifacts import ArtifactRef

if TYPE_CHECKING:
    from smolforge.config import PipelineConfig
    from smolforge.tasks.finetune.config import FinetuneConfig

OnEval = Callable[[int, float], None]


class TrialFailed(RuntimeError):
    """The trial's settings made training fail in an expected way (it diverged, or its values do
    not go together): the trial is recorded as failed and counts as finished, the sweep goes on."""


@dataclass(frozen=True)
class TrialWork:
    """What a trial's training gets: the config with the trial's settings, the upstream artifacts
    by role, the folder the model goes to (`out/model`), a scratch folder and the eval hook."""

    config: PipelineConfig
    upstream: dict[str, ArtifactRef]
    out: Path
    scratch: Path
    on_eval: OnEval


@dataclass(frozen=True)
class Objective:
    name: str
    pretty_name: str
    optimises: str
    reference: str
    reads: tuple[str, ...]  # top-level config sections a trial's training reads
    needs: tuple[str, ...]  # upstream artifacts, by role
    upstream: Callable[[PipelineConfig, str | None], dict[str, ArtifactRef]]  # produce them (cached) when run alone
    train: Callable[[TrialWork], dict[str, Any]]  # -> {"value": final val loss, ...}; the model in out/model
    # refuses (ValueError) a config the stage cannot train from these upstream artifacts; run on the
    # sweep's own config before any trial, so a plan that can never work fails once, not per trial
    check: Callable[[PipelineConfig, dict[str, ArtifactRef]], None] = lambda config, upstream: None


OBJECTIVES: dict[str, Objective] = {}


def register(objective: Objective) -> Objective:
    if objective.name in OBJECTIVES:
        raise ValueError(f"sweep objective {objective.name!r} is registered twice")
    OBJECTIVES[objective.name] = objective
    return objective


# --- pretraining --------------------------------------------------------------------------------------


def _corpus(config: PipelineConfig, parent_run_id: str | None) -> dict[str, ArtifactRef]:
    from smolforge.flows.curate import curate
    from smolforge.runners import task_runner_for

    curated = curate.with_options(task_runner=task_runner_for(config.execution))(config, parent_run_id)
    return {"corpus": ArtifactRef(**curated["corpus"])}


def _check_pretrain(config: PipelineConfig, upstream: dict[str, ArtifactRef]) -> None:
    from smolforge.tasks.train.data import CorpusSources, plan_stages
    from smolforge.tasks.train.schedule import StageSchedule

    plans = plan_stages(config.pretrain, CorpusSources.from_corpus_json(upstream["corpus"].path / "corpus.json"))
    StageSchedule.from_plans(plans, config.pretrain.schedule)


def _train_pretrain(work: TrialWork) -> dict[str, Any]:
    """All pretraining stages chained as the pipeline's stage tasks chain them (one learning-rate
    schedule across stages, weights and optimizer state carried over), in the trial's scratch folder
    and without per-stage MLflow runs: a trial keeps only its final model."""
    import shutil

    from smolforge.tasks.train.data import CorpusSources
    from smolforge.tasks.train.loop import DivergenceError
    from smolforge.tasks.train.prefect_tasks import stage_inputs
    from smolforge.tasks.train.stage import StageSpec, run_stage

    corpus = work.upstream["corpus"].path
    previous, result = None, {}
    try:
        for i, stage in enumerate(stage_inputs(work.config.pretrain, CorpusSources.from_corpus_json(corpus / "corpus.json"))):
            out, workdir = work.scratch / f"stage-{i}", work.scratch / f"work-{i}"
            out.mkdir(parents=True)
            workdir.mkdir(parents=True)
            spec = StageSpec(
                out=out, workdir=workdir, corpus=corpus, previous=previous, stage_index=i, config=stage["config"],
                rates=stage["rates"], start=stage["start"],
            )
            result = run_stage(spec, on_eval=work.on_eval)
            previous = out
    except DivergenceError as exc:
        raise TrialFailed(str(exc)) from exc
    shutil.copytree(previous / "model", work.out / "model")
    return {"value": result["val_loss"], "steps": result["steps"], "rollbacks": result["rollbacks"]}


register(
    Objective(
        name="pretrain",
        pretty_name="Pretraining",
        optimises="validation loss of the base model after all pretraining stages, on the curated corpus",
        reference="https://huggingface.co/blog/smollm3",
        reads=("pretrain",),
        needs=("corpus",),
        upstream=_corpus,
        train=_train_pretrain,
        check=_check_pretrain,
    )
)


# --- distillation -------------------------------------------------------------------------------------


def _corpus_and_teacher(config: PipelineConfig, parent_run_id: str | None) -> dict[str, ArtifactRef]:
    """The corpus, the teacher (the pipeline's pretrained model unless `distill.teacher` names one)
    and, when the config asks for one, the teacher's top-k store: what the distill flow trains from."""
    from smolforge.flows.curate import stage_runtime
    from smolforge.flows.pretrain import pretrain
    from smolforge.model_source import resolve
    from smolforge.tasks.distill.prefect_tasks import teacher_topk

    cfg = config.distill
    corpus = _corpus(config, parent_run_id)["corpus"]
    runtime = stage_runtime(config, parent_run_id)
    pretrained = ArtifactRef(**pretrain(config, corpus, parent_run_id)["model"]) if cfg.teacher is None else None
    refs = {"corpus": corpus, "teacher": resolve(cfg.teacher, pretrained, runtime, "distill.teacher")}
    if cfg.top_k is not None and cfg.alpha > 0:
        refs["topk"] = teacher_topk(
            refs["teacher"], corpus, cfg.data, cfg.batch_size, cfg.grad_accum, cfg.max_epochs, cfg.seed, cfg.top_k,
            cfg.device, runtime,
        )
    return refs


def _usable_topk(work: TrialWork, plan: Any) -> Path | None:
    """The stored teacher top-k, if it was made for exactly the batches and k this trial uses."""
    from smolforge.tasks.distill.teacher import TopKStore

    cfg, topk = work.config.distill, work.upstream.get("topk")
    if topk is None or cfg.top_k is None or topk.manifest()["config"].get("k") != cfg.top_k:
        return None
    try:
        TopKStore(topk.path).check_plan(plan, cfg.seed)
    except ValueError:
        return None
    return topk.path


def _train_distill(work: TrialWork) -> dict[str, Any]:
    from smolforge.model_source import model_folder
    from smolforge.tasks.distill.train import distill_student, plan_for
    from smolforge.tasks.train.data import CorpusSources

    cfg = work.config.distill
    sources = CorpusSources.from_corpus_json(work.upstream["corpus"].path / "corpus.json")
    topk = _usable_topk(work, plan_for(cfg, sources)) if cfg.alpha > 0 else None
    teacher = model_folder(work.upstream["teacher"].path) if cfg.alpha > 0 and topk is None else None
    try:
        result = distill_student(cfg, teacher, sources, work.out, topk=topk, on_eval=work.on_eval)
    except FloatingPointError as exc:
        raise TrialFailed(str(exc)) from exc
    return {"value": result["val_loss"], "steps": result["steps"], "used_topk": topk is not None}


register(
    Objective(
        name="distill",
        pretty_name="Distillation",
        optimises="validation loss of the student distilled from the teacher, on the curated corpus",
        reference="https://arxiv.org/abs/1503.02531",
        reads=("distill",),
        needs=("corpus", "teacher"),
        upstream=_corpus_and_teacher,
        train=_train_distill,
    )
)


# --- fine-tuning --------------------------------------------------------------------------------------


def _base(config: PipelineConfig, parent_run_id: str | None) -> dict[str, ArtifactRef]:
    """The base model the finetune flow would start from, and for qlora its cached 4-bit copy."""
    from smolforge.flows.curate import stage_runtime
    from smolforge.flows.pretrain import pretrain
    from smolforge.model_source import resolve
    from smolforge.tasks.finetune.prefect_tasks import quantize_stage

    pretrained = None
    if config.finetune.base is None:  # the pipeline's pretrained model
        corpus = _corpus(config, parent_run_id)["corpus"]
        pretrained = ArtifactRef(**pretrain(config, corpus, parent_run_id)["model"])
    runtime = stage_runtime(config, parent_run_id)
    refs = {"base": resolve(config.finetune.base, pretrained, runtime, "finetune.base")}
    if config.finetune.method == "qlora":
        refs["quantized"] = quantize_stage(refs["base"], config.finetune.qlora, runtime)
    return refs


def quantized_for(cfg: FinetuneConfig, saved: Path | None) -> Path | None:
    """`saved` (the sweep's cached 4-bit base) when a trial runs qlora with the settings it was
    saved with; a trial that sweeps the 4-bit settings (or turns qlora on) quantises while loading."""
    from smolforge.model_source import model_folder
    from smolforge.tasks.finetune.quantize import saved_with

    if cfg.method != "qlora" or saved is None or not saved_with(saved, cfg.qlora):
        return None
    return model_folder(saved)


# transformers caches one compiled chat template per template text, and the extension that marks
# the assistant's tokens keeps its state on it: two threads rendering at once corrupt each other's
# masks (one sees none), so trials running side by side read their records one at a time
_CHAT_TEMPLATE_LOCK = threading.Lock()


def _train_finetune(work: TrialWork) -> dict[str, Any]:
    from smolforge.environment import project_home
    from smolforge.flows.finetune import data_files
    from smolforge.model_source import model_folder
    from smolforge.tasks.curate.tokenizer import load_tokenizer
    from smolforge.tasks.finetune.data import load_data
    from smolforge.tasks.finetune.train import finetune_model

    cfg, base = work.config.finetune, work.upstream["base"].path
    saved = work.upstream["quantized"].path if "quantized" in work.upstream else None
    files = data_files(work.config, project_home())
    with _CHAT_TEMPLATE_LOCK:
        data = load_data(
            files, load_tokenizer(str(model_folder(base))), max_seq_len=cfg.max_seq_len, val_fraction=cfg.val_fraction,
            max_val=cfg.max_val_records, seed=cfg.seed,
        )
    try:
        result = finetune_model(cfg, base, data, work.out, on_eval=work.on_eval, quantized=quantized_for(cfg, saved))
    except FloatingPointError as exc:
        raise TrialFailed(str(exc)) from exc
    return {"value": result["val_loss"], "steps": result["steps"], "best_step": result["best_step"]}


register(
    Objective(
        name="finetune",
        pretty_name="Fine-tuning (LoRA, QLoRA or full)",
        optimises="best validation loss on the held-out instruction records (assistant tokens only)",
        reference="https://arxiv.org/abs/2106.09685",
        reads=("finetune",),
        needs=("base",),
        upstream=_base,
        train=_train_finetune,
    )
)


def timed(train: Callable[[TrialWork], dict[str, Any]], work: TrialWork) -> dict[str, Any]:
    """Run a trial's training and measure its own wall time (what the sweep's overhead is compared to)."""
    started = time.perf_counter()
    result = train(work)
    return {**result, "train_seconds": time.perf_counter() - started}
