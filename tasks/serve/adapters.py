"""Serving a base with adapters that stay apart from it: one loaded base, the adapter picked per request.

Two kinds of fine-tune end up here: prefix and prompt tuning, whose adapters peft cannot fold into
the base's weights, and `finetune.adapters`, several named adapters trained on one base. MLflow's
transformers flavor would log such a model as the adapter plus the base's hub id, to be downloaded
when it is loaded; this project's bases are on no hub. So the model is logged as an MLflow pyfunc
(`AdapterChatModel`, in `adapter_model.py`) whose one artifact is a folder holding the base's weights, its tokenizer and
`adapters/<name>/` (the layout `model_source.load_causal_lm` reads): it loads offline in a fresh
process, with the base read once and every adapter beside it (peft's `load_adapter`), and each
request switches with `set_adapter` (its `adapter` param), reloading nothing.

Requests and answers: a list of user messages (strings) in, the assistant's answers out, each in the
tokenizer's chat template and ending at the end of the turn, greedy; params `adapter` (default: the
one named `default`, else the first) and `max_new_tokens`.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from smolforge import tracking
from smolforge.artifacts import stable_hash
from smolforge.model_source import ADAPTERS, model_folder
from smolforge.runtime import Runtime
from smolforge.tasks.registry import register, serving

SERVING_TAG = "smolforge.serving"  # the registry entry says how the model is served:
BASE_PLUS_ADAPTER = "base+adapter"  # this module's pyfunc, or
MERGED = "merged"  # the adapter folded into the base (lora, qlora, ia3), or
FULL = "full"  # every weight trained: both logged with MLflow's transformers flavor


def assemble(base: Path, adapters: dict[str, Path], out: Path) -> Path:
    """One folder with the base's files (weights, config, tokenizer) and each adapter in
    `adapters/<name>/`: what `AdapterChatModel` loads."""
    shutil.copytree(model_folder(base), out, ignore=shutil.ignore_patterns(ADAPTERS))
    for name, folder in adapters.items():
        shutil.copytree(folder, out / ADAPTERS / name)
    return out


def register_adapters(
    base: Path, adapters: dict[str, Path], name: str, keys: dict[str, str], lineage: dict[str, str],
    runtime: Runtime, run_id: str | None = None,
) -> dict[str, str]:
    """Log the base (a transformers folder) with `adapters` (name -> peft adapter folder) as an
    `AdapterChatModel` and register it as `name@candidate`, tagged as served base + adapter with
    its adapter names. It is logged in the run `run_id` (the fine-tuning run of a single adapter),
    else in a `register-adapters` run of its own. `keys` (adapter name -> artifact key) identify it:
    the same adapters again reuse the version registered from them, logging nothing."""
    import mlflow
    from mlflow.models import infer_signature

    # MLflow warns about the pyfunc class's `predict` whenever the class is defined, so its module is
    # imported only when such a model is logged (and by MLflow when one is loaded), not with the flows
    from smolforge.tasks.serve.adapter_model import MODEL_ARTIFACT, AdapterChatModel

    key = stable_hash(keys)
    client = tracking.client()
    found = [v for v in client.search_model_versions(f"name='{name}'") if v.tags.get("smolforge.adapters_key") == key]
    if found:
        version = found[0]
    else:
        names = sorted(adapters)
        signature = infer_signature(
            ["a question"], ["an answer"], params={"adapter": names[0], "max_new_tokens": serving.MAX_NEW_TOKENS}
        )
        runs = (
            tracking.resume(run_id) if run_id is not None
            else tracking.run("register-adapters", runtime.experiment, runtime.parent_run_id, tags={"smolforge.adapters_key": key})
        )
        with runs as active, tempfile.TemporaryDirectory(prefix="smolforge-adapters-") as scratch:
            # MLflow copies the folder into the run: the logged model holds the base's weights
            folder = assemble(base, adapters, Path(scratch) / "model")
            info = mlflow.pyfunc.log_model(
                name="model", python_model=AdapterChatModel(), artifacts={MODEL_ARTIFACT: str(folder)},
                signature=signature, pip_requirements=[*register.pip_requirements(), peft_requirement()],
                metadata={"task": serving.CHAT_TASK, "serving": BASE_PLUS_ADAPTER, "adapters": names},
            )
            logged_in = active.info.run_id
        tags = {
            SERVING_TAG: BASE_PLUS_ADAPTER, "smolforge.adapters": ",".join(names), "smolforge.adapters_key": key,
            "smolforge.artifact_key": next(iter(keys.values())), **lineage,
        }
        version = mlflow.register_model(info.model_uri, name, tags=tags)
        register.log_lineage(logged_in, runtime.store, name, version)
    client.set_registered_model_alias(name, "candidate", version.version)
    return {"name": name, "version": str(version.version), "uri": f"models:/{name}@candidate"}


def peft_requirement() -> str:
    import peft

    return f"peft=={peft.__version__}"
