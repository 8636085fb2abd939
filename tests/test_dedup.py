"""Deduplication: exact + MinHash (FineWeb settings), clustering, kept-doc rule, cross-run index."""

from __future__ import annotations

import random
import struct

import numpy as np
import pytest
import xxhash

from smolforge.tasks.curate import dedup
from smolforge.tasks.curate.dedup import (
    DedupIndex,
    apply_duplicates,
    exact_key,
    find_duplicates,
    load_signatures,
    minhash_signature_shard,
    save_signatures,
)
from smolforge.tasks.curate.documents import Doc

WORDS = (
    "the of and to in is was for on that with as by at from his her an which are were be this "
    "river mountain village market harbour winter summer council school bridge railway church "
    "farmers season history museum century battle garden station forest valley castle island "
    "merchant festival library painter engine harvest mayor letter journey bread copper wool "
    "salt timber canal lantern orchard pasture quarry ferry mill tower square chapel tavern"
).split()


def words(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(WORDS) for _ in range(n)]


def text(n: int, seed: int) -> str:
    w = words(n, seed)
    return " ".join(w[i] + ("." if i % 12 == 11 else "") for i in range(n))


def doc(id_: str, text_: str) -> Doc:
    return Doc(id=id_, source=id_.split("/")[0], text=text_)


def mutate(text_: str, changes: int, seed: int) -> str:
    w = text_.split(" ")
    rng = random.Random(seed)
    for i in rng.sample(range(len(w)), changes):
        w[i] = "zebra" + str(i)
    return " ".join(w)


# --- parity with datatrove -----------------------------------------------------------------------

PARITY_TEXTS = [
    "I'm sure you can't do it, and I cannot either; we're gonna try anyway at 10km/h on 3.5 wheels.",
    "Café naïve résumé: the Zürich Straße (ß) façade — “quoted” text, 1,000,000 people!\n\nNew\tpara.",
    "Ünïcödé everywhere: Ελληνικά κείμενα, русский текст, and 中文 mixed with English words here.",
    text(700, 1),  # > 2048 shingles per block boundary is exercised by concatenating all of these
    text(3000, 2),
    "Short but at least five words here.",
]


def test_signatures_match_datatrove(tmp_path):
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupSignature
    from datatrove.utils.text import simplify_text

    step = MinhashDedupSignature(output_folder=str(tmp_path / "sigs"), config=MinhashConfig())
    # datatrove 0.10.1 passes str to xxhash, which xxhash>=4 rejects; xxhash<4 hashed str as UTF-8
    raw_hash = step._hash_func
    step._hash_func = lambda s: raw_hash(s.encode("utf-8") if isinstance(s, str) else s)

    tok = dedup._tokenizer("en")
    simplified = [dedup._simplify(t, MinhashConfig().norm_config) for t in PARITY_TEXTS]
    assert simplified == [simplify_text(t) for t in PARITY_TEXTS]
    tok.learn(simplified)
    for s in simplified:
        assert tok(s) == step.word_tokenizer.word_tokenize(s)

    parts = [dedup._shingles(tok(s), 5) for s in simplified]
    for t, p in zip(PARITY_TEXTS, parts):
        assert np.array_equal(p, step.get_shingles(t).ravel())
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    mine = dedup._minhashes(np.concatenate(parts), offsets, 1, 112)
    for t, row in zip(PARITY_TEXTS, mine):
        theirs = step.get_signature(step.get_shingles(t))  # 14 lists of 8
        assert row.tolist() == [h for bucket in theirs for h in bucket]
        digests = [xxhash.xxh64_intdigest(struct.pack("<8Q", *bucket)) for bucket in theirs]
        assert dedup._bucket_digests(row[None, :], 14, 8)[0].tolist() == digests


def test_shard_signature_shape_and_file_round_trip(tmp_path):
    docs = [doc("web/ü-ñ.txt#1", text(200, 3)), doc("web/b.txt", ""), doc("web/c.txt", "tiny")]
    sig = minhash_signature_shard(docs)
    assert sig["ids"].tolist() == [d.id for d in docs]
    assert sig["exact"].shape == (3, 16) and sig["exact"].dtype == np.uint8
    assert sig["buckets"].shape == (3, 14) and sig["buckets"].dtype == np.uint64
    assert sig["chars"].tolist() == [len(d.text) for d in docs]
    assert bytes(sig["exact"][0]) == exact_key(docs[0].text)
    path = save_signatures(sig, tmp_path / "shard-00000.npz")
    back = load_signatures(path)
    assert back["config"] == sig["config"]
    for k in ("ids", "exact", "buckets", "chars"):
        assert np.array_equal(back[k], sig[k])
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.npz"]  # no temp file left

    empty = minhash_signature_shard([])
    assert empty["buckets"].shape == (0, 14)
    assert find_duplicates([empty]) == {}


# --- within a run --------------------------------------------------------------------------------


def test_exact_near_and_different():
    base = text(500, 10)
    docs = [
        doc("web/a.txt", base),
        doc("web/b.txt", "  " + base.upper().replace(" ", "\n  ") + " "),  # case + whitespace
        doc("web/c.txt", mutate(base, 4, seed=1)),  # same ~500 words, 4 changed
        doc("web/d.txt", text(500, 11)),  # clearly different
    ]
    assert exact_key(docs[0].text) == exact_key(docs[1].text) != exact_key(docs[2].text)
    dups = find_duplicates([minhash_signature_shard(docs)])
    assert dups == {
        "web/b.txt": ("exact_duplicate", "web/a.txt"),
        "web/c.txt": ("near_duplicate", "web/a.txt"),
    }
    result = apply_duplicates(docs, dups)
    assert [d.id for d in result.kept] == ["web/a.txt", "web/d.txt"]
    assert [(x.id, x.step, x.reason, x.detail, x.chars) for x in result.dropped] == [
        ("web/b.txt", "dedup", "exact_duplicate", "web/a.txt", len(docs[1].text)),
        ("web/c.txt", "dedup", "near_duplicate", "web/a.txt", len(docs[2].text)),
    ]


def test_exact_key_normalisation():
    assert exact_key("Hello,  World!\n") == exact_key("hello world")
    assert exact_key("price 5 euros") != exact_key("price 6 euros")  # digits kept
    assert exact_key("café") != exact_key("cafe")  # diacritics kept
    assert exact_key("cafe\u0301") == exact_key("caf\u00e9")  # NFC
    assert len(exact_key("")) == 16


def test_short_documents_are_one_shingle():
    docs = [
        doc("s/1", "Call 555 now"),
        doc("s/2", "call 666 now!"),  # numbers -> "0" in MinHash simplification: same shingle
        doc("s/3", "call us now"),
        doc("s/4", ""),
        doc("s/5", "!!!"),  # "" once punctuation is ignored, like s/4
    ]
    dups = find_duplicates([minhash_signature_shard(docs)])
    assert dups == {"s/2": ("near_duplicate", "s/1"), "s/5": ("exact_duplicate", "s/4")}


def _shares_bucket(x: str, y: str) -> bool:
    sig = minhash_signature_shard([doc("t/x", x), doc("t/y", y)])["buckets"]
    return bool((sig[0] == sig[1]).any())


def _chain() -> tuple[str, str, str]:
    """a ~ b ~ c (each pair shares a bucket) but a and c share none: only transitivity links them."""
    for seed in range(100):
        a = text(400, 20)
        b = mutate(a, 10, seed=2 * seed)
        c = mutate(b, 10, seed=2 * seed + 1)
        if _shares_bucket(a, b) and _shares_bucket(b, c) and not _shares_bucket(a, c):
            return a, b, c
    raise AssertionError("no chain found")


def test_clusters_are_transitive_and_kept_doc_independent_of_shard_order():
    a, b, c = _chain()
    docs = [
        doc("web/z.txt", a),
        doc("web/m.txt", b),
        doc("web/a.txt", c),
        doc("web/q.txt", text(400, 21)),
        doc("web/r.txt", text(400, 21).upper()),
    ]
    results = []
    rng = random.Random(0)
    for _ in range(6):
        shuffled = docs[:]
        rng.shuffle(shuffled)
        k = rng.randint(1, 4)
        shards = [shuffled[:k], shuffled[k:]]
        rng.shuffle(shards)
        results.append(find_duplicates([minhash_signature_shard(s) for s in shards]))
    assert all(r == results[0] for r in results)
    # kept = smallest id of the cluster
    assert results[0] == {
        "web/m.txt": ("near_duplicate", "web/a.txt"),
        "web/z.txt": ("near_duplicate", "web/a.txt"),
        "web/r.txt": ("exact_duplicate", "web/q.txt"),
    }


def test_rejects_mixed_settings_and_repeated_ids():
    docs = [doc("x/1", text(50, 1))]
    with pytest.raises(ValueError, match="different settings"):
        find_duplicates([minhash_signature_shard(docs), minhash_signature_shard(docs, seed=2)])
    with pytest.raises(ValueError, match="unique"):
        find_duplicates([minhash_signature_shard(docs), minhash_signature_shard(docs)])


# --- across runs ---------------------------------------------------------------------------------


def test_index_drops_earlier_content_and_keeps_new():
    run1 = [doc("old/1", text(300, 30)), doc("old/2", text(300, 31))]
    index = DedupIndex.from_signatures([minhash_signature_shard(run1)], name="run1")
    seen = mutate(run1[0].text, 2, seed=5)
    run2 = [
        doc("new/1", seen),  # near copy of old/1, alone in this run
        doc("new/2", text(300, 32)),  # new
        doc("new/3", text(300, 33)),  # new, with a copy in this run
        doc("new/4", text(300, 33).lower()),
        doc("new/5", run1[1].text + " "),  # exact copy of old/2 ...
        doc("new/0", mutate(run1[1].text, 3, seed=6)),  # ... and its near copy (same cluster)
    ]
    dups = find_duplicates([minhash_signature_shard(run2[:3]), minhash_signature_shard(run2[3:])], index=index)
    assert dups == {
        "new/1": ("duplicate_of_index", "run1:old/1"),
        "new/4": ("exact_duplicate", "new/3"),
        "new/5": ("duplicate_of_index", "run1:old/2"),
        "new/0": ("duplicate_of_index", "run1:old/2"),
    }
    assert [d.id for d in apply_duplicates(run2, dups).kept] == ["new/2", "new/3"]
    # without the index, run 2 alone keeps its first copies
    assert "new/1" not in find_duplicates([minhash_signature_shard(run2)])


def test_index_save_load_merge(tmp_path):
    run1 = [doc("r1/a", text(300, 40)), doc("r1/b", text(300, 41))]
    run2 = [doc("r2/a", text(300, 42)), doc("r1/a", text(300, 40))]  # r1/a re-crawled, same text
    idx1 = DedupIndex.from_signatures(minhash_signature_shard(run1), name="run1")

    folder = idx1.save(tmp_path / "index")
    back = DedupIndex.load(folder)
    assert (back.name, back.config, back.origin_names) == (idx1.name, idx1.config, idx1.origin_names)
    for attr in ("ids", "origins", "exact", "buckets"):
        assert np.array_equal(getattr(back, attr), getattr(idx1, attr))

    merged = back.merge(DedupIndex.from_signatures(minhash_signature_shard(run2), name="run2"))
    assert merged.origin_names == ["run1", "run2"]
    assert sorted(merged.ids.tolist()) == ["r1/a", "r1/b", "r2/a"]  # identical r1/a row not repeated
    merged.save(folder)  # replaces the old index in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no temp/backup folders left
    assert len(DedupIndex.load(folder)) == 3

    run3 = [doc("r3/a", text(300, 42)), doc("r3/b", text(300, 40)), doc("r3/c", text(300, 43))]
    dups = find_duplicates([minhash_signature_shard(run3)], index=DedupIndex.load(folder))
    assert dups == {
        "r3/a": ("duplicate_of_index", "run2:r2/a"),
        "r3/b": ("duplicate_of_index", "run1:r1/a"),  # earliest corpus wins
    }

    other = tmp_path / "not-an-index"
    other.mkdir()
    (other / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="not a DedupIndex"):
        idx1.save(other)
    with pytest.raises(ValueError):
        idx1.merge(DedupIndex.from_signatures(minhash_signature_shard(run1, seed=7), name="x"))


# --- LSH behaviour -------------------------------------------------------------------------------


def _catch_rate(common: int, unique: int, pairs: int, seed: int) -> float:
    """Pairs of shingle sets with Jaccard common / (common + 2 unique), fraction caught by 14x8."""
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(pairs):
        shared = rng.integers(0, 2**64, size=common, dtype=np.uint64)
        for _ in range(2):
            parts.append(np.concatenate([shared, rng.integers(0, 2**64, size=unique, dtype=np.uint64)]))
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    digests = dedup._bucket_digests(dedup._minhashes(np.concatenate(parts), offsets, 1, 112), 14, 8)
    return float((digests[0::2] == digests[1::2]).any(axis=1).mean())


def test_collision_probability_matches_lsh_curve():
    # theory 1 - (1 - J^8)^14: J=0.9 -> 0.9996, J=0.75 -> 0.772, J=0.3 -> 0.0009 (fixed seeds)
    assert _catch_rate(180, 10, 300, seed=1) >= 0.98
    assert 0.68 <= _catch_rate(120, 20, 400, seed=2) <= 0.86
    assert _catch_rate(60, 70, 400, seed=3) <= 0.01
