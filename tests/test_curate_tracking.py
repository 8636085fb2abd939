"""What the curate stage's MLflow run holds: drop counts by step and reason as one table beside the
funnel table, not one single-point metric chart per reason."""

import mlflow
import pytest

pytestmark = pytest.mark.slow


def test_drop_counts_are_a_table_in_the_curate_run_not_metric_charts(tiny_pipeline):
    curated = tiny_pipeline.curate
    run = mlflow.get_run(curated.mlflow_run_id)
    assert not [m for m in run.data.metrics if m.startswith("dropped.")]
    assert run.data.metrics["dedup.dropped"] >= 1  # the funnel's per-step totals stay metrics
    client = mlflow.MlflowClient()  # the fluent load_table looks in the default experiment only
    table = client.load_table(run.info.experiment_id, "curation/drops.json", run_ids=[curated.mlflow_run_id])
    logged = {(row.step, row.reason): row.documents for row in table.itertuples()}
    assert logged == {(step, reason): n for step, reasons in curated.drops.items() for reason, n in reasons.items()}
    assert logged[("dedup", "exact_duplicate")] >= 1
