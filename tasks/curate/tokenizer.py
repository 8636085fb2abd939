"""Train our own byte-level BPE tokenizer, or load an existing one, for pretraining and chat.

Why our own: a small model spends a large share of its parameters on the embedding table, so a
vocabulary sized to the curated corpus (a few thousand to a few tens of thousands of tokens) is
worth more than a 128k one inherited from a large model. Byte-level BPE never produces an unknown
token, so any text round-trips exactly, whatever its language or script.

Special tokens are reserved first, so their ids are small and stay the same for every vocabulary
size and every corpus:

    0 <|begin_of_text|>  bos. Kept for compatibility; the tokenizer never adds it by itself and
                         packing does not use it (documents are separated by eos only).
    1 <|end_of_text|>    eos. Appended after every pretraining document; the end-of-document mark.
    2 <|pad|>            pad. Its own id, so padded positions are never confused with a real eos.
    3 <|im_start|>       opens a chat turn: `<|im_start|>{role}\\n`.
    4 <|im_end|>         closes a chat turn. A chat model stops generating on it, so generation
                         should stop on both eos and im_end (the caller sets that in the model's
                         generation config).

Then come the 256 byte symbols, then the merges.

The chat template is ChatML (what SmolLM3 uses). The content of each assistant turn, together with
the `<|im_end|>` that closes it, is wrapped in Jinja `{% generation %}` so that
`apply_chat_template(..., return_dict=True, return_assistant_tokens_mask=True)` returns
`assistant_masks` with 1 exactly on the tokens the model must learn to produce (loss masking for
supervised fine-tuning). The header `<|im_start|>assistant\\n` is not in the mask: it is given by
the prompt (`add_generation_prompt=True` appends it), not generated. Marker strings typed inside
message content would be read as markers; `sanitize_control_tokens=True` encodes them as text
(packing for pretraining always does, see pack.py).
"""

from __future__ import annotations

import json
import logging
import numbers
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from huggingface_hub import is_offline_mode
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

BOS = "<|begin_of_text|>"
EOS = "<|end_of_text|>"
PAD = "<|pad|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
# The order fixes the ids (0..4); append new tokens at the end, never insert, or old data breaks.
SPECIAL_TOKENS: list[str] = [BOS, EOS, PAD, IM_START, IM_END]

N_BYTES = 256  # the byte-level alphabet, always fully present

log = logging.getLogger(__name__)

# Whitespace control: `{%-`/`-%}` strip the template's own newlines so only the literal strings
# below reach the output. Assistant content and its closing marker sit inside `generation`.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' -%}"
    "{%- generation -%}{{- message['content'] + '<|im_end|>' -}}{%- endgeneration -%}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def _counted(texts: Iterable[str], stats: dict) -> Iterator[str]:
    """Pass the texts through while counting them, so the info can say what was trained on."""
    for text in texts:
        stats["n_texts"] += 1
        stats["chars"] += len(text)
        yield text


def _byte_level_bpe() -> Tokenizer:
    tok = Tokenizer(models.BPE())  # no unk token: every byte is in the vocabulary
    # No prefix space: " word" and "word" stay different tokens, and decode(encode(x)) == x exactly.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    # Untrimmed offsets map every character to a token, which the assistant mask relies on.
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def _check_vocab_size(vocab_size: int) -> None:
    floor = N_BYTES + len(SPECIAL_TOKENS)
    if not isinstance(vocab_size, numbers.Integral) or vocab_size <= floor:
        raise ValueError(
            f"vocab_size must be an integer above {floor} (the {N_BYTES} byte symbols plus "
            f"{len(SPECIAL_TOKENS)} special tokens leave no room for merges); got {vocab_size!r}"
        )


def wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    """The transformers view of a trained `tokenizers.Tokenizer`, with our special tokens set."""
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        # Byte-level decoding is already exact; the legacy clean-up would eat spaces before "." etc.
        clean_up_tokenization_spaces=False,
    )


def train_tokenizer(
    texts: Iterable[str], *, vocab_size: int, out_dir: Path, min_frequency: int = 2
) -> dict:
    """Train a byte-level BPE on `texts` and save it (transformers format) into `out_dir`.

    The vocabulary can end up smaller than `vocab_size` when the corpus has too few distinct pairs
    occurring `min_frequency` times; the info reports the size actually reached. No text at all is
    an error: the result would be a bare byte tokenizer, surely not what the run meant.
    """
    _check_vocab_size(vocab_size)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    tok = _byte_level_bpe()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=SPECIAL_TOKENS,  # added first, hence ids 0..4
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, seen or not
        show_progress=False,
    )
    stats = {"n_texts": 0, "chars": 0}
    start = time.perf_counter()
    tok.train_from_iterator(_counted(texts, stats), trainer=trainer)
    seconds = time.perf_counter() - start
    if stats["chars"] == 0:
        raise ValueError("no text to train the tokenizer on (no texts, or only empty ones)")

    hf = wrap(tok)
    hf.save_pretrained(out_dir)

    info = {
        "vocab_size": len(hf),
        "requested_vocab_size": vocab_size,
        "min_frequency": min_frequency,
        "special_tokens": {t: hf.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS},
        "bos_id": hf.bos_token_id,
        "eos_id": hf.eos_token_id,
        "pad_id": hf.pad_token_id,
        "im_start_id": hf.convert_tokens_to_ids(IM_START),
        "im_end_id": hf.convert_tokens_to_ids(IM_END),
        "n_texts": stats["n_texts"],
        "chars": stats["chars"],
        "train_seconds": round(seconds, 3),
        "path": str(out_dir),
    }
    if info["vocab_size"] < vocab_size:
        log.warning(
            "tokenizer vocabulary reached %d of the %d asked for: the corpus (%d chars) has too "
            "few pairs seen %d times",
            info["vocab_size"],
            vocab_size,
            stats["chars"],
            min_frequency,
        )
    # Beside the tokenizer files, so a folder says how it was made without the run's logs.
    (out_dir / "smolforge_tokenizer.json").write_text(json.dumps(info, indent=2) + "\n")
    return info


def _looks_like_path(name: str) -> bool:
    """Hub ids are `name` or `org/name`; anything else can only be meant as a local folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def _from_pretrained(name: str) -> PreTrainedTokenizerBase:
    """Local folder, then the local hub cache, then the hub itself.

    Trying the cache first makes a cached hub id load without any network access. The online try
    comes last because, with no network, huggingface_hub retries with back-off for about 50 s
    before giving up (set HF_HUB_OFFLINE=1 to skip it).
    """
    local = Path(name).expanduser()
    if local.is_dir():
        try:
            return AutoTokenizer.from_pretrained(str(local), local_files_only=True)
        except (OSError, ValueError) as err:  # ValueError: the files do not make a tokenizer
            raise OSError(
                f"folder {str(local.resolve())!r} does not hold a loadable tokenizer: {err}"
            ) from err
    if _looks_like_path(name):
        raise FileNotFoundError(f"tokenizer folder {name!r} does not exist ({local.resolve()})")
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=True)
    except (OSError, ValueError) as cache_err:
        last: Exception = cache_err
    if not is_offline_mode():
        try:
            return AutoTokenizer.from_pretrained(name)
        except (OSError, ValueError) as hub_err:  # ValueError: not a valid repo id
            last = hub_err
    raise OSError(
        f"tokenizer {name!r} was found neither locally (no such folder, not in the Hugging Face "
        f"cache) nor on the Hugging Face hub (this machine may be offline); pass a folder made by "
        f"train_tokenizer or a hub id that is already cached: {last}"
    ) from last


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    """Load a tokenizer from a local folder or a hub id, and make sure packing can use it.

    It must have an eos token (the end-of-document mark). Without a pad token, eos doubles as pad.
    """
    name = str(name_or_path)
    tok = _from_pretrained(name)
    if tok.eos_token is None or tok.eos_token_id is None:
        raise ValueError(
            f"tokenizer {name!r} has no eos token; it is needed to mark the end of each document"
        )
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok
