"""The `promote` MLflow run's record: one table row per version the gate looked at (challenger
and champion side by side, with the decision and its reason), and the decisions as run tags."""

from __future__ import annotations

from typing import Any

from smolforge import tracking
from smolforge.tasks.promote.promotion import Outcome


def comparison_rows(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    rows = []
    for o in outcomes:
        common = {"model": o.name, "decision": o.decision, "forced": o.forced, "reason": o.reason}
        rows.append({**common, "role": "challenger", "version": o.version, **o.challenger_metrics})
        if o.champion is not None:
            rows.append({**common, "role": "champion", "version": o.champion, **o.champion_metrics})
    return rows


def log_outcomes(outcomes: list[Outcome]) -> None:
    """Into the active run: the comparison table and a `promotion.<model>` tag per decision."""
    import mlflow

    rows = comparison_rows(outcomes)
    if rows:
        columns = list(dict.fromkeys(k for r in rows for k in r))
        mlflow.log_table({c: [r.get(c) for r in rows] for c in columns}, "comparison.json")
    tracking.set_tags({f"promotion.{o.name}": f"{o.decision} version {o.version}" for o in outcomes})
