"""Tokenise one source's curated documents into flat token files that pretraining memory-maps.

Why flat files: pretraining reads random windows of a fixed length from a stream of tokens. A raw
array on disk gives that at the cost of a slice (`np.memmap`), with no parsing and no per-document
objects, and the operating system's page cache does the buffering.

Layout of a packed folder (one per source):

    train.bin        the train tokens, raw little-endian uint16 (or uint32, see `token_dtype`),
                     no header
    train.idx.npy    int64 [n_docs + 1]: start offset of each document, then the total token count
    train.ids.jsonl  the document ids in file order, one JSON string a line (provenance)
    val.bin, val.idx.npy, val.ids.jsonl
    meta.json        dtype, vocab size, eos id, tokenizer identity, and per split ("train", "val")
                     n_docs, n_tokens, chars

Every document is followed by the eos token, the end-of-document mark the model learns to emit.
Text that happens to spell a special token (a page about chat formats quoting "<|im_start|>") is
encoded as plain text, so eos and the chat markers occur only where the pipeline puts them. The
offsets let pretraining build a per-document attention mask (`document_ids`) without scanning for
eos.

The validation split is chosen per source, by whole documents, from a hash of the document id and
the seed: the same documents go to validation whatever order they arrive in, and across reruns.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path

import numpy as np

from smolforge.tasks.curate.documents import Doc

SPLITS = ("train", "val")
FORMAT_VERSION = 1


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id (0 .. vocab_size - 1) fits in it: half the disk and page cache.

    Little-endian whatever the machine, so a folder reads the same everywhere.
    """
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def split_score(doc_id: str, seed: int) -> float:
    """A uniform number in [0, 1) from the id alone, so the split does not depend on order."""
    digest = hashlib.blake2b(f"{seed}\0{doc_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


@dataclass
class _Split:
    """One split being written: tokens go straight to disk, per-document data stays here."""

    name: str
    path: Path
    dtype: np.dtype
    offsets: list[int] = field(default_factory=lambda: [0])
    ids: list[str] = field(default_factory=list)
    chars: list[int] = field(default_factory=list)
    scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.file = open(self.path, "wb")

    def append(
        self, docs: list[Doc], scores: list[float], token_lists: list[list[int]], eos_id: int
    ) -> None:
        flat: list[int] = []
        for doc, score, ids in zip(docs, scores, token_lists, strict=True):
            flat.extend(ids)
            flat.append(eos_id)
            self.offsets.append(self.offsets[-1] + len(ids) + 1)
            self.ids.append(doc.id)
            self.chars.append(len(doc.text))
            self.scores.append(score)
        # numpy raises OverflowError rather than wrapping if an id did not fit the dtype.
        np.asarray(flat, dtype=self.dtype).tofile(self.file)

    def ranked(self) -> list[int]:
        """Document positions by score (ties by id): an order that ignores the input order."""
        return sorted(range(len(self.ids)), key=lambda i: (self.scores[i], self.ids[i]))

    def close(self) -> None:
        self.file.close()


def _encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """A function giving the token ids of each text of a batch: no special tokens added, and
    special-token strings inside the text encoded as text.

    Its result equals `tokenizer(texts, add_special_tokens=False, split_special_tokens=True)`.
    For a fast tokenizer it calls a private copy of the Rust backend directly: no offsets or
    attention masks are built (about a third less CPU time, the same parallel batch encoding), and
    the copy keeps the split-special-tokens switch from leaking into a tokenizer other threads use.
    A backend that carries its own truncation or padding goes through the transformers call, which
    switches both off.
    """
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.truncation is None and backend.padding is None:
        backend = copy.deepcopy(backend)
        backend.encode_special_tokens = True
        encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
        return lambda texts: [e.ids for e in encode(texts, add_special_tokens=False)]

    def call(texts: list[str]) -> list[list[int]]:
        # verbose=False: longer than model_max_length is fine here, nothing is truncated.
        out = tokenizer(texts, add_special_tokens=False, split_special_tokens=True, verbose=False)
        return out["input_ids"]

    return call


def _batches(docs: Iterable[Doc], size: int) -> Iterator[list[Doc]]:
    it = iter(docs)
    while batch := list(islice(it, size)):
        yield batch


def _move_one_doc(src: _Split, dst: _Split, k: int) -> None:
    """Move document k of `src` into the (empty) `dst`; both files are closed.

    Only needed when the hash sent every document of a small source to one side, so rewriting the
    source file is cheap in practice.
    """
    start, end = src.offsets[k], src.offsets[k + 1]
    tokens = np.fromfile(src.path, dtype=src.dtype)
    tokens[start:end].tofile(dst.path)
    dst.offsets = [0, end - start]
    dst.ids, dst.chars, dst.scores = [src.ids[k]], [src.chars[k]], [src.scores[k]]

    tmp = src.path.with_suffix(".tmp")
    np.concatenate([tokens[:start], tokens[end:]]).tofile(tmp)
    os.replace(tmp, src.path)
    n = end - start
    src.offsets = src.offsets[: k + 1] + [o - n for o in src.offsets[k + 2 :]]
    del src.ids[k], src.chars[k], src.scores[k]


def _ensure_both_splits(train: _Split, val: _Split, val_fraction: float) -> None:
    """With two or more documents, neither split may be empty (unless validation is switched off).

    The document moved is the extreme by score, so the choice is still order-independent.
    """
    if len(train.ids) + len(val.ids) < 2 or val_fraction == 0:
        return
    if not val.ids:  # the train document closest to the validation side crosses over
        _move_one_doc(train, val, train.ranked()[0])
    elif not train.ids:  # and the other way round
        _move_one_doc(val, train, val.ranked()[-1])


def _tokenizer_identity(tokenizer) -> dict:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    sha = None if backend is None else hashlib.sha256(backend.to_str().encode()).hexdigest()[:16]
    return {"name_or_path": str(getattr(tokenizer, "name_or_path", "")), "sha256_16": sha}


def _finish(split: _Split, out_dir: Path) -> dict:
    np.save(out_dir / f"{split.name}.idx.npy", np.asarray(split.offsets, dtype=np.int64))
    with open(out_dir / f"{split.name}.ids.jsonl", "w") as f:
        f.writelines(json.dumps(i) + "\n" for i in split.ids)
    return {"n_docs": len(split.ids), "n_tokens": split.offsets[-1], "chars": sum(split.chars)}


def pack_documents(
    docs: Iterable[Doc],
    tokenizer,
    out_dir: Path,
    *,
    val_fraction: float = 0.05,
    seed: int = 0,
    batch_size: int = 256,
) -> dict:
    """Tokenise `docs` (one source) into train/val token files in `out_dir` and return the meta.

    `out_dir` is expected fresh (the caller renames it into place). Documents with empty text are
    skipped and counted. With two or more documents and `val_fraction > 0`, each split gets at
    least one document.
    """
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1); got {val_fraction!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1; got {batch_size!r}")
    eos_id = tokenizer.eos_token_id
    if eos_id is None:
        raise ValueError(
            f"tokenizer {tokenizer.name_or_path!r} has no eos token to end documents with"
        )
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab_size = len(tokenizer)  # includes added tokens, unlike tokenizer.vocab_size
    dtype = token_dtype(vocab_size)

    encode = _encoder(tokenizer)
    splits = {name: _Split(name, out_dir / f"{name}.bin", dtype) for name in SPLITS}
    skipped_empty = 0
    try:
        for batch in _batches(docs, batch_size):
            kept = [d for d in batch if d.text]
            skipped_empty += len(batch) - len(kept)
            if not kept:
                continue
            # One call per batch: a fast tokenizer encodes a batch on all cores.
            token_lists = encode([d.text for d in kept])
            scores = [split_score(d.id, seed) for d in kept]
            for name in SPLITS:
                pick = [i for i, s in enumerate(scores) if (s < val_fraction) == (name == "val")]
                if pick:
                    splits[name].append(
                        [kept[i] for i in pick],
                        [scores[i] for i in pick],
                        [token_lists[i] for i in pick],
                        eos_id,
                    )
    finally:
        for split in splits.values():
            split.close()

    _ensure_both_splits(splits["train"], splits["val"], val_fraction)
    meta = {
        "format": FORMAT_VERSION,
        "dtype": dtype.name,  # always little-endian
        "vocab_size": vocab_size,
        "eos_id": int(eos_id),
        "val_fraction": val_fraction,
        "seed": seed,
        "skipped_empty": skipped_empty,
        "tokenizer": _tokenizer_identity(tokenizer),
        **{name: _finish(split, out_dir) for name, split in splits.items()},  # "train", "val"
    }
    (out_dir / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    return meta


# --- reading -----------------------------------------------------------------------------------


def read_meta(out_dir: Path) -> dict:
    return json.loads((Path(out_dir) / "meta.json").read_text())


def open_split(out_dir: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, offsets) of one split; tokens is a read-only memmap (an empty array if no tokens,
    since an empty file cannot be mapped)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}; got {split!r}")
    out_dir = Path(out_dir)
    dtype = np.dtype(read_meta(out_dir)["dtype"]).newbyteorder("<")
    offsets = np.load(out_dir / f"{split}.idx.npy")
    n_tokens = int(offsets[-1])
    path = out_dir / f"{split}.bin"
    size = path.stat().st_size
    if size != n_tokens * dtype.itemsize:
        raise ValueError(
            f"{path} holds {size} bytes but its index says {n_tokens} {dtype.name} tokens"
        )
    if n_tokens == 0:
        return np.zeros(0, dtype=dtype), offsets
    return np.memmap(path, dtype=dtype, mode="r", shape=(n_tokens,)), offsets


def document_ids(offsets: np.ndarray, start: int, length: int) -> np.ndarray:
    """Index of the document each position of the window [start, start + length) belongs to.

    Positions with equal ids may attend to each other; a change of id is a document boundary.
    """
    total = int(offsets[-1])
    if start < 0 or length < 0 or start + length > total:
        raise ValueError(
            f"window [{start}, {start + length}) is outside the {total} tokens of the split"
        )
    positions = np.arange(start, start + length, dtype=np.int64)
    return np.searchsorted(offsets, positions, side="right") - 1
