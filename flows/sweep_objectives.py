"""What a sweep can optimise: one registry of objectives keyed by stage name, and the checks and
settings that tie a sweep to the pipeline config.

An objective runs one stage's training for a trial, with the trial's settings applied to the full
pipeline config, on the upstream artifacts the stage's own flow trains from (produced by the same
function that flow calls), and returns the final validation loss to minimise. Its training calls
`on_eval(step, val_loss)` after every evaluation; the sweep reports those values to Optuna's pruner
there, and a pruned trial stops by the exception raised from that call.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from smolforge.artifacts import ArtifactRef, stable_hash
from smolforge.environment import project_home
from smolforge.errors import ConfigError
from smolforge.flows.config import STAGES, PipelineConfig
from smolforge.flows.distill import distill_inputs
from smolforge.flows.finetune import data_files, finetune_inputs
from smolforge.flows.pretrain import planned_stages, pretrain_inputs
from smolforge.flows.results import PipelineResult, StageInputs
from smolforge.model_source import model_folder
from smolforge.settings import apply_override, describe_errors, field_path_problem
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.distill.teacher import TopKStore
from smolforge.tasks.distill.train import distill_student, plan_for
from smolforge.tasks.finetune.config import FinetuneConfig
from smolforge.tasks.finetune.data import load_data
from smolforge.tasks.finetune.quantize import saved_with
from smolforge.tasks.finetune.train import finetune_model
from smolforge.tasks.sweep.space import render
from smolforge.tasks.sweep.study import TrialFailed
from smolforge.tasks.train.data import CorpusSources
from smolforge.tasks.train.loop import DivergenceError
from smolforge.tasks.train.stage import StageSpec, run_stage

OnEval = Callable[[int, float], None]


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
    # the stage's own producer of its inputs: from the pipeline's results so far, the rest made (cached)
    upstream: Callable[[PipelineConfig, PipelineResult | None, str | None], StageInputs]
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


def _check_pretrain(config: PipelineConfig, upstream: dict[str, ArtifactRef]) -> None:
    planned_stages(config, upstream["corpus"])


def _train_pretrain(work: TrialWork) -> dict[str, Any]:
    """All pretraining stages chained as the pipeline's stage tasks chain them (one learning-rate
    schedule across stages, weights and optimizer state carried over), in the trial's scratch folder
    and without per-stage MLflow runs: a trial keeps only its final model."""
    corpus = work.upstream["corpus"]
    previous, result = None, {}
    try:
        for i, stage in enumerate(planned_stages(work.config, corpus)):
            out, workdir = work.scratch / f"stage-{i}", work.scratch / f"work-{i}"
            out.mkdir(parents=True)
            workdir.mkdir(parents=True)
            spec = StageSpec(
                out=out, workdir=workdir, corpus=corpus.path, previous=previous, stage_index=i, config=stage.config,
                rates=stage.rates, start=stage.start,
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
        upstream=pretrain_inputs,
        train=_train_pretrain,
        check=_check_pretrain,
    )
)


# --- distillation -------------------------------------------------------------------------------------


def _usable_topk(work: TrialWork, plan: Any) -> Path | None:
    """The stored teacher top-k, if it was made for exactly the batches and k this trial uses."""
    cfg, topk = work.config.distill, work.upstream.topk
    if topk is None or cfg.top_k is None or topk.manifest()["config"].get("k") != cfg.top_k:
        return None
    try:
        TopKStore(topk.path).check_plan(plan, cfg.seed)
    except ValueError:
        return None
    return topk.path


def _train_distill(work: TrialWork) -> dict[str, Any]:
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
        upstream=distill_inputs,
        train=_train_distill,
    )
)


# --- fine-tuning --------------------------------------------------------------------------------------


def quantized_for(cfg: FinetuneConfig, saved: Path | None) -> Path | None:
    """`saved` (the sweep's cached 4-bit base) when a trial runs qlora with the settings it was
    saved with; a trial that sweeps the 4-bit settings (or turns qlora on) quantises while loading."""
    if cfg.method != "qlora" or saved is None or not saved_with(saved, cfg.qlora):
        return None
    return model_folder(saved)


# transformers caches one compiled chat template per template text, and the extension that marks
# the assistant's tokens keeps its state on it: two threads rendering at once corrupt each other's
# masks (one sees none), so trials running side by side read their records one at a time
_CHAT_TEMPLATE_LOCK = threading.Lock()


def _train_finetune(work: TrialWork) -> dict[str, Any]:
    cfg, base = work.config.finetune, work.upstream["base"].path
    saved = work.upstream["quantized"].path if "quantized" in work.upstream else None
    files = data_files(work.config, project_home())
    with _CHAT_TEMPLATE_LOCK:
        data = load_data(
            files, load_tokenizer(str(model_folder(base))), **cfg.split_settings(),
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
        upstream=finetune_inputs,
        train=_train_finetune,
    )
)


def timed(train: Callable[[TrialWork], dict[str, Any]], work: TrialWork) -> dict[str, Any]:
    """Run a trial's training and measure its own wall time (what the sweep's overhead is compared to)."""
    started = time.perf_counter()
    result = train(work)
    return {**result, "train_seconds": time.perf_counter() - started}


def study_name(config: PipelineConfig, upstream: dict[str, ArtifactRef]) -> str:
    """Stable across re-runs of the same sweep (so a re-run resumes it) and different when anything
    that defines a trial changes: the space, the sampler and pruner, the swept sections' settings
    and the upstream artifacts. The number of trials and the parallelism are left out on purpose:
    raising `trials` continues the study."""
    cfg = config.sweep
    objective = OBJECTIVES[cfg.stage]
    defining = {
        "space": {p: v.model_dump() for p, v in cfg.space.items()},
        "fixed": cfg.fixed,
        "sampler": cfg.sampler,
        "pruner": [cfg.pruner, cfg.prune_after_trials, cfg.prune_after_steps],
        "seed": cfg.seed,
        "sections": {s: config.model_dump(mode="json").get(s) for s in objective.reads},
        "upstream": {role: ref.key for role, ref in sorted(upstream.items())},
    }
    return cfg.study or f"{cfg.stage}-{stable_hash(defining)[:12]}"


def check_sweep(config: PipelineConfig) -> None:
    """Refuse, before any work, a sweep whose stage is not configured or whose space names a setting
    the config model does not have, a setting the swept stage's trials would not read, or a value
    the setting refuses (each range at both bounds, each choice at every value, checked on the full
    config as a trial will see it)."""
    sweep = config.sweep
    if sweep is None:
        raise ConfigError("a sweep needs a `sweep` section in the config")
    if getattr(config, sweep.stage, None) is None:
        raise ConfigError(
            f"sweep.stage is {sweep.stage!r} but the config has no `{sweep.stage}` section (it is null): "
            "configure that stage, or sweep another one"
        )
    reads = OBJECTIVES[sweep.stage].reads
    problems: list[str] = []

    def setting_problem(path: str, whole_sections: bool = False) -> str | None:
        keys = path.split(".")
        problem = field_path_problem(type(config), keys, whole_sections=whole_sections)
        if problem is None and keys[0] not in reads:
            instead = f"sweep stage {keys[0]!r} to vary them" if keys[0] in OBJECTIVES else "they are fixed for this sweep"
            problem = (
                f"a {sweep.stage} trial does not read {keys[0]}.* settings: trials reuse the upstream artifacts "
                f"the pipeline produced ({instead}); it reads: {', '.join(reads)}.*"
            )
        return problem

    def refused(data: dict[str, Any], path: str, value: Any) -> str | None:
        try:
            apply_override(data, f"{path}={render(value)}")
            type(config).model_validate(data)
        except ConfigError as exc:
            return str(exc)
        except ValidationError as exc:
            return f"{value!r} is refused: " + describe_errors(exc).split("\n", 1)[1].strip()
        return None

    base = trial_base(config)
    for path, value in sweep.fixed.items():
        problem = setting_problem(path, whole_sections=True) or refused(base, path, value)  # applied in place: the trials' base
        if problem:
            problems.append(f"sweep.fixed[{path!r}]: {problem}")
    for path, param in sweep.space.items() if not problems else ():
        problem = setting_problem(path)
        for value in [] if problem else param.values_to_check():
            problem = refused(json.loads(json.dumps(base)), path, value)
            if problem:
                problem = f"{param.describe()}: {problem}"
                break
        if problem:
            problems.append(f"sweep.space[{path!r}]: {problem}")
    if problems:
        raise ConfigError("invalid sweep:\n  " + "\n  ".join(problems))


def trial_base(config: PipelineConfig) -> dict[str, Any]:
    """The config a trial starts from, as data: without the sweep and the stages after it. A trial
    trains its stage only; merging or evaluating the sweep's kept models happens after the sweep,
    and a merge that names the sweep's models would otherwise be refused inside every trial."""
    data = config.model_dump(mode="json")
    names = [s.name for s in STAGES]
    for name in names[names.index("sweep"):]:
        data[name] = None
    return data


def trial_config(config: PipelineConfig, values: dict[str, Any]) -> PipelineConfig:
    """The full config as the trial sees it: the sweep's fixed settings and the trial's values
    applied to `trial_base`."""
    data = trial_base(config)
    for path, value in {**config.sweep.fixed, **values}.items():
        apply_override(data, f"{path}={render(value)}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"settings {values}: " + describe_errors(exc)) from None
