"""What a shard task sends to the worker pool: plain functions of typed steps and file paths.

No Prefect here: a cold pool worker imports this module (to unpickle the function) and the
step's own module, never the task module, which imports Prefect (≈ 2 s of a worker's start-up).
Each function reads its input shard, runs the step, writes `docs.parquet` (kept documents),
`drops.parquet` (removed documents with their reason) and, for a step that measures documents,
`signals.parquet` (a column per measure) into `out`, and returns the shard's metrics.
"""

from __future__ import annotations

from pathlib import Path

from smolforge.tasks.curate import dedup, extract, stats
from smolforge.tasks.curate.config import ExtractConfig, SourceConfig
from smolforge.tasks.curate.documents import Step, StepResult, read_docs, write_docs, write_drops, write_signals

DOCS, DROPS, SIGNALS = "docs.parquet", "drops.parquet", "signals.parquet"


def write_result(out: Path, result: StepResult) -> None:
    write_docs(result.kept, out / DOCS)
    write_drops(result.dropped, out / DROPS)
    if result.signals:
        write_signals(result.signals, out / SIGNALS)


def extract_files(files: list[tuple[str, str]], source: SourceConfig, cfg: ExtractConfig, out: str) -> dict:
    """The funnel's mouth: (absolute path, relative path) pairs of one source in, documents out."""
    result = extract.extract_files(
        files, source.kind, source.name,
        max_chars=cfg.max_chars, min_chars=cfg.min_chars, text_field=cfg.text_field, ocr=cfg.ocr,
    )
    write_result(Path(out), result)
    chars_in = sum(len(d.text) for d in result.kept) + sum(d.chars for d in result.dropped)
    return stats.shard_metrics(len(result.kept) + len(result.dropped), chars_in, result, files=len(files))


def run_step(step: Step, shard: str, out: str) -> dict:
    """Any per-document step on the documents of the shard folder `shard`."""
    docs = read_docs(Path(shard) / DOCS)
    docs_in, chars_in = len(docs), stats.doc_chars(docs)
    result = step.run(docs)
    write_result(Path(out), result)
    return stats.shard_metrics(docs_in, chars_in, result, **result.counters)


def minhash_signatures(settings: dedup.SignatureSettings, shard: str, out: str) -> dict:
    docs = read_docs(Path(shard) / DOCS)
    dedup.save_signatures(settings.signatures(docs), Path(out) / "signatures.npz")
    return {"docs": len(docs)}
