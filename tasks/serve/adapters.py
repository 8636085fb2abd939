"""Serving a base with adapters that stay apart from it: one loaded base, the adapter picked per request.

Two kinds of fine-tune end up here: prefix and prompt tuning, whose adapters peft cannot fold into
the base's weights, and `finetune.adapters`, several named adapters trained on one base. MLflow's
transformers flavor would log such a model as the adapter plus the base's hub id, to be downloaded
when it is loaded; this project's bases are on no hub. So the model is logged as an MLflow pyfunc
(`AdapterChatModel`) whose one artifact is a folder holding the base's weights, its tokenizer and
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
from typing import Any

from smolforge import tracking
from smolforge.artifacts import stable_hash
from smolforge.model_source import ADAPTERS, DEFAULT_ADAPTER, PYFUNC_MODEL, load_causal_lm, model_folder
from smolforge.runtime import Runtime
from smolforge.tasks.registry import register, serving

import mlflow.pyfunc  # isort: skip  # the pyfunc base class; the other imports stay where they are used

MODEL_ARTIFACT = PYFUNC_MODEL.name  # the pyfunc artifact: base weights + tokenizer + adapters/<name>/
SERVING_TAG = "smolforge.serving"  # the registry entry says how the model is served:
BASE_PLUS_ADAPTER = "base+adapter"  # this module's pyfunc, or
MERGED = "merged"  # the adapter folded into the base (lora, qlora, ia3), or
FULL = "full"  # every weight trained: both logged with MLflow's transformers flavor


class AdapterChatModel(mlflow.pyfunc.PythonModel):
    """A chat model made of one base and named adapters; see the module's docstring."""

    def load_context(self, context: Any) -> None:
        from smolforge.tasks.curate.tokenizer import load_tokenizer

        folder = Path(context.artifacts[MODEL_ARTIFACT])
        self.tokenizer = load_tokenizer(str(folder))
        self.model = load_causal_lm(folder)
        self.adapters = sorted(self.model.peft_config)

    # no type hints: MLflow reads them as an input schema (and warns at import) unless they are list[...]
    def predict(self, context, model_input, params=None):
        params = params or {}
        adapter = params.get("adapter") or (DEFAULT_ADAPTER if DEFAULT_ADAPTER in self.adapters else self.adapters[0])
        if adapter not in self.adapters:
            raise ValueError(f"adapter {adapter!r}: this model has adapters {self.adapters}")
        self.model.set_adapter(adapter)
        max_new = int(params.get("max_new_tokens") or serving.MAX_NEW_TOKENS)
        return [answer(self.model, self.tokenizer, prompt, max_new) for prompt in prompts(model_input)]


def prompts(model_input: Any) -> list[str]:
    """The user messages of a request: a string, a list of them, or a one-column DataFrame."""
    if isinstance(model_input, str):
        return [model_input]
    if hasattr(model_input, "iloc"):  # pandas, as MLflow hands a column-less string schema's input
        return [str(v) for v in model_input.iloc[:, 0]]
    return [str(v) for v in model_input]


def answer(model: Any, tokenizer: Any, prompt: str, max_new_tokens: int) -> str:
    """The active adapter's greedy answer to one user message, in the chat template."""
    import torch

    ids = tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
    )["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False,
            eos_token_id=serving.turn_stop_ids(tokenizer), pad_token_id=tokenizer.pad_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


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
    from mlflow.models import infer_signature

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
