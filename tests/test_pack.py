"""Packing documents into token files: boundaries, eos, the validation split, reading back."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from smolforge.tasks.curate.documents import Doc
from smolforge.tasks.curate.pack import (
    document_ids,
    open_split,
    pack_documents,
    read_meta,
    split_score,
    token_dtype,
)
from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer

WORDS = "alpha beta gamma delta über straße 東京 大阪 москва число 12 345 ; . , !".split()


def make_docs(n: int, seed: int = 0, source: str = "web") -> list[Doc]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 40)))
        docs.append(Doc(id=f"{source}/file{i}.txt", source=source, text=text))
    return docs


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    train_tokenizer((d.text for d in make_docs(300, seed=9)), vocab_size=400, out_dir=out)
    return load_tokenizer(str(out))


def read_ids(out_dir, split) -> list[str]:
    return [json.loads(line) for line in (out_dir / f"{split}.ids.jsonl").read_text().splitlines()]


def test_boundaries_and_eos(tok, tmp_path):
    docs = make_docs(120)
    meta = pack_documents(docs, tok, tmp_path, batch_size=16)
    by_id = {d.id: d for d in docs}
    total_docs = 0
    for split in ("train", "val"):
        tokens, offsets = open_split(tmp_path, split)
        ids = read_ids(tmp_path, split)
        assert offsets.dtype == np.int64 and offsets[0] == 0 and len(offsets) == len(ids) + 1
        assert offsets[-1] == len(tokens) == meta[split]["n_tokens"]
        expected = [len(tok(by_id[i].text, add_special_tokens=False)["input_ids"]) + 1 for i in ids]
        assert np.diff(offsets).tolist() == expected
        assert (tokens[offsets[1:] - 1] == tok.eos_token_id).all()
        for k, doc_id in enumerate(ids):  # every document decodes back to its text
            assert (
                tok.decode(tokens[offsets[k] : offsets[k + 1] - 1].tolist()) == by_id[doc_id].text
            )
        assert meta[split]["chars"] == sum(len(by_id[i].text) for i in ids)
        total_docs += len(ids)
    assert total_docs == 120
    assert meta == read_meta(tmp_path)
    assert meta["eos_id"] == tok.eos_token_id and meta["vocab_size"] == len(tok)


def test_val_split_independent_of_order(tok, tmp_path):
    docs = make_docs(200)
    shuffled = docs[:]
    random.Random(1).shuffle(shuffled)
    a, b = tmp_path / "a", tmp_path / "b"
    meta_a = pack_documents(docs, tok, a, seed=3)
    meta_b = pack_documents(shuffled, tok, b, seed=3, batch_size=7)
    assert set(read_ids(a, "val")) == set(read_ids(b, "val"))
    assert (meta_a["train"], meta_a["val"]) == (meta_b["train"], meta_b["val"])
    val = set(read_ids(a, "val"))
    assert 0 < len(val) < 200
    assert val == {d.id for d in docs if split_score(d.id, 3) < 0.05}
    # Another seed draws another split.
    pack_documents(docs, tok, tmp_path / "c", seed=4)
    assert set(read_ids(tmp_path / "c", "val")) != val


def test_batch_size_does_not_change_bytes(tok, tmp_path):
    docs = make_docs(50)
    pack_documents(docs, tok, tmp_path / "one", batch_size=1)
    pack_documents(docs, tok, tmp_path / "many", batch_size=256)
    for name in ("train.bin", "val.bin", "train.idx.npy", "val.idx.npy"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "many" / name).read_bytes()


@pytest.mark.parametrize("seed", range(6))
def test_small_sources_get_both_splits(tok, tmp_path, seed):
    docs = make_docs(3, seed=seed)
    meta = pack_documents(docs, tok, tmp_path, seed=seed)
    assert meta["val"]["n_docs"] >= 1 and meta["train"]["n_docs"] >= 1
    # The moved document is intact, and so is what it left behind.
    by_id = {d.id: d.text for d in docs}
    for split in ("train", "val"):
        tokens, offsets = open_split(tmp_path, split)
        assert (tokens[offsets[1:] - 1] == tok.eos_token_id).all()
        for k, doc_id in enumerate(read_ids(tmp_path, split)):
            assert tok.decode(tokens[offsets[k] : offsets[k + 1] - 1].tolist()) == by_id[doc_id]
    # Same choice whatever the order.
    pack_documents(docs[::-1], tok, tmp_path / "rev", seed=seed)
    assert set(read_ids(tmp_path, "val")) == set(read_ids(tmp_path / "rev", "val"))


def test_all_val_still_leaves_train(tok, tmp_path):
    meta = pack_documents(make_docs(4), tok, tmp_path, val_fraction=0.999999)
    assert meta["train"]["n_docs"] == 1 and meta["val"]["n_docs"] == 3


def test_single_doc_and_no_validation(tok, tmp_path):
    meta = pack_documents(make_docs(1), tok, tmp_path / "one")
    assert meta["train"]["n_docs"] + meta["val"]["n_docs"] == 1
    meta = pack_documents(make_docs(30), tok, tmp_path / "noval", val_fraction=0.0)
    assert meta["val"]["n_docs"] == 0 and meta["train"]["n_docs"] == 30


def test_memmap_and_dtype(tok, tmp_path):
    meta = pack_documents(make_docs(20), tok, tmp_path)
    tokens, _ = open_split(tmp_path, "train")
    assert isinstance(tokens, np.memmap) and tokens.dtype == np.uint16 and meta["dtype"] == "uint16"
    assert (tmp_path / "train.bin").stat().st_size == 2 * meta["train"]["n_tokens"]
    assert token_dtype(2**16) == np.uint16 and token_dtype(2**16 + 1) == np.uint32


class BigVocab:
    """A stand-in for a tokenizer with more than 65536 ids: one id above uint16 per character."""

    eos_token_id = 70_000
    name_or_path = "big-vocab-stub"

    def __len__(self) -> int:
        return 70_001

    def __call__(self, texts, add_special_tokens=False, split_special_tokens=False, verbose=True):
        return {"input_ids": [[66_000 + ord(c) % 1000 for c in t] for t in texts]}


def test_uint32_for_large_vocab(tmp_path):
    docs = make_docs(10)
    meta = pack_documents(docs, BigVocab(), tmp_path)
    assert meta["dtype"] == "uint32" and meta["tokenizer"]["sha256_16"] is None
    tokens, offsets = open_split(tmp_path, "train")
    assert tokens.dtype == np.uint32 and tokens.max() >= 66_000
    assert (tokens[offsets[1:] - 1] == 70_000).all()


def test_empty_input(tok, tmp_path):
    meta = pack_documents([], tok, tmp_path)
    for split in ("train", "val"):
        assert meta[split] == {"n_docs": 0, "n_tokens": 0, "chars": 0}
        tokens, offsets = open_split(tmp_path, split)
        assert len(tokens) == 0 and offsets.tolist() == [0]
        assert (tmp_path / f"{split}.bin").exists()
    assert read_meta(tmp_path)["train"]["n_docs"] == 0


def test_empty_texts_are_skipped(tok, tmp_path):
    docs = make_docs(5) + [Doc(id="web/empty", source="web", text="")]
    meta = pack_documents(docs, tok, tmp_path)
    assert meta["skipped_empty"] == 1
    assert meta["train"]["n_docs"] + meta["val"]["n_docs"] == 5


def test_document_ids_window():
    offsets = np.array([0, 3, 5, 9], dtype=np.int64)
    assert document_ids(offsets, 0, 9).tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    assert document_ids(offsets, 2, 4).tolist() == [0, 1, 1, 2]
    assert document_ids(offsets, 9, 0).tolist() == []
    with pytest.raises(ValueError):
        document_ids(offsets, 7, 3)


def test_bad_arguments(tok, tmp_path):
    with pytest.raises(ValueError, match="val_fraction"):
        pack_documents(make_docs(2), tok, tmp_path, val_fraction=1.0)
    with pytest.raises(ValueError, match="batch_size"):
        pack_documents(make_docs(2), tok, tmp_path, batch_size=0)


def test_fast_path_matches_tokenizer_call(tok):
    from smolforge.tasks.curate.pack import _encoder

    texts = [d.text for d in make_docs(40)] + ["<|end_of_text|> inside text", " ", "\n\n"]
    expected = tok(texts, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert _encoder(tok)(texts) == expected
    # The shared tokenizer still treats special-token strings as special tokens.
    assert tok("<|end_of_text|>", add_special_tokens=False)["input_ids"] == [tok.eos_token_id]


def test_special_token_text_stays_text(tok, tmp_path):
    text = "quoting <|end_of_text|> and <|im_start|>user in a page about chat formats"
    docs = [Doc(id=f"web/{i}", source="web", text=text) for i in range(3)]
    pack_documents(docs, tok, tmp_path)
    for split in ("train", "val"):
        tokens, offsets = open_split(tmp_path, split)
        assert np.flatnonzero(tokens == tok.eos_token_id).tolist() == (offsets[1:] - 1).tolist()
        assert not np.isin(tokens, [0, 2, 3, 4]).any()
        assert tok.decode(tokens[offsets[0] : offsets[1] - 1].tolist()) == text
