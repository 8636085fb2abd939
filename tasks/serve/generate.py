"""Generate from any model the pipeline made, streaming the text as it comes.

The model folder is loaded with transformers directly rather than through MLflow's pyfunc wrapper
(which takes ~9 s to load on its own), so a question typed at the command line gets its first
words in a few seconds. A chat model gets the user's text as a chat turn (the tokenizer's
template) and stops at the end of its turn; any other model continues the text as it is.

Which a model is: a registry version says how it was registered (`serving.CHAT_TASK`); a folder
(or an artifact key) is a chat model when its generation config ends a turn at `<|im_end|>`, as
fine-tuning saves it. `chat=True/False` overrides both (a merge keeps its donor's generation
config, so a task-vector merge's folder reads as its base's).

A registry reference costs MLflow's import and its stores' start (~2 s of one core) before the
registry answers. In a fresh process (the `smolforge generate` command) it is asked in a forked
child, started before anything heavy is imported, while this process imports torch, transformers
and the model code (~4 s): with a core to spare the lookup costs nothing to wait for, and forking
adds no imports of its own, so on a busy machine it costs no more than asking in turn (a spawned
child re-imports the command: +0.7 s of CPU, slower than in turn when no core is free). A thread
would not do: both sides are imports, which hold the GIL (tried: no gain). A process that has
imported MLflow already asks in turn: there is no import left to hide, and a fork would share its
store's open connections. A registered model is read in place from a local artifact store, not
copied (`model_source.registered_model`).
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import threading
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolforge.artifacts import ARTIFACT_SPEC, ArtifactStore, find_artifact
from smolforge.model_source import REGISTRY_SCHEMES, ModelSourceError, load_causal_lm, model_folder, registered_model
from smolforge.tasks.registry.serving import CHAT_TASK, turn_stop_ids

# torch and transformers are imported where they are used: a registry lookup starts first (see above).

SETTING = "MODEL_URI"  # how errors name the value: the command's argument


@dataclass(frozen=True)
class Sampling:
    """Greedy unless `temperature` > 0; `top_p` then keeps the smallest set of tokens whose
    probabilities add up to it; `seed` makes a sampled answer repeatable."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


@dataclass(frozen=True)
class ModelFiles:
    """A model to generate with: its transformers folder, its tokenizer's folder and whether it is a
    chat model (None: not registered, so its generation config says)."""

    folder: Path
    tokenizer: Path
    chat: bool | None = None


def from_registry(spec: str, scratch: Path) -> ModelFiles:
    """A `models:/` or `runs:/` reference's files (downloaded into `scratch` from a remote store);
    a chat model when it was registered with the chat task."""
    found = registered_model(spec, scratch, SETTING)
    return ModelFiles(found.folder, found.tokenizer, found.task == CHAT_TASK)


def find_model(spec: str, store: ArtifactStore) -> ModelFiles:
    """The model an artifact key of `store` (`finetuned:<key>` or a bare key) or a folder names; a
    registry reference goes to `from_registry`. Hub ids are not looked up: a typo would otherwise
    wait on the network."""
    local = Path(spec).expanduser()
    if local.is_dir():
        folder = model_folder(local)
    elif ARTIFACT_SPEC.match(spec):
        ref = find_artifact(store, spec)
        if ref is None:
            raise ModelSourceError(f"{SETTING}={spec!r}: no complete artifact with that key in {store.location}")
        folder = model_folder(ref.path)
    else:
        raise ModelSourceError(
            f"{SETTING}={spec!r} is neither a registry URI (models:/name@alias, models:/name/version), an artifact key "
            f"of {store.location} nor a folder ({local.resolve()} does not exist)"
        )
    return ModelFiles(folder, folder)


def ends_turns(generation_stops: int | list[int] | None, tokenizer: Any) -> bool:
    """Whether a generation config's stop ids hold `<|im_end|>`, as fine-tuning saves them."""
    stops = generation_stops if isinstance(generation_stops, list) else [generation_stops]
    return set(turn_stop_ids(tokenizer)) <= set(stops)


def generate(
    folder: Path, prompt: str, chat: bool | None, sampling: Sampling, tokenizer_folder: Path | None = None,
    adapter: str | None = None,
) -> str:
    """Stream the answer to `prompt` to stdout as it is generated and return it; `chat` None:
    a chat model when its generation config ends a turn. The tokenizer is read from `folder`
    unless `tokenizer_folder` says where it is. A folder that carries unmerged adapters (a base +
    adapter registration) answers with `adapter` (default: `default`, else the first)."""
    import torch
    from transformers import TextStreamer

    from smolforge.tasks.curate.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(tokenizer_folder or folder))
    model = load_causal_lm(folder, adapter)
    model.eval()
    if chat is None:
        chat = ends_turns(model.generation_config.eos_token_id, tokenizer)
    if chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )["input_ids"]
        stops = turn_stop_ids(tokenizer)
    else:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        stops = [tokenizer.eos_token_id]
    room = model.config.max_position_embeddings - ids.shape[1]
    if room <= 0:
        raise ModelSourceError(
            f"the prompt is {ids.shape[1]} tokens; the model reads at most {model.config.max_position_embeddings}"
        )
    sample = sampling.temperature > 0
    if sampling.seed is not None:
        torch.manual_seed(sampling.seed)
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=min(sampling.max_new_tokens, room),
            do_sample=sample,
            temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None,
            top_k=None,
            eos_token_id=stops,
            pad_token_id=tokenizer.pad_token_id,
            streamer=streamer,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)


def _import_generation_code() -> None:
    """What `generate` imports, ahead of it: torch, transformers and the model class every model
    the pipeline makes has (`smolforge.models.architecture`), which `from_pretrained` would
    otherwise import once it has read the model's config."""
    import smolforge.models.architecture
    import smolforge.tasks.curate.tokenizer  # noqa: F401


def _fresh_process() -> bool:
    """MLflow not imported yet (so no store connection is open) and no thread but this one, where
    processes fork: `smolforge generate` as it starts, which a forked child can safely copy."""
    forks = "fork" in multiprocessing.get_all_start_methods()
    return "mlflow" not in sys.modules and threading.active_count() == 1 and forks


def _look_up(spec: str, scratch: Path, store: ArtifactStore) -> ModelFiles:
    """`find_model`, or `from_registry` for a registry reference: in a fresh process, in a forked
    child while this one imports the rest (see above)."""
    if not spec.startswith(REGISTRY_SCHEMES):
        return find_model(spec, store)
    if not _fresh_process():
        return from_registry(spec, scratch)
    lookup = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("fork"))
    try:
        pending = lookup.submit(from_registry, spec, scratch)
        _import_generation_code()
        return pending.result()
    finally:
        lookup.shutdown(wait=False)  # the answer need not wait for the child to exit


def generate_from(
    spec: str, prompt: str, store: ArtifactStore, sampling: Sampling, chat: bool | None = None, adapter: str | None = None
) -> str:
    """`generate` with the model `spec` names; `chat` None: as the model says it is (see above);
    `adapter` picks one of a base + adapters model's adapters."""
    with tempfile.TemporaryDirectory(prefix="smolforge-generate-") as scratch:
        model = _look_up(spec, Path(scratch), store)
        return generate(model.folder, prompt, model.chat if chat is None else chat, sampling, model.tokenizer, adapter)
