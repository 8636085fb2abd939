"""The gate's decision, as a plain function of two metric sets: no registry, no I/O.

`decide` passes a challenger when its primary metric beats the champion's by more than
`min_delta` and no guard metric is worse by more than its tolerance; with no champion it checks
the floors instead. The reason names every metric it looked at and both values, so a rejected
version says why on its registry page.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from smolforge.errors import ConfigError
from smolforge.tasks.promote.config import Gate


class PromotionError(ConfigError):
    """A promotion that cannot be decided (a name, version, alias or metric that does not exist):
    raised before anything in the registry changes."""


@dataclass(frozen=True)
class Decision:
    passed: bool
    reason: str
    forced: bool = False
    checks: list[str] = field(default_factory=list)  # one line per metric looked at


def require_metrics(gate: Gate, metrics: dict[str, float], who: str) -> None:
    """Refuse a gate that reads a metric `who`'s evaluation does not hold, naming the ones it does."""
    missing = [m for m in gate.metrics() if m not in metrics]
    if missing:
        raise PromotionError(
            f"the gate reads {', '.join(missing)}, which the evaluation of {who} did not produce; "
            f"its metrics are: {', '.join(sorted(metrics)) or 'none'}"
        )


def _better(higher_is_better: bool, challenger: float, champion: float) -> float:
    """How much better the challenger is (negative: worse), in the metric's unit."""
    return challenger - champion if higher_is_better else champion - challenger


def _within_floor(higher_is_better: bool, value: float, floor: float) -> bool:
    return value >= floor if higher_is_better else value <= floor


def decide(gate: Gate, challenger: dict[str, float], champion: dict[str, float] | None, force: bool = False) -> Decision:
    """Pass or fail `challenger` against `champion` (None: no champion yet, so the floors decide).
    `force` passes without comparing; the caller has checked that an evaluation exists."""
    if force:
        return Decision(True, "forced: the comparison was skipped", forced=True)
    checks, failed = [], []
    if champion is None:
        limits = [(gate.metric, gate.higher_is_better, gate.floor)] + [(g.metric, g.higher_is_better, g.floor) for g in gate.guards]
        for metric, higher, floor in limits:
            if floor is None:
                continue
            ok = _within_floor(higher, challenger[metric], floor)
            line = f"{metric} {challenger[metric]:.4g} {'>=' if higher else '<='} floor {floor:g}"
            checks.append(line)
            if not ok:
                failed.append(f"{metric} {challenger[metric]:.4g} misses the floor {floor:g}")
        if failed:
            return Decision(False, "first promotion refused: " + "; ".join(failed), checks=checks)
        return Decision(True, "first promotion: " + ("; ".join(checks) if checks else "no floors configured"), checks=checks)
    gain = _better(gate.higher_is_better, challenger[gate.metric], champion[gate.metric])
    checks.append(f"{gate.metric} {challenger[gate.metric]:.4g} vs champion {champion[gate.metric]:.4g} (better by {gain:.4g})")
    if not gain > gate.min_delta:
        failed.append(f"{gate.metric} is not better than the champion's by more than {gate.min_delta:g} ({gain:+.4g})")
    for guard in gate.guards:
        worse = -_better(guard.higher_is_better, challenger[guard.metric], champion[guard.metric])
        checks.append(f"{guard.metric} {challenger[guard.metric]:.4g} vs champion {champion[guard.metric]:.4g}")
        if worse > guard.tolerance:
            failed.append(f"guard {guard.metric} is worse by {worse:.4g} (tolerance {guard.tolerance:g})")
    if failed:
        return Decision(False, "; ".join(failed), checks=checks)
    return Decision(True, "better than the champion: " + "; ".join(checks), checks=checks)
