"""Pretraining stages as cached Prefect tasks.

A stage's key covers the corpus, the previous stage's artifact, the settings of this stage and the
ones before it, and the learning rates this stage will use: changing only stage 3 leaves stages 1
and 2 cached, while a change that moves an earlier stage's schedule re-runs it. Checkpoints go to
the step's work folder, so a killed stage resumes where it stopped when the task runs again.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolforge import tracking
from smolforge.artifacts import ArtifactRef
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step
from smolforge.tasks.train.config import PretrainSection
from smolforge.tasks.train.data import CorpusSources, StagePlan, plan_stages
from smolforge.tasks.train.schedule import StageSchedule
from smolforge.tasks.train.stage import StageSpec, launch, run_stage

_HERE = Path(__file__).parent
_MODELS = _HERE.parent.parent / "models"


@dataclass(frozen=True)
class PlannedStage:
    """What one stage's task is keyed by: its config prefix (the stages up to it), the learning-rate
    multipliers it will use and its first global step; `plan` is its data plan, for display."""

    config: PretrainSection
    rates: list[float]
    start: int
    plan: StagePlan


def plan_pretraining(config: PretrainSection, sources: CorpusSources) -> list[PlannedStage]:
    """Every stage planned at once, so one schedule spans them; planning all stages here also
    refuses impossible mixtures and budgets before any training starts."""
    plans = plan_stages(config, sources)
    schedule = StageSchedule.from_plans(plans, config.schedule)
    return [
        PlannedStage(
            config=config.model_copy(update={"stages": config.stages[: i + 1]}),
            rates=[round(schedule.multiplier(g), 12) for g in range(r.start, r.stop)],
            start=r.start,
            plan=plans[i],
        )
        for i, r in enumerate(schedule.ranges)
    ]


@artifact_step(
    "pretrained",
    code=(
        _HERE / "stage.py", _HERE / "loop.py", _HERE / "data.py", _HERE / "schedule.py", _HERE / "checkpoint.py",
        _HERE / "distributed.py", _MODELS / "architecture.py", _MODELS / "masking.py", _MODELS / "mtp.py",
        _MODELS / "optim.py",
    ),
    tags=["gpu"],
    retries=1,
)
def pretrain_stage(
    out: Path,
    corpus: ArtifactRef,
    previous: ArtifactRef | None,
    stage_index: int,
    config: PretrainSection,
    rates: list[float],
    start: int,
    runtime: Runtime,
    workdir: Path,
) -> dict[str, Any]:
    """Train one stage from the previous stage's artifact (or from scratch) into `out`, in this
    process or, with `nproc` > 1, as that many torchrun processes. Its checkpoints stay in
    `workdir`, so a retry or a re-run after a crash resumes the stage instead of restarting it."""
    name = config.stages[stage_index].name
    with tracking.run(f"pretrain-{name}", runtime.experiment, runtime.parent_run_id) as active:
        from smolforge.tasks.curate import dataset_mlflow  # MLflow's dataset classes, for a stage that trains

        dataset_mlflow.log_dataset(corpus, context="training")
        spec = StageSpec(
            out=out, workdir=workdir, corpus=corpus.path, previous=previous.path if previous else None,
            stage_index=stage_index, config=config, rates=rates, start=start, run_id=active.info.run_id,
        )
        return launch(spec, config.nproc) if config.nproc > 1 else run_stage(spec)
