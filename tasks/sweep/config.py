"""Settings of an Optuna sweep over one stage's settings (the space grammar is in `space.py`).

Checks that need only these settings (grammar, bounds, `keep` against `trials`, known names) run
when the config is validated; checks that need the whole pipeline config (the setting exists, the
swept stage is configured and reads it, both bounds are accepted) run in `space.check_space`,
which the pipeline and the sweep flow call before any work starts.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from smolforge.strict import Strict
from smolforge.tasks.sweep.space import Param, parse_space


class SweepConfig(Strict):
    """An Optuna study over one stage's settings, minimising that stage's validation loss."""

    stage: str = Field(description="Which stage's training a trial runs (a name in the objective registry, e.g. pretrain).")
    space: dict[str, Param] = Field(
        min_length=1,
        description=(
            "Setting (dotted path in the pipeline config) -> its range: 'int LOW..HIGH [log | step N]', "
            "'float LOW..HIGH [log | step X]' or 'choice V1 V2 ...'."
        ),
    )
    fixed: dict[str, Any] = Field(
        default_factory=dict,
        description=(
            "Settings (dotted path -> value) every trial gets on top of the config, e.g. a shorter budget than "
            "the final run's; checked like the space."
        ),
    )
    trials: int = Field(8, ge=1, description="Finished trials (complete, pruned or diverged) the study should reach.")
    parallel: int = Field(1, ge=1, description="Trials run at the same time by this flow run (each a Prefect task).")
    sampler: Literal["tpe", "random", "qmc"] = Field(
        "tpe", description="tpe: Tree-structured Parzen Estimator; random; qmc: quasi-Monte Carlo (Sobol)."
    )
    pruner: Literal["median", "hyperband", "none"] = Field(
        "median", description="Stops unpromising trials from their intermediate validation losses; none: never."
    )
    prune_after_trials: int = Field(
        2, ge=0, description="median: no pruning until this many trials have completed (the pruner's startup trials)."
    )
    prune_after_steps: int = Field(
        0, ge=0, description="No pruning before this training step (median: warmup steps; hyperband: minimum resource)."
    )
    keep: int = Field(2, ge=0, description="Models of the best this many complete trials are kept as artifacts (for merging).")
    seed: int = Field(0, ge=0, description="Seeds the sampler.")
    storage: str | None = Field(
        None,
        description="Optuna storage as a database URL (e.g. postgresql://...); null: a SQLite file in the project folder.",
    )
    study: str | None = Field(
        None,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="Study name; null: derived from the stage, the space and the upstream artifacts, so re-running resumes it.",
    )
    heartbeat_seconds: int = Field(
        10, ge=1, description="A running trial records a heartbeat this often (seconds) in the storage."
    )
    grace_seconds: int | None = Field(
        None, ge=1, description="A running trial silent for longer (seconds) is failed and retried; null: 3 heartbeats."
    )
    max_retries: int = Field(2, ge=0, description="Times a trial whose process died is re-run with the same settings.")

    @field_validator("space", mode="before")
    @classmethod
    def _parse(cls, raw: object) -> object:
        return parse_space(raw)

    @model_validator(mode="after")
    def _keep_within_trials(self) -> SweepConfig:
        both = sorted(set(self.fixed) & set(self.space))
        if both:
            raise ValueError(f"settings {both} are both fixed and searched; keep each in one of sweep.fixed, sweep.space")
        if self.keep > self.trials:
            raise ValueError(f"keep={self.keep} models cannot come from trials={self.trials} trials")
        if self.grace_seconds is not None and self.grace_seconds <= self.heartbeat_seconds:
            raise ValueError(
                f"grace_seconds={self.grace_seconds} must exceed heartbeat_seconds={self.heartbeat_seconds}, "
                "or live trials would be failed between two heartbeats"
            )
        return self

    @property
    def grace(self) -> int:
        return self.grace_seconds or 3 * self.heartbeat_seconds
