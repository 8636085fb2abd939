"""The deployments `smolforge deploy` makes, checked without a server: one per flow of the
composition, training stages on the GPU pool, and defaults the server will accept (it validates
them against the flow's parameter schema the way `validate` does here; a config field Prefect's
schema handling cannot express would make `deploy` fail on a real server)."""

from prefect.utilities.callables import parameter_schema
from prefect.utilities.schema_tools import validate

from smolforge.deployments.catalog import RETRAIN_SCHEDULES, default_parameters, specs
from smolforge.flows.config import FLOWS, STAGES, PipelineConfig


def test_one_deployment_per_flow_training_on_the_gpu_pool():
    found = specs()
    assert [s.flow_name for s in found] == list(FLOWS)
    gpu = {s.name for s in STAGES if s.gpu}
    assert gpu == {"pretrain", "distill", "finetune", "sweep"}
    for spec in found:
        assert spec.pool == ("gpu" if spec.flow_name in gpu else "cpu"), spec.flow_name
        assert ("gpu" in spec.tags) == (spec.flow_name in gpu)
        assert spec.flow().name == spec.flow_name
    retrain = next(s for s in found if s.flow_name == "retrain")
    assert [(s.slug, s.active) for s in retrain.schedules] == [(slug, False) for slug, _, _ in RETRAIN_SCHEDULES]


def test_the_default_parameters_pass_the_servers_schema_check_and_round_trip():
    parameters = default_parameters()
    for spec in specs():
        schema = parameter_schema(spec.flow()).model_dump(mode="json", exclude_unset=True)
        validate(parameters, schema, raise_on_error=True, ignore_required=True)  # what the server runs on create
        validate(parameters, schema, raise_on_error=True)
    assert PipelineConfig.model_validate(parameters["config"]).preset == "tiny"


def test_a_config_the_schema_does_not_allow_is_refused_by_the_same_check():
    import pytest
    from prefect.utilities.schema_tools import ValidationError

    parameters = default_parameters()
    parameters["config"]["curate"]["language"]["threshold"] = "high"
    schema = parameter_schema(specs()[0].flow()).model_dump(mode="json", exclude_unset=True)
    with pytest.raises(ValidationError, match="threshold"):
        validate(parameters, schema, raise_on_error=True, ignore_required=True)
