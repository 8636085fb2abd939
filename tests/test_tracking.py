"""The MLflow experiment opens on its training runs: MLflow 3's UI picks its landing page (GenAI
traces or model-training runs) from the experiment's kind tag."""

import mlflow

from smolforge import tracking


def kind(experiment_id: str) -> str | None:
    return mlflow.MlflowClient().get_experiment(experiment_id).tags.get("mlflow.experimentKind")


def test_a_new_experiment_is_created_as_a_model_training_experiment():
    assert kind(tracking.experiment_id("kind-new")) == "custom_model_development"


def test_an_existing_experiment_without_a_chosen_kind_gets_it_and_a_chosen_kind_stays():
    client = mlflow.MlflowClient()
    untagged = client.create_experiment("kind-untagged")
    inferred = client.create_experiment("kind-inferred", tags={"mlflow.experimentKind": "genai_development_inferred"})
    chosen = client.create_experiment("kind-chosen", tags={"mlflow.experimentKind": "genai_development"})
    assert tracking.experiment_id("kind-untagged") == untagged
    assert tracking.experiment_id("kind-inferred") == inferred
    assert tracking.experiment_id("kind-chosen") == chosen
    assert (kind(untagged), kind(inferred), kind(chosen)) == (
        "custom_model_development", "custom_model_development", "genai_development"
    )
