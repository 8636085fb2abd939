"""What flows return: typed results that hold `ArtifactRef`s and MLflow run ids, never data.

A stage's result also holds the inputs it trained from (`inputs`), so a later stage (the sweep,
and the merge and evaluation stages after it) reads them by role instead of re-deriving them.
The pipeline's result holds each stage's result under the stage's name, in the order they ran.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, SerializeAsAny

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


class PipelineResult(BaseModel):
    """The pipeline's parent MLflow run and each stage's result by name, in the order they ran."""

    mlflow_run_id: str | None = None
    seconds: float = 0.0
    stages: dict[str, SerializeAsAny[StageResult]] = {}

    def get(self, stage: str) -> Any:
        return self.stages.get(stage)
