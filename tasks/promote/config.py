"""Promotion settings: one gate per registered model name, and how a decision is guarded.

A gate compares the challenger (the `candidate` version, or the version named on the command line)
with the incumbent (`champion`) on one primary metric, with guard metrics that may not get worse
by more than a tolerance. Floors are absolute limits, the only test when there is no champion yet.
Metric names are the evaluate stage's (`bits_per_byte`, `chat_loss`, `rouge_l`, `chrf`,
`cloze_acc`, `bits_per_byte.<source>`, ...): whatever its evaluation run logged.
"""

from __future__ import annotations

from pydantic import Field, model_validator

from smolforge.strict import Strict


class Guard(Strict):
    """A metric the challenger may not make worse than the champion by more than `tolerance`."""

    metric: str = Field(description="Metric name as the evaluation logged it (e.g. rouge_l).")
    higher_is_better: bool = Field(False, description="True for scores (ROUGE-L, chrF, accuracy), false for losses.")
    tolerance: float = Field(0.0, ge=0, description="How much worse than the champion is allowed, in the metric's unit.")
    floor: float | None = Field(
        None, description="Absolute limit for a first promotion (no champion yet), in the metric's unit; null: none."
    )


class Gate(Strict):
    """How a challenger earns `champion`: a better primary metric, no guard worse beyond its tolerance."""

    metric: str = Field(description="Primary metric, as the evaluation logged it (e.g. bits_per_byte).")
    higher_is_better: bool = Field(False, description="True for scores, false for losses.")
    min_delta: float = Field(
        0.0, ge=0, description="The challenger must beat the champion by more than this, in the metric's unit."
    )
    floor: float | None = Field(
        None, description="Absolute limit on the primary metric for a first promotion, in its unit; null: none."
    )
    guards: list[Guard] = Field(default_factory=list, description="Metrics that may not get worse by more than their tolerance.")
    # not `required`: Prefect drops every key of that name from a deployment's parameter schema when
    # it validates the defaults, and would then refuse the gate's own setting as unknown
    required_metrics: list[str] = Field(
        default_factory=list,
        description="More metrics both evaluations must hold (the primary and guard metrics always must).",
    )

    def metrics(self) -> list[str]:
        """Every metric this gate reads, primary first."""
        return list(dict.fromkeys([self.metric, *(g.metric for g in self.guards), *self.required_metrics]))


# Bits per byte compares any two models (whatever their tokenizers); 8 is a uniform guess over
# bytes, so a first champion must at least beat that. Chat models are judged on the loss of the
# assistant's tokens, guarded by their answers' ROUGE-L and by not forgetting the language.
_TEXT = Gate(metric="bits_per_byte", floor=8.0)
_CHAT = Gate(
    metric="chat_loss",
    guards=[
        Guard(metric="rouge_l", higher_is_better=True, tolerance=0.05),
        Guard(metric="bits_per_byte", tolerance=0.1, floor=8.0),
    ],
)
DEFAULT_GATES = {
    "smolforge-base": _TEXT,
    "smolforge-student": _TEXT,
    "smolforge-chat": _CHAT,
    "smolforge-merged": _CHAT,
}


class PromoteConfig(Strict):
    """Champion/challenger promotion of the registered models the pipeline produced."""

    gates: dict[str, Gate] = Field(
        default_factory=lambda: {name: gate.model_copy(deep=True) for name, gate in DEFAULT_GATES.items()},
        description="The gate of each registered model name; a model without a gate is not promoted.",
    )
    settle_seconds: float = Field(
        0.0, ge=0,
        description="Seconds to wait after moving `champion` before reading it back. Promotions of one model take "
        "turns through a lock in the registry; the read-back is the second line, for a lock broken as stale.",
    )
    attempts: int = Field(5, ge=1, description="Times a promotion re-decides when another one moved `champion` meanwhile.")

    @model_validator(mode="after")
    def _some_gate(self) -> PromoteConfig:
        if not self.gates:
            raise ValueError("promote.gates is empty: name at least one model's gate (or set promote=null)")
        return self
