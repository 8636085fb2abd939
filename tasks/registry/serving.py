"""How a registered model answers when it is served (`mlflow models serve`) or asked to generate.

A chat model (fine-tuned or merged) is logged with MLflow's `llm/v1/chat` task: the request holds
OpenAI-style `messages`, MLflow applies the tokenizer's chat template and returns the assistant's
answer as `choices[0].message.content`. A model that never learnt to answer in turns (pretrained,
distilled) is logged as `llm/v1/completions`: a `prompt` in, its continuation in
`choices[0].text`. Every tokenizer made here carries the ChatML template, so the template alone
does not say which a model is; the stage that trained it does.

Without an inference config a served model generates up to its maximum length (256 tokens for the
tiny preset) on every request; `max_new_tokens` caps it, and a request's `max_tokens` overrides it.
"""

from __future__ import annotations

from typing import Any

CHAT_TASK = "llm/v1/chat"
COMPLETIONS_TASK = "llm/v1/completions"
# Long enough for a short answer, short enough that a request without `max_tokens` returns in a
# few seconds on a CPU; a request's `max_tokens` asks for more.
MAX_NEW_TOKENS = 64
IM_END = "<|im_end|>"


def turn_stop_ids(tokenizer: Any) -> list[int]:
    """The ids a chat model's answer ends at: end of text, and `<|im_end|>` (end of turn) when the
    tokenizer has it. A model's generation config is not enough to rely on: a merge copies its
    donor's, which for a task-vector merge is the base model's, and a base never ends a turn."""
    stops = [tokenizer.eos_token_id]
    im_end = tokenizer.convert_tokens_to_ids(IM_END)
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end not in stops:
        stops.append(im_end)
    return stops


def inference(chat: bool, tokenizer: Any) -> tuple[str, dict[str, Any]]:
    """The MLflow task and the generation settings (`model_config`) to log a model with: greedy,
    at most MAX_NEW_TOKENS new tokens, a chat model stopping at the end of its turn."""
    config: dict[str, Any] = {"max_new_tokens": MAX_NEW_TOKENS, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    if chat:
        config["eos_token_id"] = turn_stop_ids(tokenizer)
    return (CHAT_TASK if chat else COMPLETIONS_TASK), config
