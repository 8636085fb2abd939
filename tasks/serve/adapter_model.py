"""The pyfunc a base + adapters model is logged as (see `adapters.py`): one base loaded once, the
adapter picked per request. Its own module because MLflow inspects `predict` when the class is
defined and warns (about type hints either way): only logging or loading such a model imports it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow.pyfunc

from smolforge.model_source import DEFAULT_ADAPTER, PYFUNC_MODEL, load_causal_lm
from smolforge.tasks.registry import serving

MODEL_ARTIFACT = PYFUNC_MODEL.name  # the pyfunc artifact: base weights + tokenizer + adapters/<name>/


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
