"""Generate from any model the pipeline made, streaming the text as it comes.

The model folder is loaded with transformers directly rather than through MLflow's pyfunc wrapper
(which takes ~9 s to load on its own), so a question typed at the command line gets its first
words in a few seconds. A chat model gets the user's text as a chat turn (the tokenizer's
template) and stops at the end of its turn; any other model continues the text as it is.

Which a model is: a registry version says how it was registered (`serving.CHAT_TASK`); a folder
(or an artifact key) is a chat model when its generation config ends a turn at `<|im_end|>`, as
fine-tuning saves it. `chat=True/False` overrides both (a merge keeps its donor's generation
config, so a task-vector merge's folder reads as its base's).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smolforge.artifacts import ARTIFACT_SPEC, ArtifactStore, find_artifact
from smolforge.model_source import REGISTRY_SCHEMES, ModelSourceError, locate, model_folder
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.registry.serving import CHAT_TASK, turn_stop_ids

SETTING = "MODEL_URI"  # how errors name the value: the command's argument


@dataclass(frozen=True)
class Sampling:
    """Greedy unless `temperature` > 0; `top_p` then keeps the smallest set of tokens whose
    probabilities add up to it; `seed` makes a sampled answer repeatable."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None


def _registered_as_chat(folder: Path) -> bool:
    """Read from the MLmodel file the transformers flavor keeps beside the downloaded `model/`
    (no second trip to the registry)."""
    from mlflow.models import Model

    mlmodel = folder.parent
    return (mlmodel / "MLmodel").is_file() and (Model.load(mlmodel).metadata or {}).get("task") == CHAT_TASK


def ends_turns(generation_stops: int | list[int] | None, tokenizer: Any) -> bool:
    """Whether a generation config's stop ids hold `<|im_end|>`, as fine-tuning saves them."""
    stops = generation_stops if isinstance(generation_stops, list) else [generation_stops]
    return set(turn_stop_ids(tokenizer)) <= set(stops)


def find_model(spec: str, scratch: Path, store: ArtifactStore) -> tuple[Path, bool | None]:
    """(the transformers folder, whether it was registered as a chat model: None when it was not
    registered) for a `models:/` reference (downloaded
    into `scratch`), an artifact key of `store` (`finetuned:<key>` or a bare key) or a folder.
    Hub ids are not looked up: a typo would otherwise wait on the network."""
    if spec.startswith(REGISTRY_SCHEMES):
        folder = locate(spec, scratch, SETTING)
        return folder, _registered_as_chat(folder)
    local = Path(spec).expanduser()
    if local.is_dir():
        folder = model_folder(local)
    elif ARTIFACT_SPEC.match(spec):
        ref = find_artifact(store, spec)
        if ref is None:
            raise ModelSourceError(f"{SETTING}={spec!r}: no complete artifact with that key in {store.root}")
        folder = model_folder(ref.path)
    else:
        raise ModelSourceError(
            f"{SETTING}={spec!r} is neither a registry URI (models:/name@alias, models:/name/version), an artifact key "
            f"of {store.root} nor a folder ({local.resolve()} does not exist)"
        )
    return folder, None


def generate(folder: Path, prompt: str, chat: bool | None, sampling: Sampling) -> str:
    """Stream the answer to `prompt` to stdout as it is generated and return it; `chat` None:
    a chat model when its generation config ends a turn."""
    import torch
    from transformers import AutoModelForCausalLM, TextStreamer

    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder)
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


def generate_from(spec: str, prompt: str, store: ArtifactStore, sampling: Sampling, chat: bool | None = None) -> str:
    """`generate` with the model `spec` names; `chat` None: as the model says it is (see above)."""
    with tempfile.TemporaryDirectory(prefix="smolforge-generate-") as scratch:
        folder, registered_chat = find_model(spec, Path(scratch), store)
        return generate(folder, prompt, registered_chat if chat is None else chat, sampling)
