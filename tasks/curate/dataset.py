"""The curated corpus as a dataset people can open: the documents that survived every step, as Parquet.

The token shards are what pretraining reads; this is what a person (or another tool) reads: open it
with `datasets`, pandas or datatrove, read samples, filter it further, train something else on it,
share it. Layout of the `dataset/` folder of a `corpus` (or `retrain-data`) artifact:

    data/train-00000-of-00002.parquet   the documents, sorted by source then id; a file takes rows
                                        until `max_file_mb` of text and ids, a row group until
                                        `row_group_mb` (what a streaming reader fetches at a time)
    profile.json                        rows, characters and tokens, per source and per language
    README.md                           the dataset card (YAML front matter the hub reads for its
                                        `data_files`, then the numbers and the recipe)

Columns (`SCHEMA`): the document (`id`, `text`, `source`, `path`: the file, or for WARC the file
and record, it came from), what the steps found (`language`, `language_score`), its size (`chars`,
`tokens`: its tokens without the end-of-document mark, and `split`: the packed split it went to),
and its near-duplicate cluster: `minhash_cluster` is the document's own id when exact or MinHash
duplicates were removed in its favour (each removed one's drop record names it in `detail`), and
`minhash_cluster_size` counts the cluster's documents, itself included (1: no duplicate). Then the
quality step's measures of the document (`quality_words`, `quality_line_punct_ratio`, ...: see
`quality.SIGNALS`), null when the quality rules were off.

Sorting and splitting files by size are written here (the `datasets` writer shards by row count and
keeps no order of ours); reading is the libraries' own (`pyarrow.dataset`, `datasets`, datatrove).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pds
import pyarrow.parquet as pq

from smolforge.tasks.curate import pack, quality
from smolforge.tasks.curate.dedup import EXACT_DUPLICATE, NEAR_DUPLICATE

FOLDER, DATA, CARD, PROFILE = "dataset", "data", "README.md", "profile.json"
SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("text", pa.large_string()),  # one row group may hold more than 2 GB of text
        ("source", pa.string()),
        ("path", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
        ("chars", pa.int64()),
        ("tokens", pa.int64()),
        ("split", pa.string()),
        ("minhash_cluster", pa.string()),
        ("minhash_cluster_size", pa.int64()),
        *((f"quality_{name}", kind) for name, kind in quality.SIGNALS.items()),
    ]
)
SIGNAL_COLUMNS = [f"quality_{name}" for name in quality.SIGNALS]
MB = 1 << 20


class DatasetError(ValueError):
    """A dataset request that cannot be served: the message names the value and what exists."""


# --- writing ------------------------------------------------------------------------------------


def token_counts(packed: Path) -> dict[str, tuple[int, str]]:
    """Document id -> (its tokens without the end-of-document mark, its split), from a packed folder."""
    found = {}
    for split in pack.SPLITS:
        offsets = np.load(packed / f"{split}.idx.npy")
        ids = (packed / f"{split}.ids.jsonl").read_text(encoding="utf-8").splitlines()
        for doc_id, n in zip(ids, np.diff(offsets).tolist(), strict=True):
            found[json.loads(doc_id)] = (n - 1, split)
    return found


def cluster_sizes(duplicates: dict[str, Any]) -> Counter:
    """Kept document id -> how many duplicates were dropped in its favour (dedup's `find_duplicates`
    verdicts: a duplicate's detail is the id of its cluster's kept document)."""
    return Counter(detail for reason, detail in duplicates.values() if reason in (EXACT_DUPLICATE, NEAR_DUPLICATE))


def read_signals(files: list[Path]) -> dict[str, dict[str, float]]:
    """Document id -> the measures a step took of it (the steps' `signals.parquet` files)."""
    found: dict[str, dict[str, float]] = {}
    for file in files:
        for row in pq.read_table(file).to_pylist():
            found.setdefault(row.pop("id"), {}).update(row)
    return found


def source_table(shards: list[Path], tokens: dict[str, tuple[int, str]], clusters: Counter, signals: dict[str, dict[str, float]]) -> pa.Table:
    """One source's documents (its `docs.parquet` shards) in dataset columns, sorted by id."""
    table = pa.concat_tables([pq.read_table(p) for p in shards]).sort_by("id")
    ids = table.column("id").to_pylist()
    counted = [tokens.get(i, (None, None)) for i in ids]  # packing skips a document with empty text
    extra = clusters.get
    columns = {
        **{name: table.column(name) for name in ("id", "text", "source", "path", "language", "language_score")},
        "chars": pc.utf8_length(table.column("text")).cast(pa.int64()),
        "tokens": pa.array([n for n, _ in counted], pa.int64()),
        "split": pa.array([s for _, s in counted], pa.string()),
        "minhash_cluster": pa.array([i if extra(i) else None for i in ids], pa.string()),
        "minhash_cluster_size": pa.array([1 + extra(i, 0) for i in ids], pa.int64()),
    }
    measured = [signals.get(i, {}) for i in ids]
    for name, column in zip(quality.SIGNALS, SIGNAL_COLUMNS):
        columns[column] = pa.array([m.get(name) for m in measured], pa.float64()).cast(SCHEMA.field(column).type)
    return pa.table(columns, schema=SCHEMA)


def _row_bytes(table: pa.Table) -> np.ndarray:
    """Bytes of text and id per row: what bounds a row group and a file (before compression)."""
    size = pc.binary_length(table.column("text")).to_numpy(zero_copy_only=False)
    return size + pc.binary_length(table.column("id")).to_numpy(zero_copy_only=False)


class PartWriter:
    """Rows in order in, Parquet files of bounded size out (`data/train-XXXXX-of-YYYYY.parquet`).

    Rows gather into a row group until it holds `row_group_mb`; a file is closed after the row group
    that takes it to `max_file_mb`. Files are numbered once all are written (the count is in the name)."""

    def __init__(self, folder: Path, max_file_mb: int, row_group_mb: int, schema: pa.Schema = SCHEMA):
        self.folder, self.schema = folder, schema
        self.file_bytes, self.group_bytes = max_file_mb * MB, min(row_group_mb, max_file_mb) * MB
        self.folder.mkdir(parents=True, exist_ok=True)
        self.files: list[Path] = []
        self._writer: pq.ParquetWriter | None = None
        self._in_file = 0
        self._pending: list[pa.Table] = []
        self._pending_bytes = 0
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        sizes = _row_bytes(table)
        ends = np.cumsum(sizes)  # bytes up to and including each row
        start = 0
        while start < len(table):
            room = min(self.group_bytes, self.file_bytes - self._in_file) - self._pending_bytes
            before = int(ends[start - 1]) if start else 0
            taken = int(np.searchsorted(ends, before + room, side="right")) - start
            if not taken and not self._pending:
                if self._in_file:  # the next row would take the file past its bound: start the next file
                    self._close_file()
                    continue
                taken = 1  # a row larger than a group goes alone
            if taken:
                self._pending.append(table.slice(start, taken))
                self._pending_bytes += int(ends[start + taken - 1]) - before
                start += taken
            if start < len(table):
                self._flush()

    def _flush(self) -> None:
        if not self._pending:
            return
        if self._writer is None:
            self.files.append(self.folder / f".part-{len(self.files):05d}.parquet")
            self._writer = pq.ParquetWriter(self.files[-1], self.schema, compression="zstd")
        group = pa.concat_tables(self._pending)
        self._writer.write_table(group, row_group_size=max(len(group), 1))
        self.rows += len(group)
        self._in_file += self._pending_bytes
        self._pending, self._pending_bytes = [], 0
        if self._in_file >= self.file_bytes:
            self._close_file()

    def _close_file(self) -> None:
        self._writer.close()
        self._writer, self._in_file = None, 0

    def close(self, suffix: str = "parquet") -> list[Path]:
        """Write what is left (an empty dataset still gets one file, so readers find its columns)."""
        self._flush()
        if self._writer is not None:
            self._writer.close()
        if not self.files:
            self.files.append(self.folder / ".part-00000.parquet")
            pq.write_table(self.schema.empty_table(), self.files[0], compression="zstd")
        named = []
        for i, part in enumerate(self.files):
            final = self.folder / f"train-{i:05d}-of-{len(self.files):05d}.{suffix}"
            os.replace(part, final)
            named.append(final)
        return named


def profile_of(tables: Iterable[pa.Table], files: list[Path]) -> dict[str, Any]:
    """Rows, characters and tokens in all and per source, rows per language."""
    sources: dict[str, dict[str, int]] = {}
    languages: Counter = Counter()
    for table in tables:
        for row in table.group_by("source").aggregate([("id", "count"), ("chars", "sum"), ("tokens", "sum")]).to_pylist():
            entry = sources.setdefault(row["source"], {"rows": 0, "chars": 0, "tokens": 0})
            entry["rows"] += row["id_count"]
            entry["chars"] += row["chars_sum"] or 0
            entry["tokens"] += row["tokens_sum"] or 0
        for row in table.group_by("language").aggregate([("id", "count")]).to_pylist():
            languages[row["language"] or "unknown"] += row["id_count"]
    return {
        "rows": sum(s["rows"] for s in sources.values()),
        "chars": sum(s["chars"] for s in sources.values()),
        "tokens": sum(s["tokens"] for s in sources.values()),
        "files": len(files),
        "bytes": sum(f.stat().st_size for f in files),
        "sources": dict(sorted(sources.items())),
        "languages": dict(sorted(languages.items(), key=lambda kv: (-kv[1], kv[0]))),
    }


def write_dataset(
    out: Path,
    shards: dict[str, list[Path]],
    packed: dict[str, Path],
    duplicates: dict[str, Any],
    signal_files: list[Path],
    max_file_mb: int,
    row_group_mb: int,
) -> dict[str, Any]:
    """The kept documents of every source (`shards`: its deduplicated `docs.parquet` files) with
    their token counts (`packed` folders), duplicate clusters and measures (`signal_files`), as
    `out/data/*.parquet` plus `out/profile.json`; returns the profile. One source is sorted in
    memory at a time."""
    clusters = cluster_sizes(duplicates)
    signals = read_signals(signal_files)
    writer = PartWriter(out / DATA, max_file_mb, row_group_mb)
    profiles = []
    for source in sorted(shards):
        table = source_table(shards[source], token_counts(packed[source]), clusters, signals)
        writer.write(table)
        profiles.append(table.select(["id", "source", "language", "chars", "tokens"]))
    files = writer.close()
    profile = profile_of(profiles, files)
    (out / PROFILE).write_text(json.dumps(profile, indent=2), encoding="utf-8")
    return profile


def select_dataset(out: Path, parts: list[tuple[str, Path, dict[str, dict[str, Any]]]], max_file_mb: int, row_group_mb: int) -> dict[str, Any]:
    """A retrain's dataset: the documents of several corpora's datasets that its file table says
    each corpus holds (`parts`: (corpus key, its dataset folder, source -> relative path -> table
    entry)), rewritten into files of bounded size. Each corpus's rows stay sorted by source then id
    (the corpora follow one another, oldest first). A corpus curated before corpora had datasets
    is listed in the profile's parts with no file."""
    writer = PartWriter(out / DATA, max_file_mb, row_group_mb)
    profiles, made = [], []
    for key, folder, table in parts:
        current = {f"{source}/{rel}" for source, files in table.items() for rel, entry in files.items() if entry["corpus"] == key}
        if not (folder / PROFILE).is_file():
            made.append({"corpus": key, "file": "(no dataset)", "rows": 0, "left_out": 0})
            continue
        for file in data_files(folder):
            rows = pq.read_table(file)
            wanted = pa.array([i.split("#", 1)[0] in current for i in rows.column("id").to_pylist()], pa.bool_())
            kept = rows.filter(wanted)
            writer.write(kept)
            profiles.append(kept.select(["id", "source", "language", "chars", "tokens"]))
            made.append({"corpus": key, "file": file.name, "rows": len(kept), "left_out": len(rows) - len(kept)})
    files = writer.close()
    profile = {**profile_of(profiles, files), "parts": made}
    (out / PROFILE).write_text(json.dumps(profile, indent=2), encoding="utf-8")
    return profile


def link_dataset(src: Path, dest: Path) -> None:
    """Put a written dataset (its Parquet files and profile, not its manifest) into `dest`: hard
    links within one store (no copy of the text), a copy across file systems."""
    for file in [*data_files(src), Path(src) / PROFILE]:
        target = dest / file.relative_to(src)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(file, target)
        except OSError:
            shutil.copy2(file, target)


# --- reading ------------------------------------------------------------------------------------


def data_files(folder: Path) -> list[Path]:
    """The Parquet files of a dataset folder, in order."""
    return sorted((Path(folder) / DATA).glob("*.parquet"))


def open_dataset(folder: Path) -> pds.Dataset:
    return pds.dataset([str(f) for f in data_files(folder)], format="parquet", schema=SCHEMA)


def read_profile(folder: Path) -> dict[str, Any]:
    return json.loads((Path(folder) / PROFILE).read_text(encoding="utf-8"))


def samples(folder: Path, per_group: int = 2) -> list[dict[str, Any]]:
    """The first `per_group` documents of each (source, language), reading the text of those alone."""
    dataset = open_dataset(folder)
    keys = dataset.to_table(columns=["source", "language"])
    firsts: dict[tuple[str, str], list[int]] = {}
    for i, key in enumerate(zip(keys.column("source").to_pylist(), keys.column("language").to_pylist())):
        picked = firsts.setdefault(key, [])
        if len(picked) < per_group:
            picked.append(i)
    rows = dataset.take(sorted(i for picked in firsts.values() for i in picked), columns=["id", "source", "language", "tokens", "text"])
    return sorted(rows.to_pylist(), key=lambda r: (r["source"], r["language"] or "", r["id"]))
