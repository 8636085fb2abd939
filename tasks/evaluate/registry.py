"""The evaluation tasks, one registry keyed by name (as mergekit keys its merge methods).

An evaluation task is a plain function `fn(subject, evalset, config) -> TaskOutput`: it gets the
loaded model (`Subject`), the folder of held-out data every model is scored on, and the
evaluation settings, and returns flat metrics, a table and samples. `@evaluation_task(...)` is the
one way to register; `evaluate.tasks` in the config names the tasks to run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from smolforge.errors import ConfigError
from smolforge.tasks.evaluate.config import EVALUATION_TASKS


@dataclass
class Subject:
    """The model under evaluation: loaded once, shared by every task of its run."""

    label: str  # how errors name it: the artifact key, or the reference it came from
    model: Any  # a transformers causal LM in eval mode
    tokenizer: Any
    folder: Path  # the transformers folder it was loaded from
    device: Any


@dataclass
class TaskOutput:
    metrics: dict[str, float]  # flat, the comparison table's columns (`bits_per_byte`, `chrf`, ...)
    table: list[dict[str, Any]] = field(default_factory=list)  # one row per source, task or item
    samples: list[dict[str, Any]] = field(default_factory=list)  # generated answers beside references


@dataclass(frozen=True)
class EvaluationTask:
    name: str
    pretty_name: str
    reference_url: str
    run: Callable[[Subject, Path, Any], TaskOutput]


TASKS: dict[str, EvaluationTask] = {}


def evaluation_task(name: str, pretty_name: str, reference_url: str) -> Callable:
    """Register `fn` under `name`; a second task of the same name, or one the config does not
    name in `EVALUATION_TASKS` (so it could never be chosen), is a programming error."""

    def register(fn: Callable[[Subject, Path, Any], TaskOutput]) -> Callable[[Subject, Path, Any], TaskOutput]:
        if name in TASKS:
            raise ValueError(f"evaluation task {name!r} is registered twice")
        if name not in EVALUATION_TASKS:
            raise ValueError(f"evaluation task {name!r} is not in EVALUATION_TASKS (tasks/evaluate/config.py)")
        TASKS[name] = EvaluationTask(name, pretty_name, reference_url, fn)
        return fn

    return register


class EvaluationError(ConfigError):
    """An evaluation that cannot run: the message names the model, task, file or setting and why."""
