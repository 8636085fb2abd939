"""The composition: every stage's config in one `PipelineConfig`, and the presets.

Each stage owns its config (`smolforge.tasks.<stage>.config`); this module only puts them side by
side and checks what crosses stages (a mixture that names a source the corpus will not have).
Presets are YAML files beside this module; `--set a.b.c=value` overrides are applied to the raw
mapping before validation, so a bad value fails before any work starts and the error names the
field, the value and what was expected. Flow parameters are these models, so the Prefect UI
renders a form for them.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import Field, ValidationError, model_validator

from smolforge.environment import project_home
from smolforge.errors import ConfigError
from smolforge.runtime import ExecutionConfig, Runtime, TrackingConfig, runtime_for
from smolforge.settings import apply_override, describe_errors, merge, read_yaml
from smolforge.strict import Strict
from smolforge.tasks.curate.config import CurateConfig
from smolforge.tasks.distill.config import DistillConfig
from smolforge.tasks.evaluate.config import EVALUATION_TASKS, EvaluateConfig
from smolforge.tasks.finetune.config import FinetuneConfig
from smolforge.tasks.merge.check import check_counts
from smolforge.tasks.merge.config import MergeConfig
from smolforge.tasks.promote.config import PromoteConfig
from smolforge.tasks.sweep.config import SweepConfig
from smolforge.tasks.train.config import PretrainSection, RetrainConfig

PRESETS_DIR = Path(__file__).parent / "presets"
DEFAULT_PRESET = "tiny"  # what `smolforge run` uses without --preset or --config


class Stage(NamedTuple):
    """One stage of the composition: its config section and flow share `name`; `flow` is where its
    flow lives (imported when it runs, so reading configs and `--help` stay free of Prefect)."""

    name: str
    flow: str
    sweepable: bool = False  # a sweep can optimise this stage's settings
    fans_out: bool = False  # submits many tasks at once: runs on the configured task runner (threads or Dask)
    gpu: bool = False  # trains: its deployment serves the GPU work pool (`execution.gpu_pool`)
    artifacts: tuple[str, ...] = ()  # the kinds of artifact its steps write (`smolforge artifacts --kind`)

    def load(self):
        """The flow object `flow` names (imports its module)."""
        module, name = self.flow.split(":")
        return getattr(importlib.import_module(module), name)


# The pipeline runs these in order, each when its section is set; the CLI's flow list (and the
# deployments) come from here. A new stage is one line here and one field in `PipelineConfig`.
STAGES = (
    Stage(
        "curate",
        "smolforge.flows.curate:curate",
        fans_out=True,
        artifacts=(
            "extracted", "language", "quality", "pii", "minhash", "dedup_plan", "deduped", "tokenizer", "tokens", "dataset",
            "corpus",
        ),
    ),
    Stage("pretrain", "smolforge.flows.pretrain:pretrain", sweepable=True, gpu=True, artifacts=("pretrained",)),
    # a teacher or base named by registry URI, folder or hub id is imported as a `model-import` artifact
    Stage("distill", "smolforge.flows.distill:distill", sweepable=True, gpu=True, artifacts=("model-import", "teacher-topk", "distilled")),
    Stage("finetune", "smolforge.flows.finetune:finetune", sweepable=True, gpu=True, artifacts=("model-4bit", "finetuned")),
    Stage("sweep", "smolforge.flows.sweep:sweep", gpu=True, artifacts=("sweep-trial",)),
    # ingredients and bases named by registry URI or folder are imported as `model-import` artifacts
    Stage(
        "merge",
        "smolforge.flows.merge:merge",
        artifacts=("model-import", "lora-merged", "merge-data", "merged", "merge-score", "merge-report"),
    ),
    # models named by registry URI or folder in evaluate.models are imported as `model-import` artifacts
    Stage("evaluate", "smolforge.flows.evaluate:evaluate", artifacts=("model-import", "eval-data", "evaluation", "eval-report")),
    # a champion scored on other data is evaluated again (`evaluation`, its model as `model-import`)
    Stage("promote", "smolforge.flows.promote:promote_stage", artifacts=("model-import", "evaluation")),
)
# Retraining runs the stages again on new data, from the champion (flows/retrain.py); it is a flow
# of its own, not a stage of the pipeline. Its own artifacts: the earlier corpora's dedup index
# less changed and deleted files, and the data it trains on (new packed sources plus replay).
RETRAIN = Stage("retrain", "smolforge.flows.retrain:retrain", artifacts=("dedup-index", "retrain-data"))
FLOWS = ("pipeline", *(s.name for s in STAGES), RETRAIN.name)
ARTIFACT_KINDS = tuple(dict.fromkeys(kind for s in (*STAGES, RETRAIN) for kind in s.artifacts))
SWEEPABLE = tuple(s.name for s in STAGES if s.sweepable)


class PipelineConfig(Strict):
    preset: str | None = Field(None, description="Preset this config was built from (informational).")
    curate: CurateConfig = Field(
        description="Curation: sources, extraction, language identification, quality filters, PII masking, "
        "deduplication, the tokenizer and packing into token shards."
    )
    pretrain: PretrainSection | None = Field(None, description="Pretraining after curation; null stops after curation.")
    distill: DistillConfig | None = Field(None, description="Distillation of the pretrained model into a smaller student.")
    finetune: FinetuneConfig | None = Field(None, description="Instruction/chat fine-tuning (LoRA, QLoRA or full).")
    sweep: SweepConfig | None = Field(None, description="An Optuna sweep over one stage's settings.")
    merge: MergeConfig | None = Field(None, description="Merges of fine-tunes of one base (mergekit, greedy soup).")
    evaluate: EvaluateConfig | None = Field(None, description="Evaluation of the pipeline's models (and others) on held-out data.")
    promote: PromoteConfig | None = Field(
        None, description="Champion/challenger promotion of the evaluated models through registry aliases."
    )
    retrain: RetrainConfig | None = Field(
        None,
        description=(
            "Recurring retraining from the champion (`smolforge run retrain`, never part of the pipeline); "
            "null: the defaults when the retrain flow runs."
        ),
    )
    execution: ExecutionConfig = Field(
        default_factory=ExecutionConfig, description="How tasks run: the Prefect task runner and the CPU worker processes."
    )
    tracking: TrackingConfig = Field(default_factory=TrackingConfig, description="Where runs are logged in MLflow.")

    def runtime(self, parent_run_id: str | None = None) -> Runtime:
        """The project's artifact store, CPU budget and MLflow experiment, with stage runs nested
        under `parent_run_id`."""
        return runtime_for(self.execution, project_home(), self.tracking, parent_run_id)

    @model_validator(mode="after")
    def _data_dir_needed(self) -> PipelineConfig:
        if self.sweep is not None and self.sweep.stage not in SWEEPABLE:
            raise ValueError(f"sweep.stage: no sweep objective {self.sweep.stage!r}; available: {', '.join(SWEEPABLE)}")
        relative = [s.name for s in self.curate.sources if not Path(s.path).is_absolute()]
        if relative and self.curate.data_dir is None and self.curate.sample_corpus is None:
            raise ValueError(
                f"sources {relative} have relative paths but neither curate.data_dir nor curate.sample_corpus is set"
            )
        if self.pretrain is not None:
            names = {s.name for s in self.curate.sources}
            for i, stage in enumerate(self.pretrain.stages):
                unknown = sorted(set(stage.mixture) - names)
                if unknown:
                    raise ValueError(
                        f"pretrain.stages.{i}.mixture names {unknown}, which are not curate sources "
                        f"(the corpus will have: {sorted(names)})"
                    )
        if self.distill is not None:
            names = {s.name for s in self.curate.sources}
            unknown = sorted(set(self.distill.data.mixture) - names)
            if unknown:
                raise ValueError(
                    f"distill.data.mixture names {unknown}, which are not curate sources (the corpus will have: {sorted(names)})"
                )
            if self.distill.teacher is None and self.pretrain is None:
                raise ValueError("distill.teacher is null (the pretrained model) but pretrain is null: set one of them")
        if self.merge is not None:
            if self.finetune is None:
                raise ValueError("merge judges merges on fine-tuning's held-out records, but finetune is null (set merge=null too)")
            if self.finetune.heldout_records < 2:
                raise ValueError(
                    f"merge needs held-out records to select and test on, but finetune.heldout_records is "
                    f"{self.finetune.heldout_records}: set it (say 64)"
                )
            if not self.finetune.mergeable() or self.finetune.adapters:
                raise ValueError(
                    f"merge averages fine-tuned weights, but finetune.method={self.finetune.method}"
                    f"{' with finetune.adapters' if self.finetune.adapters else ''} leaves the adapters apart from the "
                    "base: set merge=null, or a method whose adapter merges (lora, qlora, ia3, full) without adapters"
                )
            if "sweep" in self.merge.ingredients and self.sweep is None:
                raise ValueError("merge.ingredients names sweep (its kept models), but sweep is null")
            labels = self.merge.expected_labels(self.finetune.seed)
            if labels is not None:  # counts refused now, before anything is trained
                check_counts(self.merge.methods, labels)
        if self.evaluate is not None:
            if "chat" in self.evaluate.tasks and self.finetune is None:
                raise ValueError("evaluate.tasks names chat, which reads fine-tuning's held-out records, but finetune is null (set evaluate=null, or evaluate.tasks without chat)")
            if not self.evaluate.models and all(getattr(self, s) is None for s in self.evaluate.pipeline_models):
                raise ValueError(
                    f"evaluate has no model: none of evaluate.pipeline_models {self.evaluate.pipeline_models} is configured "
                    "and evaluate.models is empty"
                )
        if self.retrain is not None:
            unknown = [t for t in self.retrain.evaluate_tasks if t not in EVALUATION_TASKS]
            if unknown:
                raise ValueError(f"retrain.evaluate_tasks: no evaluation task {unknown}; available: {', '.join(EVALUATION_TASKS)}")
        if self.promote is not None and self.evaluate is None:
            raise ValueError("promote decides on the evaluate stage's results, but evaluate is null (set promote=null too)")
        return self


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_config(
    preset: str | None = None, config_file: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> PipelineConfig:
    """Preset, then a YAML file merged over it, then `--set` overrides; validated once at the end."""
    data: dict[str, Any] = {}
    if preset:
        path = PRESETS_DIR / f"{preset}.yaml"
        if not path.exists():
            raise ConfigError(f"unknown preset {preset!r}; available: {', '.join(available_presets())}")
        data = read_yaml(path)
        data["preset"] = preset
    if config_file:
        data = merge(data, read_yaml(Path(config_file)))
    for assignment in overrides:
        apply_override(data, assignment)
    if not data:
        raise ConfigError("no configuration: pass --preset or --config")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(describe_errors(exc, PipelineConfig)) from None
