"""The pieces of a retrain that need no model: the file diff, forgetting changed files in the dedup
index, replaying packed sources without them, the tokenizer fingerprint, the continued stage."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_dedup import doc, mutate, text
from test_pack import make_docs

from smolforge.tasks.curate.dedup import DedupIndex, find_duplicates, minhash_signature_shard
from smolforge.tasks.curate.incremental import (
    _copy_split,
    diff_files,
    index_without,
    tokenizer_fingerprint,
    updated_table,
)
from smolforge.tasks.curate.pack import open_split, pack_documents, read_meta
from smolforge.tasks.curate.sources import InputFile
from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer
from smolforge.tasks.train.config import PretrainSection, RetrainConfig, StageConfig
from smolforge.tasks.train.continued import continued_section


def f(rel: str, xxh3: str) -> InputFile:
    return InputFile(rel=rel, xxh3=xxh3, root="/data")


def test_the_diff_finds_new_changed_deleted_and_unchanged_files_by_source_and_path():
    table = {
        "books": {"a.txt": {"xxh3": "1", "corpus": "c1"}, "b.txt": {"xxh3": "2", "corpus": "c1"}, "c.txt": {"xxh3": "3", "corpus": "c1"}},
        "gone": {"x.txt": {"xxh3": "9", "corpus": "c1"}},
    }
    current = {"books": [f("a.txt", "1"), f("b.txt", "22"), f("d.txt", "4")], "web": [f("p.html", "5")]}
    diff = diff_files(current, table)
    assert diff.counts() == {"new": 2, "changed": 1, "deleted": 2, "unchanged": 1}
    assert {s: [x.rel for x in v] for s, v in diff.to_read().items()} == {"books": ["b.txt", "d.txt"], "web": ["p.html"]}
    assert diff.forgotten() == {"books/b.txt", "books/c.txt", "gone/x.txt"}
    after = updated_table(table, diff, "c2")
    assert after == {
        "books": {"a.txt": {"xxh3": "1", "corpus": "c1"}, "b.txt": {"xxh3": "22", "corpus": "c2"}, "d.txt": {"xxh3": "4", "corpus": "c2"}},
        "web": {"p.html": {"xxh3": "5", "corpus": "c2"}},
    }
    assert diff_files({s: [f(r, e["xxh3"]) for r, e in files.items()] for s, files in after.items()}, after).counts() == {
        "new": 0, "changed": 0, "deleted": 0, "unchanged": 4,
    }


def test_an_edited_file_is_not_a_duplicate_of_its_old_self_but_an_unchanged_near_copy_still_is():
    first = [doc("books/a.txt", text(300, 1)), doc("books/b.txt", text(300, 2)), doc("chat/c.jsonl#0", text(300, 3)), doc("chat/c.jsonl#1", text(300, 4))]
    index = DedupIndex.from_signatures([minhash_signature_shard(first)], name="c1")
    edited = doc("books/a.txt", mutate(first[0].text, 3, seed=1))  # the same file, a few words changed
    copied = doc("books/z.txt", mutate(first[1].text, 3, seed=2))  # a new file copying an unchanged one
    rewritten = doc("chat/c.jsonl#0", mutate(first[2].text, 3, seed=3))
    batch = [minhash_signature_shard([edited, copied, rewritten])]
    assert set(find_duplicates(batch, index=index)) == {"books/a.txt", "books/z.txt", "chat/c.jsonl#0"}
    forgot = index_without(index, {"books/a.txt", "chat/c.jsonl"})
    assert sorted(forgot.ids.tolist()) == ["books/b.txt"]
    assert find_duplicates(batch, index=forgot) == {"books/z.txt": ("duplicate_of_index", "c1:books/b.txt")}


def test_a_replayed_source_loses_exactly_the_forgotten_files_documents(tmp_path):
    out = tmp_path / "tok"
    train_tokenizer((d.text for d in make_docs(200, seed=9)), vocab_size=400, out_dir=out)
    tok = load_tokenizer(str(out))
    docs = make_docs(60) + [type(d)(id=f"web/many.jsonl#{i}", source="web", text=d.text) for i, d in enumerate(make_docs(5, seed=3))]
    src, dst = tmp_path / "src", tmp_path / "dst"
    pack_documents(docs, tok, src, val_fraction=0.2)
    dst.mkdir()
    drop = {"web/file3.txt", "web/many.jsonl"}
    for split in ("train", "val"):
        counts = _copy_split(src, dst, split, drop)
        kept_ids = [json.loads(x) for x in (dst / f"{split}.ids.jsonl").read_text().splitlines()]
        all_ids = [json.loads(x) for x in (src / f"{split}.ids.jsonl").read_text().splitlines()]
        assert kept_ids == [i for i in all_ids if i.split("#")[0] not in drop]
        (dst / "meta.json").write_text(json.dumps({**read_meta(src), split: counts}))
        tokens, offsets = open_split(dst, split)
        old_tokens, old_offsets = open_split(src, split)
        for k, doc_id in enumerate(kept_ids):  # every kept document's tokens are the very same
            j = all_ids.index(doc_id)
            assert np.array_equal(tokens[offsets[k] : offsets[k + 1]], old_tokens[old_offsets[j] : old_offsets[j + 1]])
        assert counts["n_docs"] == len(kept_ids) and counts["n_tokens"] == int(offsets[-1])


def test_the_fingerprint_tells_two_tokenizers_of_one_size_apart_and_survives_saving(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    train_tokenizer((d.text for d in make_docs(200, seed=1)), vocab_size=300, out_dir=a)
    train_tokenizer((d.text.upper() for d in make_docs(200, seed=2)), vocab_size=300, out_dir=b)
    assert len(load_tokenizer(str(a))) == len(load_tokenizer(str(b)))
    assert tokenizer_fingerprint(a) != tokenizer_fingerprint(b)
    saved = tmp_path / "saved"
    load_tokenizer(str(a)).save_pretrained(saved)  # as a trained model's folder holds it (pad set on load)
    assert tokenizer_fingerprint(saved) == tokenizer_fingerprint(a)


class _Source:
    def __init__(self, tokens: int):
        self.tokens = tokens

    def n_tokens(self, split: str = "train") -> int:
        return self.tokens

    def windows(self, seq_len: int, split: str = "train") -> int:
        return max(0, (self.tokens - 1) // seq_len)


def _section() -> PretrainSection:
    stage = StageConfig(name="decay", steps=40, seq_len=128, mixture={"books": 1.0})
    return PretrainSection(stages=[stage], batch_size=8, optimizer={"name": "adamw", "lr": 0.004})


def test_the_continued_stage_reads_the_new_tokens_as_often_as_asked_and_fills_the_rest_with_replay():
    sources = {"new.books": _Source(6_000), "new.web": _Source(2_000), "books.c1": _Source(90_000), "web.c1": _Source(10_000)}
    section = continued_section(_section(), RetrainConfig(replay_share=0.25, new_data_epochs=2), sources)
    (stage,) = section.stages
    assert stage.name == "continue" and stage.seq_len == 128
    assert stage.steps == 21  # ceil(8,000 tokens x 2 / (0.75 x 1,024 tokens a step))
    new = 16_000 / (21 * 1_024)  # just under 75 %: whole steps read the new tokens exactly twice
    assert stage.mixture == pytest.approx({"new.books": new * 0.75, "new.web": new * 0.25, "books.c1": (1 - new) * 0.9, "web.c1": (1 - new) * 0.1})
    assert section.optimizer.lr == pytest.approx(0.002) and section.schedule.warmup_steps == 5
    clamped = continued_section(_section(), RetrainConfig(min_steps=50), sources).stages[0]
    # 50 steps would read the new tokens 4.8 times at 75 %: their share shrinks to keep 2 epochs
    assert clamped.steps == 50 and sum(w for n, w in clamped.mixture.items() if n.startswith("new.")) == pytest.approx(16_000 / 51_200)
    alone = continued_section(_section(), RetrainConfig(min_steps=20), {"new.books": _Source(3_000)}).stages[0]
    assert alone.mixture == {"new.books": 1.0} and alone.steps == 11  # 3,000 x 4 epochs at most / 1,024
    with pytest.raises(ValueError, match="no training sequence of 128 tokens"):
        continued_section(_section(), RetrainConfig(), {"new.books": _Source(100), "books.c1": _Source(9_000)})


def test_retrain_settings_are_checked():
    with pytest.raises(ValueError, match=r"min_steps \(50\) is above max_steps \(20\)"):
        RetrainConfig(min_steps=50, max_steps=20)
    with pytest.raises(ValueError, match="replay_share"):
        RetrainConfig(replay_share=0.95)

