"""What changed in the raw data since the corpora a model was trained on, and the cached steps that
let a retrain curate only that: a dedup index that has forgotten the changed and deleted files, and
packed sources with those files' documents taken out.

A corpus already records every raw file it read, by content: each extraction artifact's config
lists its source and its files' `{rel, xxh3}`. A file is known by its source name and relative path
(`books`, `austen/emma.txt`), the same identity document ids carry (`books/austen/emma.txt#3`), so a
data folder copied elsewhere diffs cleanly, while renaming a source makes all its files new.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from smolforge.artifacts import ArtifactRef, ArtifactStore
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step
from smolforge.tasks.curate import dedup, pack
from smolforge.tasks.curate.sources import InputFile
from smolforge.tasks.curate.tokenizer import load_tokenizer

FILES = "files.json"  # a retrain's data artifact carries its lineage's file table forward in this file

# source name -> relative path -> {"xxh3": content hash, "corpus": key of the corpus that holds its documents}
FileTable = dict[str, dict[str, dict[str, str]]]


def file_id(source: str, rel: str) -> str:
    """The id prefix every document of a file carries."""
    return f"{source}/{rel}"


def document_file(doc_id: str) -> str:
    """`books/a.txt#3` -> `books/a.txt`: the file a document came from."""
    return doc_id.split("#", 1)[0]


def corpus_file_table(corpus: ArtifactRef, store: ArtifactStore) -> FileTable:
    """The raw files a pipeline corpus read, from its extraction artifacts' manifests."""
    table: FileTable = {}
    for entry in corpus.manifest()["config"]["steps"]["extract"]:
        extracted = store.get(entry["artifact"], entry["key"])
        if extracted is None:
            raise FileNotFoundError(
                f"corpus {corpus.key}: its extraction artifact {entry['artifact']}/{entry['key']} is missing from {store.location}"
            )
        config = extracted.manifest()["config"]
        files = table.setdefault(config["source"]["name"], {})
        for f in config["files"]:
            files[f["rel"]] = {"xxh3": f["xxh3"], "corpus": corpus.key}
    return table


def file_table(data: ArtifactRef, store: ArtifactStore) -> FileTable:
    """The file table of a pipeline corpus, or the one a retrain's data artifact carries."""
    if (data.path / FILES).is_file():
        return json.loads((data.path / FILES).read_text(encoding="utf-8"))
    return corpus_file_table(data, store)


@dataclass
class FileDiff:
    """Files by source: new, changed (same path, other content) and deleted since the table."""

    new: dict[str, list[InputFile]] = field(default_factory=dict)
    changed: dict[str, list[InputFile]] = field(default_factory=dict)
    deleted: dict[str, list[str]] = field(default_factory=dict)
    unchanged: int = 0

    def counts(self) -> dict[str, int]:
        size = lambda d: sum(len(v) for v in d.values())
        return {"new": size(self.new), "changed": size(self.changed), "deleted": size(self.deleted), "unchanged": self.unchanged}

    def to_read(self) -> dict[str, list[InputFile]]:
        """New and changed files by source: all a retrain extracts."""
        sources = sorted(set(self.new) | set(self.changed))
        return {s: sorted(self.new.get(s, []) + self.changed.get(s, []), key=lambda f: f.rel) for s in sources}

    def forgotten(self) -> set[str]:
        """Ids (`source/rel`) of the files whose earlier documents leave the index and the replay."""
        gone = {file_id(s, f.rel) for s, files in self.changed.items() for f in files}
        return gone | {file_id(s, rel) for s, rels in self.deleted.items() for rel in rels}


def diff_files(current: dict[str, list[InputFile]], table: FileTable) -> FileDiff:
    """Compare the files the sources hold now with the table of what the corpora read."""
    diff = FileDiff()
    for source in sorted(set(current) | set(table)):
        known = table.get(source, {})
        now = {f.rel: f for f in current.get(source, [])}
        for rel, f in now.items():
            if rel not in known:
                diff.new.setdefault(source, []).append(f)
            elif known[rel]["xxh3"] != f.xxh3:
                diff.changed.setdefault(source, []).append(f)
            else:
                diff.unchanged += 1
        gone = sorted(set(known) - set(now))
        if gone:
            diff.deleted[source] = gone
    return diff


def updated_table(table: FileTable, diff: FileDiff, corpus_key: str) -> FileTable:
    """The table after a retrain: new and changed files now held by `corpus_key`, deleted ones gone."""
    result = {s: dict(files) for s, files in table.items()}
    for source, rels in diff.deleted.items():
        for rel in rels:
            result[source].pop(rel, None)
    for source, files in diff.to_read().items():
        for f in files:
            result.setdefault(source, {})[f.rel] = {"xxh3": f.xxh3, "corpus": corpus_key}
    return {s: files for s, files in result.items() if files}


def link_files(files: dict[str, list[InputFile]], folder: Path) -> dict[str, Path]:
    """A folder per source holding links to just these files at their relative paths: a source
    pointed there reads only them, under the same ids and cache keys as in their own folder."""
    folders = {}
    for source, inputs in files.items():
        root = folder / source
        if root.exists():
            shutil.rmtree(root)
        for f in inputs:
            link = root / f.rel
            link.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(Path(f.root).resolve() / f.rel, link)
        folders[source] = root
    return folders


def index_without(index: dedup.DedupIndex, files: set[str]) -> dedup.DedupIndex:
    """`index` minus the rows of documents that came from `files` (`"<source>/<rel>"`, the id of a
    whole-file document and the prefix of its `#n` records): a changed file's new version must not
    be dropped as a duplicate of its old one. (Here rather than a DedupIndex method: an edit of
    dedup.py re-keys every curated shard.)"""
    keep = np.array([document_file(i) not in files for i in index.ids.tolist()], dtype=bool).reshape(len(index))
    return dedup.DedupIndex(
        index.name, index.config, index.ids[keep], index.origins[keep], index.origin_names, index.exact[keep], index.buckets[keep]
    )


def tokenizer_fingerprint(folder: str | Path) -> str:
    """Identity of a tokenizer's vocabulary, merges, normalisation and special tokens: the sha256 of
    its backend JSON without the padding and truncation settings (which loading and saving change).
    Two BPEs of the same size trained on other text differ here, where a vocabulary-size check
    would pass them as one; the same tokenizer read back from any saved copy hashes the same.
    (Kept here rather than in tokenizer.py, whose every edit re-keys all tokenized data.)"""
    backend = json.loads(load_tokenizer(str(folder)).backend_tokenizer.to_str())
    backend.pop("padding", None)
    backend.pop("truncation", None)
    return hashlib.sha256(json.dumps(backend, sort_keys=True).encode()).hexdigest()[:16]


# --- cached steps ---------------------------------------------------------------------------------

_CODE = Path(__file__).parent


@artifact_step("dedup-index", code=(_CODE / "dedup.py",))
def forget_index(out: Path, corpora: list[ArtifactRef], forget: list[str], runtime: Runtime) -> dict:
    """Every earlier corpus's dedup index in one, less the documents of the files in `forget`.
    Its folder is what `curate.dedup.against` takes."""
    merged = None
    for corpus in corpora:
        index = dedup.DedupIndex.load(corpus.path / "dedup_index")
        merged = index if merged is None else merged.merge(index)
    before = len(merged)
    merged = index_without(merged, set(forget))
    merged.save(out / "dedup_index")
    return {"documents": len(merged), "forgotten": before - len(merged)}


def _copy_split(src: Path, out: Path, split: str, drop: set[str]) -> dict:
    """One split of a packed folder without the documents of the files in `drop`."""
    tokens, offsets = pack.open_split(src, split)
    ids = [json.loads(line) for line in (src / f"{split}.ids.jsonl").read_text(encoding="utf-8").splitlines()]
    keep = [i for i, doc_id in enumerate(ids) if document_file(doc_id) not in drop]
    new_offsets, pieces = [0], []
    for i in keep:
        piece = np.asarray(tokens[int(offsets[i]) : int(offsets[i + 1])])
        pieces.append(piece)
        new_offsets.append(new_offsets[-1] + len(piece))
    with open(out / f"{split}.bin", "wb") as f:
        for piece in pieces:
            f.write(piece.astype(tokens.dtype, copy=False).tobytes())
    np.save(out / f"{split}.idx.npy", np.asarray(new_offsets, dtype=np.int64))
    with open(out / f"{split}.ids.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(ids[i]) + "\n" for i in keep)
    return {"n_docs": len(keep), "n_tokens": new_offsets[-1], "dropped_docs": len(ids) - len(keep)}


@artifact_step("tokens", code=(_CODE / "pack.py",))
def select_packed(out: Path, packed: ArtifactRef, drop: list[str], runtime: Runtime) -> dict:
    """A packed source without the documents of the files in `drop` (ids `source/rel`), tokens copied
    as they are: replaying an earlier corpus without a changed or deleted file's old version needs
    no tokenizer and no re-tokenization."""
    meta = pack.read_meta(packed.path)
    drop_set = set(drop)
    for split in pack.SPLITS:
        counts = _copy_split(packed.path, out, split, drop_set)
        dropped = counts.pop("dropped_docs")
        chars = meta[split].get("chars") if dropped == 0 else None  # per-document characters are not kept
        meta[split] = {**counts, "chars": chars}
    meta["selected_from"] = packed.key
    (out / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta
