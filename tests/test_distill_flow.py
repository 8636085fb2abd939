"""The tiny pipeline through distillation: the student beats the same student trained from scratch,
is logged and registered, re-runs are cached, the teacher's top-k store spares a second student
the teacher, and a teacher from the registry works as well as the pipeline's own."""

from pathlib import Path

import mlflow
import pytest

from smolforge.artifacts import ArtifactStore
from smolforge.errors import ConfigError
from smolforge.flows.config import load_config
from smolforge.flows.distill import distill
from smolforge.flows.pipeline import pipeline
from smolforge.flows.results import PipelineResult

pytestmark = pytest.mark.slow

OVERRIDES = ["finetune=null", "merge=null", "sweep=null", "evaluate=null", "promote=null"]


@pytest.fixture(scope="module")
def trained(tiny_pipeline):
    return tiny_pipeline


def refs(result):
    return result.curate.corpus, result.pretrain.model


def upstream(result, *stages: str) -> PipelineResult:
    """The pipeline's results of `stages` (default: curation and pretraining), as a later stage gets them."""
    return PipelineResult(**{name: getattr(result, name) for name in stages or ("curate", "pretrain")})


def test_distilled_student_beats_the_same_student_trained_from_scratch(trained):
    """Same student, same initialisation, same batches and steps; only alpha differs (0: plain
    next-token cross-entropy, which is pretraining). The margin is in nats per token."""
    from smolforge.tasks.distill.prefect_tasks import distill_stage

    config = load_config("tiny", overrides=OVERRIDES)
    corpus, teacher = refs(trained)
    runtime = config.runtime()
    scratch = distill_stage.fn(corpus, teacher, None, config.distill.model_copy(update={"alpha": 0.0}), runtime)
    distilled = trained.distill.metrics["val_loss"]
    from_scratch = scratch.manifest()["metrics"]["val_loss"]
    assert distilled < from_scratch - 0.1, (distilled, from_scratch)


def test_student_is_smaller_logged_and_registered_as_a_candidate(trained):
    from transformers import AutoModelForCausalLM

    result = trained.distill
    assert result.student_parameters < result.teacher_parameters
    assert result.inputs.teacher.key == trained.pretrain.model.key
    client = mlflow.MlflowClient()
    run = client.get_run(result.mlflow_run_id)
    assert run.info.run_name == "distill"
    assert run.data.tags["mlflow.parentRunId"] == trained.mlflow_run_id
    assert {"loss", "kl", "ce", "val_loss", "lr", "tokens_per_s"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "kl")) >= 5
    assert int(run.data.params["parameters"]) == result.student_parameters

    version = client.get_model_version_by_alias("smolforge-student", "candidate")
    assert version.tags["smolforge.teacher_key"] == trained.pretrain.model.key
    assert version.tags["smolforge.corpus_key"] == trained.curate.corpus.key
    assert version.tags["smolforge.artifact_key"] == result.model.key
    path = Path(mlflow.artifacts.download_artifacts("models:/smolforge-student@candidate"))
    model = AutoModelForCausalLM.from_pretrained(path / "model")
    assert model.config.hidden_size == 64 and model.config.num_hidden_layers == 2


def test_rerun_is_cached(trained, session_home):
    store = ArtifactStore(session_home / "artifacts")
    before = {p.name for p in store.root.glob("distilled/*")} | {p.name for p in store.root.glob("teacher-topk/*")}
    versions = len(mlflow.MlflowClient().search_model_versions("name='smolforge-student'"))
    again = pipeline(load_config("tiny", overrides=OVERRIDES))
    assert again.distill.model == trained.distill.model
    after = {p.name for p in store.root.glob("distilled/*")} | {p.name for p in store.root.glob("teacher-topk/*")}
    assert after == before
    assert len(mlflow.MlflowClient().search_model_versions("name='smolforge-student'")) == versions


def test_a_second_student_reads_the_stored_top_k_and_never_runs_the_teacher(trained, monkeypatch):
    short = [*OVERRIDES, "distill.top_k=32", "distill.data.steps=30", "distill.eval_every=15",
             "distill.register_as=smolforge-student-topk"]
    first = distill(load_config("tiny", overrides=short), upstream(trained))
    assert first.inputs.topk.kind == "teacher-topk"

    def no_teacher(*args, **kwargs):
        raise AssertionError("the teacher ran although its top-k store exists")

    monkeypatch.setattr("smolforge.tasks.distill.prefect_tasks.load_teacher", no_teacher)
    monkeypatch.setattr("smolforge.tasks.distill.train.load_teacher", no_teacher)
    other = [*short, "distill.student.hidden_size=32", "distill.temperature=1.5", "distill.alpha=0.7"]
    second = distill(load_config("tiny", overrides=other), upstream(trained))
    assert second.inputs.topk == first.inputs.topk
    assert second.model.key != first.model.key
    assert second.metrics["val_loss"] < first.metrics["val_loss"] + 1.0
    # another data plan has no store yet: the teacher would have to run
    with pytest.raises(AssertionError, match="the teacher ran"):
        distill(load_config("tiny", overrides=[*short, "distill.data.steps=20"]), upstream(trained))


def test_a_registry_teacher_is_downloaded_checked_and_used(trained, session_home):
    config = load_config(
        "tiny",
        overrides=[
            *OVERRIDES, "distill.teacher=models:/smolforge-base@candidate", "distill.top_k=null", "distill.data.steps=8",
            "distill.eval_every=4", "distill.schedule.warmup_steps=2", "distill.register_as=smolforge-student-registry",
        ],
    )
    result = distill(config, upstream(trained, "curate"))
    assert result.inputs.teacher.kind == "model-import"
    assert (result.inputs.teacher.path / "model" / "config.json").is_file()
    assert result.metrics["steps"] == 8


@pytest.mark.parametrize(
    "override, message",
    [("distill.teacher=/no/such/teacher", "no such folder"),
     ("distill.teacher=models:/no-such-model@candidate", "no registered model 'no-such-model'; registered: "),
     ("distill.student.hidden_size=256", "must be smaller than the teacher"),
     ("distill.data.steps=100000", "more than max_epochs"),
     ("distill.data.steps=8", "warmup_steps=10 runs past the decay start")],
)
def test_bad_teachers_and_budgets_are_refused_before_any_training(trained, session_home, override, message):
    store = ArtifactStore(session_home / "artifacts")
    before = {p.name for p in store.root.glob("distilled/*")}
    with pytest.raises(ConfigError, match=message):
        distill(load_config("tiny", overrides=[*OVERRIDES, override]), upstream(trained))
    assert {p.name for p in store.root.glob("distilled/*")} == before
