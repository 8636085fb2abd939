"""A model's greedy answer by transformers alone, for tests to hold served and generated answers to."""

from __future__ import annotations

from pathlib import Path


def greedy_answer(folder: Path, prompt: str, chat: bool, max_new_tokens: int) -> str:
    """The chat template and an end-of-turn stop for a chat model; the raw text and end of text
    for any other."""
    from transformers import AutoModelForCausalLM

    from smolforge.tasks.curate.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(str(folder))
    model = AutoModelForCausalLM.from_pretrained(folder)
    if chat:
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], add_generation_prompt=True, return_dict=True, return_tensors="pt"
        )["input_ids"]
        stops = [tokenizer.eos_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")]
    else:
        ids, stops = tokenizer(prompt, return_tensors="pt")["input_ids"], [tokenizer.eos_token_id]
    out = model.generate(
        input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=stops, pad_token_id=tokenizer.pad_token_id
    )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
