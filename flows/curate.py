"""The curation flow (FineWeb / FinePDFs style): raw files in, a curated, tokenized corpus out.

extract -> language -> quality -> pii -> dedup (signatures, plan, apply) -> tokenizer -> pack -> dataset -> corpus

Shards move through the per-document steps independently (a shard's language step starts as soon
as its extraction is done); the flow body only wires futures together and then logs the result.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path
from typing import Any

from prefect import flow
from prefect.futures import PrefectFuture

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, file_hash, find_artifact
from smolforge.environment import project_home
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.results import CurateResult, PipelineResult
from smolforge.progress import wait_with_progress
from smolforge.runners import task_runner_for
from smolforge.runtime import Runtime
from smolforge.tasks.curate import prefect_tasks as t
from smolforge.tasks.curate.dedup import SignatureSettings
from smolforge.tasks.curate.sources import InputFile, discover


def _index_inputs(against: list[str], runtime: Runtime) -> list[InputFile]:
    """Earlier dedup indexes, named by folder or by the key of the corpus that holds one."""
    found = []
    for entry in against:
        corpus = find_artifact(runtime.store, f"corpus:{entry}")
        candidates = [Path(entry).expanduser(), Path(entry).expanduser() / "dedup_index"]
        folder = next(
            (
                c
                for c in [*candidates, *([corpus.path / "dedup_index"] if corpus else [])]
                if (c / "meta.json").is_file() and (c / "index.npz").is_file()
            ),
            None,
        )
        if folder is None:
            raise ConfigError(
                f"curate.dedup.against: {entry!r} is neither a dedup index folder nor the key of a corpus in {runtime.root}"
            )
        digest = file_hash(folder / "index.npz")
        found.append(InputFile(rel=folder.name, xxh3=digest, root=str(folder.parent)))
    return found


class _Stopwatch:
    """Wall time of each phase of the flow, returned with the result (the benchmark reads it)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 3)
        self._last = now


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]



@flow(name="curate", log_prints=True)
def curate(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None) -> CurateResult:
    """Curate the configured sources into token shards; log the funnel to MLflow. (`upstream` is
    there so every stage flow takes the same arguments; curation has none.)"""
    started = time.perf_counter()
    clock = _Stopwatch()
    home = project_home()
    cfg = config.curate
    runtime = config.runtime()
    data_dir = cfg.data_folder(home)
    if cfg.sample_corpus is not None:
        t.sample_corpus_task(str(data_dir), cfg.sample_corpus.scale)

    # Fail on configuration mistakes (a glob matching nothing, a missing index) before any work.
    files = {s.name: discover(s, data_dir) for s in cfg.sources}
    against = _index_inputs(cfg.dedup.against, runtime)
    clock.lap("inputs")

    steps: dict[str, list[PrefectFuture]] = {k: [] for k in ("extract", "language", "quality", "pii", "minhash")}
    by_source: dict[str, list[PrefectFuture]] = {}
    signature_settings = SignatureSettings.of(cfg.dedup)
    for source in cfg.sources:
        for chunk in _chunks(files[source.name], cfg.extract.files_per_shard):
            extracted = t.extract_shard.submit(source, chunk, cfg.extract, runtime)
            identified = t.language_shard.submit(extracted, cfg.language, source.language, runtime)
            filtered = t.quality_shard.submit(identified, cfg.quality, runtime)
            masked = t.pii_shard.submit(filtered, cfg.pii, runtime)
            signed = t.minhash_shard.submit(masked, signature_settings, runtime)
            for name, fut in zip(steps, (extracted, identified, filtered, masked, signed)):
                steps[name].append(fut)
            by_source.setdefault(source.name, []).append(masked)
    wait_with_progress(steps)
    clock.lap("documents")

    plan = t.dedup_plan(steps["minhash"], against, cfg.dedup, runtime)
    deduped = {name: [t.dedup_shard.submit(masked, plan, runtime) for masked in shards] for name, shards in by_source.items()}
    wait_with_progress({"dedup": [f for futs in deduped.values() for f in futs]})
    deduped_refs = {name: [f.result() for f in futs] for name, futs in deduped.items()}
    clock.lap("dedup")

    all_shards = [ref for refs in deduped_refs.values() for ref in refs]
    tokenizer = t.tokenizer_task(all_shards, cfg.tokenizer, runtime)
    clock.lap("tokenizer")
    packed_futs = {name: t.pack_task.submit(name, refs, tokenizer, cfg.pack, runtime) for name, refs in deduped_refs.items()}
    wait_with_progress({"pack": list(packed_futs.values())})
    packed = {name: f.result() for name, f in packed_futs.items()}
    clock.lap("pack")

    documents = t.dataset_task(deduped_refs, plan, packed, [f.result() for f in steps["quality"]], cfg.dataset, runtime)
    clock.lap("dataset")

    step_refs = {name: [f.result() for f in futs] for name, futs in steps.items() if name != "minhash"}
    step_refs["dedup"] = all_shards
    corpus = t.corpus_task(step_refs, plan, tokenizer, packed, documents, runtime)
    report = json.loads((corpus.path / "corpus.json").read_text(encoding="utf-8"))
    clock.lap("report")
    # a corpus this project curated before keeps the run that recorded it: no second, identical run
    earlier = tracking.find_run(config.tracking.experiment, {"smolforge.stage": "curate", "smolforge.corpus_key": corpus.key})
    run_id = earlier or log_curation(config, corpus, report, files, data_dir, parent_run_id)
    clock.lap("mlflow")
    return CurateResult(
        corpus=corpus,
        mlflow_run_id=run_id,
        funnel=report["funnel"],
        drops={step: m.get("drops", {}) for step, m in report["steps"].items() if m.get("drops")},
        seconds=round(time.perf_counter() - started, 2),
        timings=clock.laps,
        cached=earlier is not None,
    )


def corpus_of(config: PipelineConfig, upstream: PipelineResult | None, parent_run_id: str | None) -> ArtifactRef:
    """The corpus the pipeline curated, or (run alone) the one this config curates, from the cache
    when it was made before."""
    if upstream is not None and upstream.curate is not None:
        return upstream.curate.corpus
    return curate.with_options(task_runner=task_runner_for(config.execution))(config, None, parent_run_id).corpus


def log_curation(
    config: PipelineConfig,
    corpus: ArtifactRef,
    report: dict[str, Any],
    files: dict[str, list[InputFile]],
    data_dir: Path,
    parent_run_id: str | None,
) -> str:
    """Params, funnel metrics, the funnel and drop tables, the chart, the dropped-document list, the
    raw inputs and the curated dataset."""
    import mlflow
    import pandas as pd

    from smolforge.tasks.curate import dataset_mlflow  # imports MLflow's dataset classes

    # A local folder matches two of MLflow's dataset-source types and integer columns trigger a
    # schema hint; both warnings are about model signatures we do not use here.
    warnings.filterwarnings("ignore", message="The specified dataset source can be interpreted")
    warnings.filterwarnings("ignore", message="Hint: Inferred schema contains integer")
    with tracking.run("curate", config.tracking.experiment, parent_run_id, tags={"smolforge.corpus_key": corpus.key}) as active:
        tracking.log_params({"curate": config.curate.model_dump(mode="json"), "execution": config.execution.model_dump()})
        metrics: dict[str, float] = {}
        for row in report["funnel"]:
            for field in ("docs_in", "docs_out", "dropped", "chars_in", "chars_out", "tokens_out"):
                if row.get(field) is not None:
                    metrics[tracking.metric_name(row["step"], field)] = row[field]
        for lang, n in report.get("languages", {}).items():
            metrics[tracking.metric_name("language", lang)] = n
        for source, meta in report["sources"].items():
            for split in ("train", "val"):
                metrics[tracking.metric_name("tokens", source, split)] = meta.get(split, {}).get("n_tokens", 0)
        mlflow.log_metrics(metrics)
        mlflow.log_table(pd.DataFrame(report["funnel"]), "curation/funnel.json")
        # Drop counts are one number each per run: a table row, not a single-point metric chart.
        drops = [
            {"step": step, "reason": reason, "documents": n}
            for step, m in report["steps"].items()
            for reason, n in sorted(m.get("drops", {}).items(), key=lambda kv: (-kv[1], kv[0]))
        ]
        mlflow.log_table(pd.DataFrame(drops, columns=["step", "reason", "documents"]), "curation/drops.json")
        for name in ("funnel.png", "corpus.json", "dropped.parquet"):
            mlflow.log_artifact(str(corpus.path / name), "curation")
        for source, inputs in files.items():
            frame = pd.DataFrame([{"path": f.rel, "xxh3": f.xxh3} for f in inputs])
            raw = mlflow.data.from_pandas(frame, source=str(data_dir), name=f"raw-{source}")
            mlflow.log_input(raw, context="raw")
        dataset_mlflow.log_dataset(corpus, context="curated")
        return active.info.run_id
