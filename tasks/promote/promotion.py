"""Promotion and rollback through the registry's aliases, guarded by the registry itself.

MLflow has no compare-and-set on an alias, and two promotions may run at once on two machines that
share one server, so a local lock guards nothing. A promotion or rollback of a model therefore
holds that model's lock in the registry (`registry.promotion_lock`: a registered model whose
unique name the store creates once). Inside it, as a second line for a lock broken as stale, a
promotion decides against the champion it read, checks that `champion` still points there, moves
it, waits `settle_seconds`, reads it back, and decides again against whatever it finds instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from smolforge.tasks.promote.config import Gate
from smolforge.tasks.promote.gate import PromotionError, decide, require_metrics
from smolforge.tasks.promote.registry import (
    CHAMPION,
    PREVIOUS,
    Evaluation,
    alias_version,
    aliases,
    evaluation,
    promotion_lock,
    require_alias,
    require_evaluation,
    set_alias,
    tag_version,
    version_tags,
)

# (name, version, data key) -> the version's evaluation on that data, made and tagged if need be
Reevaluate = Callable[[str, str, str], Evaluation]


@dataclass
class Outcome:
    """One promotion decision, as tagged on the challenger and shown in the `promote` run's table."""

    name: str
    version: str
    decision: str  # promoted | rejected | already champion
    reason: str
    forced: bool = False
    champion: str | None = None  # the version it was compared with (the champion before)
    challenger_metrics: dict[str, float] = field(default_factory=dict)
    champion_metrics: dict[str, float] = field(default_factory=dict)
    data_key: str | None = None


def _gate_values(gate: Gate, found: Evaluation | None) -> dict[str, float]:
    return {} if found is None else {m: found.metrics[m] for m in gate.metrics()}


def check(name: str, version: str, gate: Gate) -> Evaluation:
    """The challenger's evaluation, refused (with what exists instead) when the name, the version,
    the evaluation or a gate metric is missing; the champion's metrics too, when it was scored on
    the same data (otherwise it is evaluated again before the gate decides)."""
    challenger = require_evaluation(name, str(version))
    require_metrics(gate, challenger.metrics, f"{name} version {version}")
    incumbent = alias_version(name, CHAMPION)
    if incumbent is not None and incumbent != str(version):
        champion = evaluation(name, incumbent)
        if champion is not None and champion.data_key == challenger.data_key:
            require_metrics(gate, champion.metrics, f"the champion, {name} version {incumbent}")
    return challenger


def promote(
    name: str, version: str, gate: Gate, *, reevaluate: Reevaluate, force: bool = False, note: str = "",
    run_id: str = "", pipeline_run_id: str = "", settle_seconds: float = 1.0, attempts: int = 5,
) -> Outcome:
    """Run the gate on `version` of `name` against its champion and move the aliases on a pass;
    tag the decision on `version` either way. Refuses, before any change, a name, version or
    evaluation that does not exist and a gate metric the evaluations lack."""
    challenger = check(name, version, gate)
    with promotion_lock(name):
        return _promote_locked(name, version, gate, challenger, reevaluate, force, note, run_id, pipeline_run_id, settle_seconds, attempts)


def _promote_locked(
    name: str, version: str, gate: Gate, challenger: Evaluation, reevaluate: Reevaluate, force: bool, note: str,
    run_id: str, pipeline_run_id: str, settle_seconds: float, attempts: int,
) -> Outcome:
    for _ in range(attempts):
        before = alias_version(name, CHAMPION)
        if before == str(version):
            return Outcome(name, str(version), "already champion", f"version {version} is the champion already")
        champion = None
        if before is not None:
            champion = evaluation(name, before)
            if champion is None or champion.data_key != challenger.data_key:
                if challenger.data_key is None:
                    raise PromotionError(f"{name} version {version}'s evaluation names no data key (eval.data_key): evaluate it again")
                champion = reevaluate(name, before, challenger.data_key)  # never compare across data
            require_metrics(gate, champion.metrics, f"the champion, {name} version {before}")
        verdict = decide(gate, challenger.metrics, None if champion is None else champion.metrics, force)
        outcome = Outcome(
            name, str(version), "promoted" if verdict.passed else "rejected", verdict.reason, verdict.forced, before,
            _gate_values(gate, challenger), _gate_values(gate, champion), challenger.data_key,
        )
        if not verdict.passed:
            _record(outcome, note, run_id, pipeline_run_id)
            return outcome
        if alias_version(name, CHAMPION) != before:
            continue  # another promotion moved it while this one decided: decide against that one
        set_alias(name, CHAMPION, str(version))
        if before is not None:
            set_alias(name, PREVIOUS, before)
        time.sleep(settle_seconds)
        if alias_version(name, CHAMPION) == str(version):
            _record(outcome, note, run_id, pipeline_run_id)
            return outcome
    raise PromotionError(f"{name}'s champion moved {attempts} times while version {version} was being decided; try again")


def _record(outcome: Outcome, note: str, run_id: str, pipeline_run_id: str) -> None:
    tags = {
        "promotion": outcome.decision,
        "promotion.reason": outcome.reason,
        "promotion.forced": str(outcome.forced).lower(),
        "promotion.note": note,
        "promotion.champion_version": outcome.champion or "",
        "promotion.challenger_metrics": outcome.challenger_metrics,
        "promotion.champion_metrics": outcome.champion_metrics,
        "promotion.data_key": outcome.data_key or "",
        "promotion.run_id": run_id,
        "promotion.pipeline_run_id": pipeline_run_id,
    }
    if outcome.decision == "promoted":
        tags["promotion.previous_champion"] = outcome.champion or ""
    tag_version(outcome.name, outcome.version, tags)


def rollback(name: str, note: str = "", run_id: str = "") -> Outcome:
    """`champion` back to `previous-champion`; `previous-champion` to the one before it (as the
    restored version's promotion recorded), or removed. Both versions are tagged saying so."""
    require_alias(name, CHAMPION)  # refused before waiting for the lock
    with promotion_lock(name):
        return _rollback_locked(name, note, run_id)


def _rollback_locked(name: str, note: str, run_id: str) -> Outcome:
    current = require_alias(name, CHAMPION)
    previous = alias_version(name, PREVIOUS)
    if previous is None:
        known = ", ".join(f"{a} -> {v}" for a, v in sorted(aliases(name).items()))
        raise PromotionError(f"{name} has no previous champion to roll back to (aliases: {known})")
    earlier = version_tags(name, previous).get("promotion.previous_champion") or None
    set_alias(name, CHAMPION, previous)
    set_alias(name, PREVIOUS, earlier if earlier not in (previous, current) else None)
    reason = f"rolled back from version {current} to version {previous}" + (f": {note}" if note else "")
    tag_version(name, current, {"promotion": "rolled back", "promotion.reason": reason, "promotion.run_id": run_id})
    tag_version(name, previous, {"promotion": "restored", "promotion.reason": reason, "promotion.run_id": run_id})
    return Outcome(name, previous, "restored", reason, champion=current)
