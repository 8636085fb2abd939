"""Log a trained model with MLflow's transformers flavor and register it under an alias.

Every stage that produces a model (pretraining, distillation, fine-tuning) registers the same way:
the artifact's `model/` folder (a transformers model and its tokenizer) is logged in the MLflow run
of the stage that trained it (the run id its task kept in the artifact's manifest), so the version's
page shows that run's metrics and params; it is registered from the logged model's URI, tagged with
the artifact key and the stage's lineage, and given the alias `candidate`. A version already
registered from the very same artifact is reused, so a cached re-run adds none.
"""

from __future__ import annotations

import warnings

from prefect import task

from smolforge import tracking
from smolforge.artifacts import ArtifactRef
from smolforge.tasks.curate.tokenizer import load_tokenizer


def pip_requirements() -> list[str]:
    """Inferring requirements imports every optional extra (torchvision among them): name ours."""
    import tokenizers
    import torch
    import transformers

    return [
        f"torch=={torch.__version__.split('+')[0]}",
        f"transformers=={transformers.__version__}",
        f"tokenizers=={tokenizers.__version__}",
    ]


@task(name="register-model")
def register_model(final: ArtifactRef, name: str, lineage: dict[str, str], run_id: str | None = None) -> dict[str, str]:
    """Register `final`'s `model/` folder as `name@candidate` from the run that trained it (its
    manifest's `mlflow_run_id`, or `run_id`: a merge is logged in the run that chose it);
    `lineage` (keys of what it was made from) goes on the version."""
    import mlflow
    from transformers import AutoModelForCausalLM

    client = tracking.client()
    existing = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("smolforge.artifact_key") == final.key]
    if existing:
        version = existing[0]
    else:
        run_id = run_id or final.manifest()["metrics"]["mlflow_run_id"]
        model = AutoModelForCausalLM.from_pretrained(final.path / "model")
        tokenizer = load_tokenizer(str(final.path / "model"))
        with tracking.resume(run_id), warnings.catch_warnings():
            # A local model has no hub card or license to look up; MLflow warns about each.
            warnings.filterwarnings("ignore", message=".*(model card|license).*")
            info = mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                name="model",
                task="text-generation",
                pip_requirements=pip_requirements(),
            )
        version = mlflow.register_model(info.model_uri, name, tags={"smolforge.artifact_key": final.key, **lineage})
    client.set_registered_model_alias(name, "candidate", version.version)
    return {"name": name, "version": str(version.version), "uri": f"models:/{name}@candidate"}
