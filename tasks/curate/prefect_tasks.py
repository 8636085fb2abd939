"""The curation steps as cached Prefect tasks, one artifact each.

Per-document steps run once per shard (a few files' worth of documents), so the task runner can fan
them out (threads feeding a process pool here, Dask workers on a cluster); the steps that need the
whole corpus (dedup clustering, tokenizer training, the final report) run once. A per-document task
builds its step from the typed config (`QualityStep(cfg)`, ...) and sends the step object to the
pool with its shard (`work.run_step`), which writes `docs.parquet` (kept documents) and
`drops.parquet` (removed documents with their reason) into the task's artifact folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from prefect import task

from smolforge.artifacts import ArtifactRef, stable_hash
from smolforge.parallel import run_cpu
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step
from smolforge.tasks.curate import dataset, dataset_card, dedup, pack, stats, tokenizer, work
from smolforge.tasks.curate.config import (
    DatasetConfig,
    DedupConfig,
    ExtractConfig,
    LanguageConfig,
    PackConfig,
    PIIConfig,
    QualityConfig,
    SourceConfig,
    TokenizerConfig,
)
from smolforge.tasks.curate.documents import read_docs, read_drops, write_drops
from smolforge.tasks.curate.langid import LanguageStep
from smolforge.tasks.curate.pii import PIIStep
from smolforge.tasks.curate.quality import QualityStep
from smolforge.tasks.curate.sample_corpus import build_sample_corpus
from smolforge.tasks.curate.sources import InputFile, discover  # noqa: F401 - the flow discovers inputs through this module

DOCS, DROPS = work.DOCS, work.DROPS




# --- the tasks ------------------------------------------------------------------------------------

_CODE = Path(__file__).parent


@artifact_step("extracted", code=(_CODE / "extract.py", _CODE / "documents.py", _CODE / "work.py"))
def extract_shard(out: Path, source: SourceConfig, files: list[InputFile], cfg: ExtractConfig, runtime: Runtime) -> dict:
    """Main text out of HTML, PDF, WARC, text and JSONL files; unreadable files are dropped with a reason."""
    pairs = [(str(Path(f.root) / f.rel), f.rel) for f in files]
    return run_cpu(runtime.workers, work.extract_files, pairs, source, cfg, str(out))


@artifact_step("language", code=(_CODE / "langid.py", _CODE / "work.py"))
def language_shard(out: Path, shard: ArtifactRef, cfg: LanguageConfig, declared: str | None, runtime: Runtime) -> dict:
    """fastText lid.176: keep the configured languages above the score threshold."""
    return run_cpu(runtime.workers, work.run_step, LanguageStep(cfg, declared), str(shard.path), str(out))


@artifact_step("quality", code=(_CODE / "quality.py", _CODE / "words.py", _CODE / "work.py"))
def quality_shard(out: Path, shard: ArtifactRef, cfg: QualityConfig, runtime: Runtime) -> dict:
    """Gopher repetition and quality, C4 and FineWeb rules (datatrove's, on data computed once per document)."""
    return run_cpu(runtime.workers, work.run_step, QualityStep(cfg), str(shard.path), str(out))


@artifact_step("pii", code=(_CODE / "pii.py", _CODE / "work.py"))
def pii_shard(out: Path, shard: ArtifactRef, cfg: PIIConfig, runtime: Runtime) -> dict:
    """Mask e-mail and public IP addresses."""
    return run_cpu(runtime.workers, work.run_step, PIIStep(cfg), str(shard.path), str(out))


@artifact_step("minhash", code=(_CODE / "dedup.py", _CODE / "words.py", _CODE / "work.py"))
def minhash_shard(out: Path, shard: ArtifactRef, settings: dedup.SignatureSettings, runtime: Runtime) -> dict:
    """Exact-text keys and MinHash bucket signatures of one shard."""
    return run_cpu(runtime.workers, work.minhash_signatures, settings, str(shard.path), str(out))


@artifact_step("dedup_plan", code=(_CODE / "dedup.py",))
def dedup_plan(
    out: Path, signatures: list[ArtifactRef], against: list[InputFile], cfg: DedupConfig, runtime: Runtime
) -> dict:
    """Cluster the whole corpus (and earlier indexes) and decide which documents are duplicates.

    Also saves this corpus's own index, which a later run lists in `dedup.against`."""
    sigs = [dedup.load_signatures(ref.path / "signatures.npz") for ref in signatures]
    index = None
    for entry in against:
        loaded = dedup.DedupIndex.load(Path(entry.root) / entry.rel)
        index = loaded if index is None else index.merge(loaded)
    found = dedup.find_duplicates(sigs, index=index, exact=cfg.exact, minhash=cfg.minhash)
    (out / "duplicates.json").write_text(json.dumps(found, sort_keys=True), encoding="utf-8")
    dedup.DedupIndex.from_signatures(sigs, name=stable_hash([r.key for r in signatures])).save(out / "index")
    reasons: dict[str, int] = {}
    for reason, _ in found.values():
        reasons[reason] = reasons.get(reason, 0) + 1
    return {"duplicates": len(found), "reasons": reasons}


@artifact_step("deduped", code=(_CODE / "dedup.py",))
def dedup_shard(out: Path, shard: ArtifactRef, plan: ArtifactRef, runtime: Runtime) -> dict:
    """Drop the documents the plan marked as duplicates from one shard."""
    docs = read_docs(shard.path / DOCS)
    found = {k: tuple(v) for k, v in json.loads((plan.path / "duplicates.json").read_text()).items()}
    result = dedup.apply_duplicates(docs, found)
    work.write_result(out, result)
    return stats.shard_metrics(len(docs), stats.doc_chars(docs), result)


def _iter_texts(shards: list[ArtifactRef]):
    for ref in shards:
        for doc in read_docs(ref.path / DOCS):
            yield doc.text


@artifact_step("tokenizer", code=(_CODE / "tokenizer.py",))
def tokenizer_task(out: Path, shards: list[ArtifactRef], cfg: TokenizerConfig, runtime: Runtime) -> dict:
    """Train a byte-level BPE on the curated text, or adopt an existing tokenizer."""
    if cfg.pretrained:
        tok = tokenizer.load_tokenizer(cfg.pretrained)
        tok.save_pretrained(out)
        return {"vocab_size": len(tok), "pretrained": cfg.pretrained}
    info = tokenizer.train_tokenizer(
        _iter_texts(shards), vocab_size=cfg.vocab_size, out_dir=out, min_frequency=cfg.min_frequency
    )
    return {"pretrained": None, **info}


@artifact_step("tokens", code=(_CODE / "pack.py",))
def pack_task(
    out: Path, source: str, shards: list[ArtifactRef], tokenizer_ref: ArtifactRef, cfg: PackConfig, runtime: Runtime
) -> dict:
    """Token shards of one source with end-of-document tokens, boundaries and a validation split."""
    tok = tokenizer.load_tokenizer(str(tokenizer_ref.path))
    docs = (doc for ref in shards for doc in read_docs(ref.path / DOCS))
    return pack.pack_documents(docs, tok, out, val_fraction=cfg.val_fraction, seed=cfg.seed)


@artifact_step("dataset", code=(_CODE / "dataset.py",))
def dataset_task(
    out: Path,
    shards: dict[str, list[ArtifactRef]],
    plan: ArtifactRef,
    packed: dict[str, ArtifactRef],
    measured: list[ArtifactRef],
    cfg: DatasetConfig,
    runtime: Runtime,
) -> dict:
    """The kept documents of every source as bounded Parquet files, sorted by source then id, with
    their token counts, duplicate clusters and the measures the `measured` step artifacts took of
    them (the corpus links the files into its `dataset/`)."""
    duplicates = json.loads((plan.path / "duplicates.json").read_text(encoding="utf-8"))
    files = {source: [ref.path / DOCS for ref in refs] for source, refs in shards.items()}
    folders = {source: ref.path for source, ref in packed.items()}
    signals = [ref.path / work.SIGNALS for ref in measured if (ref.path / work.SIGNALS).is_file()]
    profile = dataset.write_dataset(out, files, folders, duplicates, signals, cfg.max_file_mb, cfg.row_group_mb)
    return {k: profile[k] for k in ("rows", "chars", "tokens", "files", "bytes")}


def _step_settings(steps: dict[str, list[ArtifactRef]], plan: ArtifactRef, tokenizer_ref: ArtifactRef, packed: dict[str, ArtifactRef]) -> dict:
    """The configuration each step ran with, read back from its artifacts (so the card says what
    made the corpus, not what a config file says now)."""
    settings: dict = {"sources": {}}
    for ref in steps.get("extract", []):
        config = ref.manifest()["config"]
        settings["sources"][config["source"]["name"]] = config["source"]
    firsts = {step: refs[0] for step, refs in steps.items() if refs and step != "dedup"}
    firsts.update({"dedup": plan, "tokenizer": tokenizer_ref, **({"pack": next(iter(packed.values()))} if packed else {})})
    for step, ref in firsts.items():
        settings[step] = ref.manifest()["config"].get("cfg")
    return settings


@artifact_step("corpus", code=(_CODE / "stats.py", _CODE / "dataset_card.py"))
def corpus_task(
    out: Path,
    steps: dict[str, list[ArtifactRef]],
    plan: ArtifactRef,
    tokenizer_ref: ArtifactRef,
    packed: dict[str, ArtifactRef],
    documents: ArtifactRef,
    runtime: Runtime,
) -> dict:
    """The curated corpus: token shards per source, tokenizer, dedup index, statistics, the list of
    every dropped document with its reason, and the kept documents as a dataset with its card."""
    per_step = {step: stats.add_up([ref.manifest()["metrics"] for ref in refs]) for step, refs in steps.items()}
    per_source: dict[str, dict[str, Any]] = {}
    for name, ref in packed.items():
        meta = ref.manifest()["metrics"]
        per_source[name] = {"uri": ref.uri, **meta}
    tokens = sum(m.get("train", {}).get("n_tokens", 0) + m.get("val", {}).get("n_tokens", 0) for m in per_source.values())
    rows = stats.funnel_rows(per_step, tokens)
    drops = [d for refs in steps.values() for ref in refs for d in read_drops(ref.path / DROPS)]
    write_drops(drops, out / "dropped.parquet")
    shutil.copytree(plan.path / "index", out / "dedup_index")
    stats.plot_funnel(rows, out / "funnel.png")
    report = {
        "funnel": rows,
        "steps": per_step,
        "sources": per_source,
        "tokenizer": tokenizer_ref.uri,
        "languages": per_step.get("dedup", {}).get("languages", {}),
        "tokens": tokens,
    }
    (out / "corpus.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    folder = out / dataset.FOLDER
    dataset.link_dataset(documents.path, folder)
    title = "smolforge curated corpus: " + ", ".join(sorted(packed))
    dataset_card.write_card(folder, dataset.read_profile(folder), title, report, _step_settings(steps, plan, tokenizer_ref, packed))
    return {"documents": rows[-1]["docs_out"] if rows else 0, "tokens": tokens, "dropped": len(drops)}


@task(name="sample-corpus")
def sample_corpus_task(dest: str, scale: int) -> dict[str, Any]:
    """Assemble the offline sample corpus (idempotent: an existing complete copy is reused)."""
    return build_sample_corpus(Path(dest), scale=scale)
