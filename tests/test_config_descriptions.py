"""Every setting explains itself: the Prefect UI renders a flow's config as a form whose help text is
each field's description, and a field without one is a bare name in that form."""

import typing

from pydantic import BaseModel

from smolforge.flows.config import PipelineConfig

# Curation's settings are another module's, checked by that module's own test.
CHECKED_ELSEWHERE = ("smolforge.tasks.curate.config",)


def config_models(root: type[BaseModel]) -> list[type[BaseModel]]:
    """`root` and every model a field of it can hold, through lists, mappings and unions."""
    found: list[type[BaseModel]] = []
    todo: list[typing.Any] = [root]
    while todo:
        annotation = todo.pop()
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in found:
                found.append(annotation)
                todo += [field.annotation for field in annotation.model_fields.values()]
        else:
            todo += typing.get_args(annotation)
    return found


def test_every_setting_reachable_from_the_pipeline_config_has_a_description():
    models = [m for m in config_models(PipelineConfig) if m.__module__ not in CHECKED_ELSEWHERE]
    assert {"ModelConfig", "LoraSettings", "SweepConfig", "ExecutionConfig", "IntRange"} <= {m.__name__ for m in models}
    bare = [
        f"{m.__module__}.{m.__name__}.{name}"
        for m in models
        for name, field in m.model_fields.items()
        if not (field.description or "").strip()
    ]
    assert bare == []

