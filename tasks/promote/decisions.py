"""Decisions as the command line and the pipeline ask for them: look the gates up, check every
target before anything is written, and keep the decisions in one `promote` MLflow run.

Light on purpose (the registry and MLflow only): `smolforge promote` and `smolforge rollback`
start fast. Scoring a champion again on other data is the caller's `reevaluate`, which the flow
gives the evaluate stage's step.
"""

from __future__ import annotations

from smolforge import tracking
from smolforge.tasks.promote.config import Gate, PromoteConfig
from smolforge.tasks.promote.gate import PromotionError
from smolforge.tasks.promote.promotion import Outcome, Reevaluate, check, promote, rollback
from smolforge.tasks.promote.registry import PREVIOUS, aliases, require_alias
from smolforge.tasks.promote.report import log_outcomes


def gate_for(config: PromoteConfig, name: str) -> Gate:
    if name not in config.gates:
        raise PromotionError(f"promote.gates has no gate for {name!r}; gates exist for: {', '.join(sorted(config.gates))}")
    return config.gates[name]


def version_of(name: str, version: str) -> str:
    """A version number as given, or the version an alias (`candidate`) points at."""
    return version if version.isdigit() else require_alias(name, version)


def decide(
    config: PromoteConfig, experiment: str, targets: list[tuple[str, str]], *, reevaluate: Reevaluate,
    force: bool = False, note: str = "", parent_run_id: str | None = None,
) -> tuple[list[Outcome], str]:
    """Run the gate on each `(name, version)`; one `promote` MLflow run (returned with the
    outcomes) holds every decision. Every target is checked first: an unregistered name, a missing
    version or evaluation, a gate metric no evaluation holds change nothing."""
    for name, _ in targets:
        aliases(name)  # an unregistered name is named as such before its gate is looked up
    gates = {name: gate_for(config, name) for name, _ in targets}
    for name, version in targets:
        check(name, version, gates[name])
    with tracking.run("promote", experiment, parent_run_id) as active:
        outcomes = [
            promote(
                name, version, gates[name], reevaluate=reevaluate, force=force, note=note, run_id=active.info.run_id,
                pipeline_run_id=parent_run_id or "", settle_seconds=config.settle_seconds, attempts=config.attempts,
            )
            for name, version in targets
        ]
        log_outcomes(outcomes)
    return outcomes, active.info.run_id


def roll_back(experiment: str, name: str, note: str = "") -> tuple[list[Outcome], str]:
    """`champion` back to `previous-champion`, recorded in a `promote` MLflow run."""
    require_alias(name, PREVIOUS)  # refused before a run is opened
    with tracking.run("promote", experiment, tags={"promotion.rollback": name}) as active:
        outcome = rollback(name, note, active.info.run_id)
        log_outcomes([outcome])
    return [outcome], active.info.run_id
