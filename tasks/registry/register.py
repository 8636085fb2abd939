"""Log a trained model with MLflow's transformers flavor and register it under an alias.

Every stage that produces a model (pretraining, distillation, fine-tuning) registers the same way:
the artifact's `model/` folder (a transformers model and its tokenizer) is logged in the MLflow run
of the stage that trained it (the run id its task kept in the artifact's manifest), so the version's
page shows that run's metrics and params; it is registered from the logged model's URI, tagged with
the artifact key and the stage's lineage (the whole chain back to the corpus goes in the run as
`lineage.json`), and given the alias `candidate`. A version already registered from the very same
artifact is reused, so a cached re-run adds none.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

from prefect import task

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, ArtifactStore, store_of
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.registry import serving
from smolforge.tasks.registry.lineage import version_lineage


class _DropMessages(logging.Filter):
    """Drops a library's log records that contain one of `fragments`."""

    def __init__(self, *fragments: str):
        super().__init__()
        self.fragments = fragments

    def filter(self, record: logging.LogRecord) -> bool:
        return not any(f in record.getMessage() for f in self.fragments)


# MLflow's transformers flavor imports peft, and peft imports bitsandbytes, whatever the model. On a
# CPU with AVX512-BF16, bitsandbytes then tries to fetch a faster 4-bit kernel from the Hugging Face
# hub, fails (offline, or without the `kernels` package) and logs a warning, though its own CPU
# kernels (the ones QLoRA's tests check) run instead: noise in every run, 4-bit or not. It logs
# once, when first imported, so the filter is in place from this module's import, which every flow
# that registers a model, or fine-tunes one, does first.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(_DropMessages("from kernels-community"))


@contextlib.contextmanager
def _no_hub_card_warnings() -> Iterator[None]:
    """A model trained here has no hub card or license to look up; MLflow logs a warning about
    each (log records, not Python warnings) while logging it."""
    logger, quiet = logging.getLogger("mlflow.transformers"), _DropMessages(
        "model card could not be retrieved", "Unable to find license information"
    )
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


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
def register_model(
    final: ArtifactRef, name: str, lineage: dict[str, str], run_id: str | None = None, chat: bool = False
) -> dict[str, str]:
    """Register `final`'s `model/` folder as `name@candidate` from the run that trained it (its
    manifest's `mlflow_run_id`, or `run_id`: a merge is logged in the run that chose it);
    `lineage` (keys of what it was made from) goes on the version. A `chat` model is served with
    messages in and the assistant's answer out, any other as text completion (`serving`)."""
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
        task, model_config = serving.inference(chat, tokenizer)
        with tracking.resume(run_id), _no_hub_card_warnings():
            info = mlflow.transformers.log_model(
                transformers_model={"model": model, "tokenizer": tokenizer},
                name="model",
                task=task,
                model_config=model_config,
                pip_requirements=pip_requirements(),
            )
        version = mlflow.register_model(info.model_uri, name, tags={"smolforge.artifact_key": final.key, **lineage})
        log_lineage(run_id, store_of(final), name, version)
    client.set_registered_model_alias(name, "candidate", version.version)
    return {"name": name, "version": str(version.version), "uri": f"models:/{name}@candidate"}


def log_lineage(run_id: str, store: ArtifactStore, name: str, version: Any) -> None:
    """The chain behind a new version, as `lineage.json` in the run it was logged from."""
    tracking.client().log_dict(run_id, version_lineage(store, name, version), "lineage.json")
