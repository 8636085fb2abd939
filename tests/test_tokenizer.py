"""Tokenizer training and loading: special token ids, exact round trips, the chat template."""

from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from smolforge.tasks.curate.tokenizer import (
    BOS,
    EOS,
    IM_END,
    IM_START,
    PAD,
    SPECIAL_TOKENS,
    load_tokenizer,
    train_tokenizer,
)

VOCAB = 1200

SENTENCES = {
    "en": ["The {a} {n} walks to the {p} every {t}.", "Why does the {n} look so {a} today?"],
    "fr": ["Le {n} très {a} arrive à la {p} chaque {t}.", "Où est passé le {n} ? Il était {a}."],
    "de": ["Der {a} {n} läuft jeden {t} zur {p}.", "Warum ist der {n} heute so {a}? Grüße!"],
    "es": ["El {n} {a} camina a la {p} cada {t}.", "¿Por qué el {n} está tan {a} hoy?"],
    "ru": ["Этот {a} {n} идёт в {p} каждый {t}.", "Почему {n} сегодня такой {a}?"],
    "zh": ["这个{a}的{n}每{t}都去{p}。", "为什么{n}今天这么{a}？"],
    "ja": ["その{a}{n}は毎{t}{p}へ行きます。", "なぜ{n}は今日こんなに{a}のですか？"],
    "el": ["Ο {a} {n} πηγαίνει στην {p} κάθε {t}.", "Γιατί ο {n} είναι τόσο {a} σήμερα;"],
    "code": [
        "def {n}_{t}(x):\n    return x * {d} + len('{p}')",
        "for i in range({d}):\n\tprint(i, '{a}')",
    ],
}
WORDS = {
    "a": ["green", "rapide", "schnell", "rojo", "тихий", "安静", "静か", "γρήγορος", "old"],
    "n": ["cat", "chien", "Hund", "perro", "кот", "猫", "犬", "σκύλος", "bird", "teacher"],
    "p": ["market", "gare", "Schule", "playa", "город", "公园", "駅", "θάλασσα", "river"],
    "t": ["morning", "soir", "Tag", "día", "день", "天", "朝", "πρωί", "week"],
    "d": ["3", "42", "1024", "7"],
}


def synthetic_corpus(n_lines: int = 600, seed: int = 0) -> list[str]:
    """Several scripts, code and numbers: enough repetition for merges, enough variety for tests."""
    rng = random.Random(seed)
    langs = sorted(SENTENCES)
    lines = []
    for _ in range(n_lines):
        template = rng.choice(SENTENCES[rng.choice(langs)])
        lines.append(template.format(**{k: rng.choice(v) for k, v in WORDS.items()}))
    return lines


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    info = train_tokenizer(synthetic_corpus(), vocab_size=VOCAB, out_dir=out)
    return out, info


def test_info_and_special_ids(trained):
    _, info = trained
    assert info["special_tokens"] == {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    assert (info["bos_id"], info["eos_id"], info["pad_id"]) == (0, 1, 2)
    assert (info["im_start_id"], info["im_end_id"]) == (3, 4)
    assert 256 + len(SPECIAL_TOKENS) < info["vocab_size"] <= VOCAB
    assert info["n_texts"] == 600 and info["chars"] > 10_000


def test_reload_round_trip(trained):
    out, info = trained
    tok = load_tokenizer(str(out))
    assert len(tok) == info["vocab_size"]
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (BOS, EOS, PAD)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (0, 1, 2)
    samples = synthetic_corpus(20, seed=1) + [
        "unseen script: ภาษาไทย, עברית, 🦜🦜 and \x00 control bytes",
        "  leading spaces , odd   spacing .\n\n\ttabs\r\n",
        "",
    ]
    for text in samples:
        ids = tok(text)["input_ids"]
        assert BOS not in tok.convert_ids_to_tokens(ids)  # nothing is added implicitly
        assert tok.decode(ids) == text
    # Merges were learnt: common text takes fewer tokens than bytes.
    line = synthetic_corpus(1, seed=2)[0]
    assert len(tok(line)["input_ids"]) < len(line.encode())


def test_special_tokens_are_single_ids(trained):
    tok = load_tokenizer(str(trained[0]))
    for i, t in enumerate(SPECIAL_TOKENS):
        assert tok(t, add_special_tokens=False)["input_ids"] == [i]
    assert set(tok.all_special_ids) >= {0, 1, 2, 3, 4}
    assert tok.decode([3, 4, 1], skip_special_tokens=True) == ""


CHAT = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Wie geht's? 你好"},
    {"role": "assistant", "content": "Gut, danke."},
    {"role": "user", "content": "Und dann?"},
]


def test_chat_template_renders(trained):
    tok = load_tokenizer(str(trained[0]))
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert text == (
        f"{IM_START}system\nBe brief.{IM_END}\n"
        f"{IM_START}user\nWie geht's? 你好{IM_END}\n"
        f"{IM_START}assistant\nGut, danke.{IM_END}\n"
        f"{IM_START}user\nUnd dann?{IM_END}\n"
    )
    prompt = tok.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert prompt == text + f"{IM_START}assistant\n"
    ids = tok.apply_chat_template(CHAT, add_generation_prompt=True, return_dict=False)
    assert ids == tok(prompt, add_special_tokens=False)["input_ids"]
    header = [3] + tok("assistant\n", add_special_tokens=False)["input_ids"]
    assert ids[-len(header) :] == header


def test_assistant_mask_covers_replies_and_im_end(trained):
    tok = load_tokenizer(str(trained[0]))
    chat = CHAT + [{"role": "assistant", "content": " Dann nichts.\n"}]
    out = tok.apply_chat_template(chat, return_dict=True, return_assistant_tokens_mask=True)
    ids, mask = out["input_ids"], out["assistant_masks"]
    assert len(ids) == len(mask)
    learnt = tok.decode([i for i, m in zip(ids, mask, strict=True) if m])
    assert learnt == f"Gut, danke.{IM_END} Dann nichts.\n{IM_END}"
    assert sum(1 for i, m in zip(ids, mask, strict=True) if m and i == 4) == 2


@pytest.mark.parametrize("bad", [0, 100, 256, 256 + len(SPECIAL_TOKENS)])
def test_vocab_size_too_small(tmp_path, bad):
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["hello world"], vocab_size=bad, out_dir=tmp_path)


def test_no_text_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no text"):
        train_tokenizer(iter([]), vocab_size=500, out_dir=tmp_path)


def test_small_corpus_reports_vocab_reached(tmp_path):
    info = train_tokenizer(["abc abc abd"] * 3, vocab_size=5000, out_dir=tmp_path)
    assert 256 + len(SPECIAL_TOKENS) < info["vocab_size"] < 5000
    assert load_tokenizer(str(tmp_path)).decode([info["vocab_size"] - 1]) != ""


def test_load_missing_path(tmp_path):
    missing = tmp_path / "no_such_tokenizer"
    with pytest.raises(FileNotFoundError, match="no_such_tokenizer"):
        load_tokenizer(str(missing))


def test_load_folder_without_tokenizer(tmp_path):
    (tmp_path / "readme.txt").write_text("not a tokenizer")
    with pytest.raises(OSError, match="loadable tokenizer"):
        load_tokenizer(str(tmp_path))


def _bare_tokenizer() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.add_special_tokens([EOS])
    return tok


def test_load_uses_eos_as_pad_when_missing(tmp_path):
    PreTrainedTokenizerFast(tokenizer_object=_bare_tokenizer(), eos_token=EOS).save_pretrained(
        tmp_path
    )
    tok = load_tokenizer(str(tmp_path))
    assert tok.pad_token == EOS and tok.pad_token_id == tok.eos_token_id


def test_load_without_eos_fails(tmp_path):
    PreTrainedTokenizerFast(tokenizer_object=_bare_tokenizer()).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no eos token"):
        load_tokenizer(str(tmp_path))
