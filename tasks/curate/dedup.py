"""Deduplication, FineWeb style: exact duplicates (normalised text) and MinHash-LSH near-duplicates.

Two stages, so the expensive one runs per shard in a process pool and only small arrays travel:

1. `minhash_signature_shard(docs)` -> per shard: ids, exact keys, one 64-bit digest per LSH bucket,
   chars. Written with `save_signatures` / read with `load_signatures` (.npz, no pickle).
2. `find_duplicates(all_shard_signatures, index=...)` -> {doc id: (reason, detail)} for the whole
   corpus, then `apply_duplicates(shard_docs, duplicates)` per shard -> `StepResult`.

FineWeb settings (datatrove's `MinhashConfig` defaults): 5-gram word shingles over
`simplify_text` output (lowercase, numbers -> "0", punctuation -> space, diacritics stripped,
whitespace collapsed), tokenised with datatrove's word tokenizer for the language ("en": blank
spaCy), each shingle hashed with xxhash64, 14 buckets x 8 hashes = 112 min-hashes from
`(h * a + b) mod (2**61 - 1)` permutations seeded by `seed` (same arithmetic and seed stream as
datatrove's `MinhashDedupSignature`, so the min-hashes are bit-identical to datatrove's; the tests
check that).

Reused from datatrove (plain functions/classes usable in memory):
  `MinhashConfig`, `_mersenne_prime` (datatrove.pipeline.dedup.minhash), `HashConfig`,
  `create_hash_func` (datatrove.utils.hashing), `TextNormConfig`, `simplify_text`, `ngrams`
  (datatrove.utils.text); datatrove's word tokenizer through `words.py`.
Written here, because datatrove has them only inside its file-based multi-stage pipeline
(`MinhashDedupSignature` writes sorted per-bucket .sig files, `MinhashDedupBuckets` merges them
with a heap, `MinhashDedupCluster` reads .dups files, `MinhashBuildIndex` writes .index files):
  * the permutation parameters (3 lines copied from `MinhashDedupSignature.parameters`, a property
    of a pipeline step that needs an output folder) and the min-hash itself, vectorised over all
    documents of a shard at once (datatrove does one numpy call per document);
  * in-memory bucket collision (sort each bucket column, equal neighbours are candidate pairs),
    union-find clustering, and the index (kept per document, with ids, so a drop can name the
    earlier document it duplicates).
Made faster than datatrove's per-document path, with output checked equal to datatrove's in the
tests: `_simplify` (its diacritics step without a per-character generator) and `words.WordSplitter`
(its spaCy tokenizer applied once per distinct word instead of per document + sentencizer).

Decisions (documented here because other steps and reports rely on them):
  * Exact key: NFC, then datatrove `simplify_text` with lowercase + punctuation -> space +
    whitespace collapsed, but digits and diacritics kept (so two price lists differing only in
    numbers are not "exact" duplicates; MinHash still sees them). blake2b-128 of the UTF-8 bytes.
  * Short documents: fewer than `ngram` tokens -> the whole token sequence is hashed as a single
    shingle (datatrove skips them; we do not want a tiny doc repeated 1,000 times to survive).
    An empty simplified text gives the shingle of "" - all such docs are one cluster.
  * Bucket digest: the 8 min-hashes of a bucket (little-endian uint64) hashed with xxhash64. Two
    docs share a bucket iff the digests are equal (false collision chance 2**-64 per pair/bucket).
  * LSH rule: docs sharing ANY bucket digest, or the exact key, are linked; clusters are the
    transitive closure (union-find).
  * Kept document of a cluster: the smallest doc id (Python string order). Ids are stable across
    runs ("<source>/<relative path>[#<n>]"), so the choice does not depend on shard order,
    number of shards or worker timing.
  * Index: a cluster in which any member matches the index (bucket digest or exact key) is
    dropped entirely, kept doc included, with reason `duplicate_of_index` (datatrove does the same:
    its index sentinel becomes the cluster root). Detail is "<corpus name>:<earlier doc id>".
"""

from __future__ import annotations

import hashlib
import json
import os
import unicodedata
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import xxhash
from datatrove.pipeline.dedup.minhash import MinhashConfig, _mersenne_prime
from datatrove.utils.hashing import HashConfig, create_hash_func
from datatrove.utils.text import TextNormConfig, ngrams, simplify_text
from pydantic import BaseModel, ConfigDict

from smolforge.artifacts import atomic_folder

from .config import DedupConfig
from .documents import Doc, StepResult
from .words import splitter as _tokenizer  # shared with the quality rules

STEP = "dedup"
EXACT_DUPLICATE = "exact_duplicate"
NEAR_DUPLICATE = "near_duplicate"
DUPLICATE_OF_INDEX = "duplicate_of_index"

EXACT_KEY_BYTES = 16
_EXACT_NORM = TextNormConfig(
    lowercase=True,
    norm_whitespace=True,
    remove_punctuation=True,
    norm_unicode_diacritics=False,
    norm_numbers=False,
)
_HASH_CONFIG = HashConfig(precision=64, hash_fc="xxhash")  # datatrove's default, FineWeb's precision
_xxhash64 = create_hash_func(_HASH_CONFIG)  # datatrove's xxhash64: a Python wrapper of the next one
_xxh64 = xxhash.xxh64_intdigest  # called directly per shingle (1M calls a shard), same values
_CHUNK_ROWS = 1 << 11  # shingles per numpy block: 2k x 112 x 8 B = 1.8 MB, stays in cache
_U64_MAX = np.iinfo(np.uint64).max
_SHIFT61 = np.uint64(61)
_INDEX_FORMAT = 1


# ---------------------------------------------------------------------------------------------
# keys and signatures


def exact_key(text: str) -> bytes:
    """16-byte key of the normalised text (see module docstring for the normalisation)."""
    norm = simplify_text(unicodedata.normalize("NFC", text), _EXACT_NORM)
    return hashlib.blake2b(norm.encode("utf-8"), digest_size=EXACT_KEY_BYTES).digest()


def minhash_config(
    *, ngram: int = 5, buckets: int = 14, hashes_per_bucket: int = 8, seed: int = 1
) -> MinhashConfig:
    return MinhashConfig(
        n_grams=ngram, num_buckets=buckets, hashes_per_bucket=hashes_per_bucket, seed=seed, hash_config=_HASH_CONFIG
    )


def _config_tag(config: MinhashConfig, language: str) -> str:
    """Signatures are only comparable when this string is equal (checked by find_duplicates)."""
    return f"minhash_{config}_seed{config.seed}_{language}_exactv1"


_PERMUTATIONS: dict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = {}


def _permutations(seed: int, num_hashes: int) -> tuple[np.ndarray, np.ndarray]:
    """(a, b), each (1, num_hashes) uint64: same generator calls as datatrove's
    `MinhashDedupSignature.parameters`, hence the same hash functions for the same seed."""
    key = (seed, num_hashes)
    if key not in _PERMUTATIONS:
        gen = np.random.RandomState(seed)
        _PERMUTATIONS[key] = (
            gen.randint(1, _mersenne_prime, dtype=np.uint64, size=(1, num_hashes)),
            gen.randint(0, _mersenne_prime, dtype=np.uint64, size=(1, num_hashes)),
        )
    return _PERMUTATIONS[key]


def _strip_marks(text: str) -> str:
    """datatrove's diacritics step - NFD, then drop every character of category "Mn" - without its
    per-character Python generator (half the signature time): only the distinct non-ASCII
    characters are looked up, and removed with str.translate. ASCII text is returned as is."""
    if text.isascii():
        return text
    nfd = unicodedata.normalize("NFD", text)
    marks = [ord(c) for c in set(nfd) if c > "\x7f" and unicodedata.category(c) == "Mn"]
    return nfd.translate(dict.fromkeys(marks)) if marks else nfd


def _simplify(text: str, norm: TextNormConfig) -> str:
    """`simplify_text(text, norm)`, same output (tested), with the diacritics step done by
    `_strip_marks` - it was half of the signature time."""
    if not norm.norm_unicode_diacritics:
        return simplify_text(text, norm)
    partial = simplify_text(text, replace(norm, norm_unicode_diacritics=False))
    return _strip_marks(partial).strip()


def _shingles(tokens: list[str], n: int) -> np.ndarray:
    """xxhash64 of each " "-joined word n-gram (as datatrove's `get_shingles`); fewer than n tokens
    -> one shingle for the whole token sequence.

    The n-gram is UTF-8 encoded here: datatrove passes the str, which xxhash<4 encoded as UTF-8
    but xxhash>=4 rejects ("Strings must be encoded before hashing"), so datatrove 0.10.1's own
    MinhashDedupSignature fails with the xxhash 4.1 in this venv; the hashes equal xxhash<4's."""
    if len(tokens) < n:
        return np.array([_xxhash64(" ".join(tokens).encode("utf-8"))], dtype=np.uint64)
    grams = map(str.encode, map(" ".join, ngrams(tokens, n)))  # str.encode: UTF-8
    return np.fromiter(map(_xxh64, grams), dtype=np.uint64, count=len(tokens) - n + 1)


def _minhashes(shingles: np.ndarray, offsets: np.ndarray, seed: int, num_hashes: int) -> np.ndarray:
    """Min-hashes of many documents at once: (n_docs, num_hashes) uint64.

    `shingles` is all documents' shingles concatenated, `offsets[i]` where doc i starts; every doc
    has at least one shingle. Same arithmetic as datatrove's `get_signature` at 64-bit precision,
    uint64 wrap-around included: min over shingles of (h * a + b) % (2**61 - 1). Processed in
    fixed blocks of rows (independent of document boundaries) so memory stays bounded even for a
    huge document; a block's partial minima are folded in with np.minimum.
    """
    a, b = _permutations(seed, num_hashes)
    n_docs, total = len(offsets), len(shingles)
    out = np.full((n_docs, num_hashes), _U64_MAX, dtype=np.uint64)
    for start in range(0, total, _CHUNK_ROWS):
        stop = min(start + _CHUNK_ROWS, total)
        d0 = int(np.searchsorted(offsets, start, side="right")) - 1
        d1 = int(np.searchsorted(offsets, stop, side="left"))
        seg = np.maximum(offsets[d0:d1], start) - start
        phv = shingles[start:stop, None] * a  # wraps mod 2**64, as in datatrove
        phv += b
        # phv % p for p = 2**61 - 1 without division (2**61 = 1 mod p): (lo 61 bits) + (top 3 bits),
        # at most p + 7, then one conditional subtraction. Equal to np.remainder, 2x faster.
        rem = phv & _mersenne_prime
        phv >>= _SHIFT61
        rem += phv
        np.subtract(rem, _mersenne_prime, out=rem, where=rem >= _mersenne_prime)
        np.minimum(out[d0:d1], np.minimum.reduceat(rem, seg, axis=0), out=out[d0:d1])
    return out


def _bucket_digests(minhashes: np.ndarray, buckets: int, hashes_per_bucket: int) -> np.ndarray:
    """(n, buckets) uint64: xxhash64 of each bucket's `hashes_per_bucket` little-endian uint64s."""
    n = len(minhashes)
    width = 8 * hashes_per_bucket
    raw = np.ascontiguousarray(minhashes, dtype="<u8").tobytes()
    digests = np.fromiter(
        (_xxhash64(raw[i : i + width]) for i in range(0, len(raw), width)), dtype=np.uint64, count=n * buckets
    )
    return digests.reshape(n, buckets)


class SignatureSettings(BaseModel):
    """What a shard's signatures depend on: `DedupConfig` without the plan's settings (`exact`,
    `minhash`, `against`), so changing those re-runs the plan but no shard's signatures."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    ngram: int
    buckets: int
    hashes_per_bucket: int
    seed: int

    @classmethod
    def of(cls, cfg: DedupConfig) -> SignatureSettings:
        return cls(ngram=cfg.ngram, buckets=cfg.buckets, hashes_per_bucket=cfg.hashes_per_bucket, seed=cfg.seed)

    def signatures(self, docs: list[Doc]) -> dict:
        return minhash_signature_shard(
            docs, ngram=self.ngram, buckets=self.buckets, hashes_per_bucket=self.hashes_per_bucket, seed=self.seed
        )


def minhash_signature_shard(
    docs: list[Doc],
    *,
    ngram: int = 5,
    buckets: int = 14,
    hashes_per_bucket: int = 8,
    seed: int = 1,
    language: str = "en",
) -> dict:
    """Signatures of one shard (run it in the worker that holds the shard).

    Returns {"ids": str array (n,), "exact": uint8 (n, 16), "buckets": uint64 (n, buckets),
    "chars": int64 (n,), "config": str} - plain numpy, see `save_signatures`.
    `language` picks datatrove's word tokenizer (FineWeb: "en" for every document).
    """
    config = minhash_config(ngram=ngram, buckets=buckets, hashes_per_bucket=hashes_per_bucket, seed=seed)
    tok = _tokenizer(language)
    simplified = [_simplify(d.text, config.norm_config) for d in docs]
    tok.learn(simplified)
    parts = [_shingles(tok(s), ngram) for s in simplified]
    lengths = np.fromiter(map(len, parts), dtype=np.int64, count=len(parts))
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64) if parts else lengths
    shingles = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    minhashes = _minhashes(shingles, offsets, seed, buckets * hashes_per_bucket)
    exact = b"".join(exact_key(d.text) for d in docs)
    return {
        "ids": np.array([d.id for d in docs], dtype=str),
        "exact": np.frombuffer(exact, dtype=np.uint8).reshape(len(docs), EXACT_KEY_BYTES).copy(),
        "buckets": _bucket_digests(minhashes, buckets, hashes_per_bucket),
        "chars": np.array([len(d.text) for d in docs], dtype=np.int64),
        "config": _config_tag(config, language),
    }


# ---------------------------------------------------------------------------------------------
# .npz files (no pickle: strings are stored as UTF-8 bytes + lengths)


def _pack_strings(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    encoded = [str(v).encode("utf-8") for v in values]
    lengths = np.array([len(e) for e in encoded], dtype=np.int64)
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), lengths


def _unpack_strings(blob: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    raw = blob.tobytes()
    ends = np.cumsum(lengths).tolist()
    starts = [0, *ends[:-1]]
    return np.array([raw[s:e].decode("utf-8") for s, e in zip(starts, ends)], dtype=str)




def save_signatures(sig: dict, path: str | Path) -> Path:
    """Write a shard's signatures to `path` (.npz, written to a temp file then renamed)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    id_blob, id_lengths = _pack_strings(sig["ids"])
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            np.savez(
                f,
                id_blob=id_blob,
                id_lengths=id_lengths,
                exact=sig["exact"],
                buckets=sig["buckets"],
                chars=sig["chars"],
                config=np.array(sig["config"]),
            )
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def load_signatures(path: str | Path) -> dict:
    with np.load(Path(path), allow_pickle=False) as z:
        return {
            "ids": _unpack_strings(z["id_blob"], z["id_lengths"]),
            "exact": z["exact"],
            "buckets": z["buckets"],
            "chars": z["chars"],
            "config": str(z["config"]),
        }


# ---------------------------------------------------------------------------------------------
# clustering (in memory; datatrove does this across .sig/.dups files in stages 2-3)


def _concat(signatures: list[dict]) -> dict:
    configs = {s["config"] for s in signatures}
    if len(configs) > 1:
        raise ValueError(f"signatures computed with different settings: {sorted(configs)}")
    if not signatures:
        return {"ids": np.zeros(0, dtype=str), "exact": np.zeros((0, EXACT_KEY_BYTES), np.uint8), "config": None}
    return {
        "ids": np.concatenate([np.asarray(s["ids"], dtype=str) for s in signatures]),
        "exact": np.concatenate([s["exact"] for s in signatures]),
        "buckets": np.concatenate([s["buckets"] for s in signatures]),
        "config": configs.pop(),
    }


def _void(exact: np.ndarray) -> np.ndarray:
    """(n, 16) uint8 -> (n,) 16-byte scalars that sort and compare as one value."""
    return np.ascontiguousarray(exact, dtype=np.uint8).view(f"V{EXACT_KEY_BYTES}").ravel()


def _equal_neighbours(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pairs (i, j) of rows with equal values: sort, then link neighbours - which chains every
    group of equal values, enough for union-find (this is datatrove's sorted-bucket merge, in RAM)."""
    order = np.argsort(values, kind="stable")
    s = values[order]
    same = s[1:] == s[:-1]
    return order[:-1][same], order[1:][same]


class _UnionFind:
    """Union-find over row numbers, only for rows that have an edge. The root of a set is its
    smallest row; rows are in id order, so the root is the cluster's smallest id."""

    def __init__(self) -> None:
        self.parent: dict[int, int] = {}

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent.get(root, root) != root:
            root = parent[root]
        while x != root:  # path compression
            parent[x], x = root, parent[x]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = (ra, rb) if ra < rb else (rb, ra)
            self.parent[hi] = lo
            self.parent.setdefault(lo, lo)


def find_duplicates(
    shard_signatures: list[dict], *, index: DedupIndex | None = None, exact: bool = True, minhash: bool = True
) -> dict[str, tuple[str, str]]:
    """{doc id: (reason, detail)} for every document to drop, over all shards of the run.

    `exact` links documents with equal normalised text, `minhash` those sharing a full bucket;
    turning one off leaves only the other rule (the index is matched on both either way).

    reason `exact_duplicate` / `near_duplicate`: detail is the id of the cluster's kept document
    (its smallest id); `exact_duplicate` when the doc's exact key equals the kept doc's.
    reason `duplicate_of_index`: the doc's cluster matches `index`; detail "<corpus>:<earlier id>".
    """
    if isinstance(shard_signatures, dict):
        shard_signatures = [shard_signatures]
    sig = _concat(list(shard_signatures))
    ids = sig["ids"]
    if len(ids) == 0:
        return {}
    if index is not None and index.config != sig["config"]:
        raise ValueError(f"index built with {index.config!r}, signatures with {sig['config']!r}")

    order = np.argsort(ids, kind="stable")  # row r = r-th smallest id: a global, shard-free order
    ids = ids[order]
    if len(ids) > 1 and (dup := ids[1:] == ids[:-1]).any():
        raise ValueError(f"document ids must be unique, repeated: {sorted(set(ids[1:][dup]))[:5]}")
    exact_keys = _void(sig["exact"][order])
    buckets = sig["buckets"][order]

    uf = _UnionFind()
    columns = ([exact_keys] if exact else []) + (list(buckets.T) if minhash else [])
    for column in columns:
        for a, b in zip(*(x.tolist() for x in _equal_neighbours(column))):
            uf.union(a, b)

    duplicates: dict[str, tuple[str, str]] = {}
    # index: lowest matching index row per doc (rows are ordered corpus by corpus, by id inside)
    if index is not None and len(index):
        hit = index._match(exact_keys, buckets).tolist()
        cluster_hit: dict[int, int] = {}  # cluster root -> lowest index row any member matches
        for r, row in enumerate(hit):
            if row >= 0:
                root = uf.find(r)
                cluster_hit[root] = min(cluster_hit.get(root, row), row)
        members: dict[int, list[int]] = {}
        for r in uf.parent:
            members.setdefault(uf.find(r), []).append(r)
        for root, row in cluster_hit.items():
            for r in members.get(root, [root]):  # a doc alone in this run is its own cluster
                own = hit[r] if hit[r] >= 0 else row
                duplicates[str(ids[r])] = (DUPLICATE_OF_INDEX, index.describe(own))
    for r in uf.parent:
        root = uf.find(r)
        if r == root or str(ids[r]) in duplicates:
            continue
        reason = EXACT_DUPLICATE if bool(exact_keys[r] == exact_keys[root]) else NEAR_DUPLICATE
        duplicates[str(ids[r])] = (reason, str(ids[root]))
    return duplicates


def apply_duplicates(docs: list[Doc], duplicates: dict[str, tuple[str, str]]) -> StepResult:
    """Split one shard by the `find_duplicates` verdicts (order of kept docs preserved)."""
    result = StepResult()
    for doc in docs:
        verdict = duplicates.get(doc.id)
        if verdict is None:
            result.kept.append(doc)
        else:
            result.drop(doc, STEP, verdict[0], verdict[1])
    return result


# ---------------------------------------------------------------------------------------------
# index of earlier corpora


class DedupIndex:
    """Signatures of earlier corpora, to drop documents of a new run that duplicate them.

    One row per earlier document: id, corpus (origin) name, exact key, bucket digests. Rows are
    ordered corpus by corpus (merge order), by id inside a corpus; a match reports the first
    matching row. Unlike datatrove's .index files (bucket hashes only) it keeps ids, so a drop
    says which earlier document it duplicates.
    """

    def __init__(
        self,
        name: str,
        config: str,
        ids: np.ndarray,
        origins: np.ndarray,
        origin_names: list[str],
        exact: np.ndarray,
        buckets: np.ndarray,
    ):
        self.name = name
        self.config = config
        self.ids = np.asarray(ids, dtype=str)
        self.origins = np.asarray(origins, dtype=np.int32)
        self.origin_names = list(origin_names)
        self.exact = np.asarray(exact, dtype=np.uint8).reshape(-1, EXACT_KEY_BYTES)
        self.buckets = np.asarray(buckets, dtype=np.uint64)
        self._lookup: list[tuple[np.ndarray, np.ndarray]] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def __repr__(self) -> str:
        return f"DedupIndex(name={self.name!r}, docs={len(self)}, corpora={self.origin_names})"

    @classmethod
    def from_signatures(cls, signatures: list[dict] | dict, *, name: str) -> DedupIndex:
        """Index of one corpus (usually every document of a run, duplicates included)."""
        if isinstance(signatures, dict):
            signatures = [signatures]
        sig = _concat(list(signatures))
        if sig["config"] is None:
            raise ValueError("cannot build an index from no signatures (its settings are unknown)")
        order = np.argsort(sig["ids"], kind="stable")
        ids = sig["ids"][order]
        if len(ids) > 1 and (ids[1:] == ids[:-1]).any():
            raise ValueError("document ids must be unique within a corpus")
        return cls(
            name, sig["config"], ids, np.zeros(len(ids), np.int32), [name], sig["exact"][order], sig["buckets"][order]
        )

    def merge(self, other: DedupIndex, *, name: str | None = None) -> DedupIndex:
        """This index plus `other`'s rows (a recurring run adds its corpus to the earlier ones).
        Rows of `other` with the same id and exact key as a row here are not added twice."""
        if other.config != self.config:
            raise ValueError(f"cannot merge indexes built with {self.config!r} and {other.config!r}")
        names = list(self.origin_names)
        remap = []
        for n in other.origin_names:
            if n not in names:
                names.append(n)
            remap.append(names.index(n))
        seen = set(zip(self.ids.tolist(), _void(self.exact).tolist()))
        new = np.array([key not in seen for key in zip(other.ids.tolist(), _void(other.exact).tolist())], dtype=bool)
        new = new.reshape(len(other))
        return DedupIndex(
            name or self.name,
            self.config,
            np.concatenate([self.ids, other.ids[new]]),
            np.concatenate([self.origins, np.asarray(remap, dtype=np.int32)[other.origins[new]]]),
            names,
            np.concatenate([self.exact, other.exact[new]]),
            np.concatenate([self.buckets, other.buckets[new]]),
        )

    def describe(self, row: int) -> str:
        return f"{self.origin_names[self.origins[row]]}:{self.ids[row]}"

    def _match(self, exact: np.ndarray, buckets: np.ndarray) -> np.ndarray:
        """For each query row, the lowest index row sharing its exact key or any bucket; else -1."""
        if self._lookup is None:
            columns = [_void(self.exact), *self.buckets.T]
            self._lookup = []
            for col in columns:
                order = np.argsort(col, kind="stable")  # equal values: lowest row first
                self._lookup.append((col[order], order))
        best = np.full(len(exact), len(self), dtype=np.int64)
        for query, (sorted_col, order) in zip([exact, *buckets.T], self._lookup):
            pos = np.searchsorted(sorted_col, query, side="left")
            ok = pos < len(sorted_col)
            ok[ok] = sorted_col[pos[ok]] == query[ok]
            np.minimum(best, np.where(ok, order[np.minimum(pos, len(order) - 1)], len(self)), out=best)
        best[best == len(self)] = -1
        return best

    # --- files: <folder>/index.npz + <folder>/meta.json, written to a temp folder then renamed

    _FILES = {"index.npz", "meta.json"}

    def save(self, folder: str | Path) -> Path:
        """Write to a temp folder beside `folder`, then rename it into place (`atomic_folder`):
        readers see the old or the new index complete, never a partial one."""
        folder = Path(folder)
        if folder.exists() and not (folder.is_dir() and {p.name for p in folder.iterdir()} <= self._FILES):
            raise ValueError(f"{folder} exists and is not a DedupIndex folder; refusing to replace it")
        with atomic_folder(folder) as tmp:
            id_blob, id_lengths = _pack_strings(self.ids)
            with open(tmp / "index.npz", "wb") as f:
                np.savez(
                    f,
                    id_blob=id_blob,
                    id_lengths=id_lengths,
                    origins=self.origins,
                    exact=self.exact,
                    buckets=self.buckets,
                )
            meta = {
                "format": _INDEX_FORMAT,
                "name": self.name,
                "config": self.config,
                "origin_names": self.origin_names,
                "docs": len(self),
            }
            (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        return folder

    @classmethod
    def load(cls, folder: str | Path) -> DedupIndex:
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != _INDEX_FORMAT:
            raise ValueError(f"{folder}: unsupported DedupIndex format {meta.get('format')}")
        with np.load(folder / "index.npz", allow_pickle=False) as z:
            index = cls(
                meta["name"],
                meta["config"],
                _unpack_strings(z["id_blob"], z["id_lengths"]),
                z["origins"],
                meta["origin_names"],
                z["exact"],
                z["buckets"],
            )
        if len(index) != meta["docs"]:
            raise ValueError(f"{folder}: index.npz has {len(index)} docs, meta.json says {meta['docs']}")
        return index
