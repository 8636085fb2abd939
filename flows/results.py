"""What flows return: typed results that hold `ArtifactRef`s and MLflow run ids, never data.

A stage's result also holds the inputs it trained from (`inputs`), so a later stage (the sweep,
and the merge and evaluation stages after it) reads them by role instead of re-deriving them.
The pipeline's result holds each stage's result under the stage's name, in the order they ran.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel

from smolforge.artifacts import ArtifactRef


class Registered(BaseModel):
    """A model version in the MLflow registry, reachable as `uri` (`models:/name@alias`)."""

    name: str
    version: str
    uri: str


class StageInputs(BaseModel):
    """The artifacts a stage trains from, by role; `None` where a role does not apply."""

    def refs(self) -> dict[str, ArtifactRef]:
        return {role: ref for role, ref in self if isinstance(ref, ArtifactRef)}


class StageResult(BaseModel):
    """Common to every stage: the MLflow run that holds its record (None when nothing ran) and
    whether everything came from the cache."""

    mlflow_run_id: str | None = None
    cached: bool = False
    seconds: float = 0.0


class CurateResult(StageResult):
    corpus: ArtifactRef
    funnel: list[dict[str, Any]]
    drops: dict[str, dict[str, int]]
    timings: dict[str, float]

class PretrainInputs(StageInputs):
    corpus: ArtifactRef

class PretrainResult(StageResult):
    model: ArtifactRef
    inputs: PretrainInputs
    stages: list[dict[str, Any]]
    registered: Registered

class DistillInputs(StageInputs):
    corpus: ArtifactRef
    teacher: ArtifactRef
    topk: ArtifactRef | None = None  # the teacher's stored top-k log-probabilities, when `top_k` is set
    sizes: dict[str, int]  # teacher_parameters, student_parameters (checked: the student is smaller)

class DistillResult(StageResult):
    model: ArtifactRef
    inputs: DistillInputs
    metrics: dict[str, Any]
    teacher_parameters: int
    student_parameters: int
    registered: Registered

class FinetuneInputs(StageInputs):
    base: ArtifactRef
    quantized: ArtifactRef | None = None  # qlora: the base quantised once to 4 bits
    data: dict[str, str]  # the JSONL files (path -> content hash), checked
    adapter_data: dict[str, dict[str, str]] = {}  # finetune.adapters: each adapter's files, by adapter name

class FinetuneResult(StageResult):
    model: ArtifactRef  # with finetune.adapters: the first adapter's fine-tune
    inputs: FinetuneInputs
    metrics: dict[str, Any]
    registered: Registered
    adapters: dict[str, ArtifactRef] = {}  # finetune.adapters: each adapter's fine-tune, by name

class SweepResult(StageResult):
    """The study's summary (counts, best trial, kept models) and this run's own trials."""

    study: str
    storage: str
    stage: str
    trials: int
    complete: int
    pruned: int
    fail: int
    best_trial: int | None = None
    best_value: float | None = None
    best_params: dict[str, Any] | None = None
    kept: list[dict[str, Any]]
    plots: list[str]
    skipped_plots: dict[str, str]
    this_run: list[dict[str, Any]]
    timings: dict[str, float]

class MergeInputs(StageInputs):
    ingredients: dict[str, ArtifactRef]  # by label, in the configured order; each holds model/
    base_keys: dict[str, str | None]  # by label: the base each was fine-tuned from (lineage)
    base: ArtifactRef | None = None  # the task vectors' origin (merge.base, else the shared base)
    files: dict[str, str]  # fine-tuning's JSONL files (path -> content hash), whose held-out records judge
    split: dict[str, Any]  # fine-tuning's split settings

class MergeResult(StageResult):
    """Every merge (by label, the greedy soup's too) and the comparison with the ingredients:
    `rows` of {model, kind, selection_loss, test_loss}; `chosen` is the registered merge."""

    data: ArtifactRef  # the selection and test records
    merges: dict[str, ArtifactRef]
    report: ArtifactRef
    rows: list[dict[str, Any]]
    soup: list[dict[str, Any]]  # the greedy soup's steps: {ingredient, selection_loss, kept}
    soup_ingredients: list[str]
    chosen: str
    registered: Registered
    inputs: MergeInputs

    @property
    def model(self) -> ArtifactRef:
        """The chosen (registered) merge: the stage's model, as the other stages' `model` is theirs."""
        return self.merges[self.chosen]

class EvaluateInputs(StageInputs):
    corpus: ArtifactRef  # whose held-out split is read
    models: dict[str, ArtifactRef]  # by label: the stage that made it, or the reference given
    registered: dict[str, Registered]  # the registry versions among them, by label (tagged with metrics)
    chat_files: dict[str, str]  # fine-tuning's JSONL files (path -> content hash)
    chat_split: dict[str, Any] | None = None  # fine-tuning's split settings, to find its held-out records

class EvaluateResult(StageResult):
    """The held-out sets, one evaluation per model (by label), the comparison and its rows."""

    data: ArtifactRef
    evaluations: dict[str, ArtifactRef]
    report: ArtifactRef
    rows: list[dict[str, Any]]
    note: str  # which rows' token-level perplexities compare
    inputs: EvaluateInputs

class PromoteResult(StageResult):
    """One decision per challenger: name, version, decision (promoted, rejected, already champion,
    restored), reason, forced, the champion it was compared with and both gate metric sets."""

    decisions: list[dict[str, Any]]

    @classmethod
    def of(cls, outcomes: list[Any], run_id: str, seconds: float) -> PromoteResult:
        """From the gate's outcomes (`tasks.promote.promotion.Outcome` dataclasses)."""
        return cls(decisions=[asdict(o) for o in outcomes], mlflow_run_id=run_id, seconds=round(seconds, 1))


class PipelineResult(BaseModel):
    """The pipeline's parent MLflow run and each stage's result (None where the stage did not run).
    One field per stage of the composition (`flows.config.STAGES`), in the order they run."""

    mlflow_run_id: str | None = None
    seconds: float = 0.0
    curate: CurateResult | None = None
    pretrain: PretrainResult | None = None
    distill: DistillResult | None = None
    finetune: FinetuneResult | None = None
    sweep: SweepResult | None = None
    merge: MergeResult | None = None
    evaluate: EvaluateResult | None = None
    promote: PromoteResult | None = None

    @property
    def stages(self) -> dict[str, StageResult]:
        """The results of the stages that ran, by name, in the order they ran."""
        return {name: getattr(self, name) for name in type(self).model_fields if isinstance(getattr(self, name), StageResult)}


class RetrainResult(StageResult):
    """A retrain: where it started (`start`, `name/version`), the files it found new, changed,
    deleted and unchanged, and, unless it ended with `status` "no new data", what it made (`data`:
    the new documents with replay) and the results of the stages it ran again (`stages`)."""

    status: str  # "retrained" or "no new data"
    start: str
    files: dict[str, int]
    corpora: list[str]  # the earlier corpora replayed, oldest first
    repacked: dict[str, dict[str, str | None]] = {}  # corpus key -> {"from", "to"}: tokenizer fingerprints, re-packed for replay
    new_corpus: str | None = None
    data: ArtifactRef | None = None
    stages: PipelineResult | None = None
