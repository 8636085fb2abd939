"""The record every curation step reads and writes, the one signature of a step, and the Parquet form.

A step (`Step`) is built from its typed config and takes a list of `Doc`; it returns the kept ones
plus one `Drop` per removed document, so nothing leaves the funnel without a reason (datatrove's
exclusion-writer idea, kept in memory per shard because a shard is small).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@dataclass
class Doc:
    """One document on its way through the funnel."""

    id: str  # stable across runs: "<source>/<relative path>[#<n>]"
    source: str  # the configured source name
    text: str
    path: str = ""  # file it came from, relative to the source root
    language: str | None = None
    language_score: float | None = None


@dataclass
class Drop:
    """A document removed by a step, with the stable reason string (e.g. `gopher_short_doc`)."""

    id: str
    source: str
    step: str
    reason: str
    chars: int = 0
    detail: str = ""


@dataclass
class StepResult:
    """What one step did to one shard."""

    kept: list[Doc] = field(default_factory=list)
    dropped: list[Drop] = field(default_factory=list)
    counters: dict[str, int] = field(default_factory=dict)  # step-specific counts, e.g. PII's docs_masked
    signals: dict[str, dict[str, float]] = field(default_factory=dict)  # kept doc id -> measures the step took of it

    def drop(self, doc: Doc, step: str, reason: str, detail: str = "") -> None:
        self.dropped.append(Drop(doc.id, doc.source, step, reason, len(doc.text), detail))


class Step(ABC):
    """One per-document curation step, as datatrove's pipeline steps: built from its typed config,
    documents in, kept documents and drop records out (`run`).

    `name` is the step's name in drop records and the funnel (`quality`), and each drop's reason is
    a stable string (`gopher_quality/gopher_short_doc`). A step is a small picklable object (its
    config and plain values), so the flow sends the step itself to a worker process; anything it
    builds for speed (filters, tokenizers) is built lazily in the process that runs it.
    """

    name: str

    @abstractmethod
    def run(self, docs: list[Doc]) -> StepResult:
        """Keep or drop each document (a step may change a kept document's text)."""


DOC_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("text", pa.large_string()),
        ("path", pa.string()),
        ("language", pa.string()),
        ("language_score", pa.float64()),
    ]
)
DROP_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("source", pa.string()),
        ("step", pa.string()),
        ("reason", pa.string()),
        ("chars", pa.int64()),
        ("detail", pa.string()),
    ]
)


def _write(rows: list, schema: pa.Schema, path: Path) -> None:
    table = pa.Table.from_pylist([asdict(r) for r in rows], schema=schema)
    pq.write_table(table, path, compression="zstd")


def write_docs(docs: list[Doc], path: Path) -> None:
    _write(docs, DOC_SCHEMA, path)


def write_drops(drops: list[Drop], path: Path) -> None:
    _write(drops, DROP_SCHEMA, path)


def read_docs(path: Path) -> list[Doc]:
    names = [f.name for f in fields(Doc)]
    return [Doc(**{k: row[k] for k in names}) for row in pq.read_table(path).to_pylist()]


def write_signals(signals: dict[str, dict[str, float]], path: Path) -> None:
    """Per-document measures (one column each, the document's id first) of a step that takes them."""
    names = sorted({name for values in signals.values() for name in values})
    rows = [{"id": doc_id, **{n: values.get(n) for n in names}} for doc_id, values in signals.items()]
    schema = pa.schema([("id", pa.string()), *((n, pa.float64()) for n in names)])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), path, compression="zstd")


def read_drops(path: Path) -> list[Drop]:
    return [Drop(**row) for row in pq.read_table(path).to_pylist()]
