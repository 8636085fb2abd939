"""Dataset benchmark: what writing the corpus's dataset costs curation, and how fast it reads back.

    python bench/dataset.py [--scale 4] [--repeats 3] [--workers 2] [--text-mb 64] [--reads 5] [--corpus DIR] [--quick]

1. Share of curation. The `curate` flow (every source of the tiny preset, PDFs included, on the
   offline sample corpus at `--scale`) runs `--repeats` times, each on a fresh project folder (cold
   artifact store and worker pool). The flow's `dataset` phase (the Parquet files, sorted, with
   token counts, clusters and measures) is reported against the flow's whole `seconds`.
   Target: <= 5 % at scale 4.
2. Reading back. The curated dataset's rows are repeated until they hold at least `--text-mb` MB of
   text, each copy with unique ids and its letters shifted (a Caesar shift per copy, so Parquet's
   compression cannot shrink the copies to references to the first), written once with the
   corpus's own Parquet writer and once as JSONL (pandas). After one untimed read of each kind
   (imports, first-use set-up), alternated `--reads` times: `datasets.load_dataset("parquet", ...)` into a fresh
   cache folder (so every read converts the files again, none is served from an earlier one), and
   `pandas.read_json(lines=True)` of the same rows; pandas' `read_parquet` is timed beside them for
   reference. Target: `datasets` at least as fast as JSONL with pandas (ratio >= 1).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from curation import log, machine, prepare_environment, shut_down, versions  # bench/, beside this script
from quickmode import parse_args

EXPERIMENT = "smolforge-bench-dataset"
SHARE_TARGET = 0.05


class BenchError(RuntimeError):
    """A benchmark that cannot run or produced something unusable; the message says why."""


def curation_config(corpus: Path, workers: int):
    """The tiny preset's curation (every source) on `corpus`; the later stages off."""
    from smolforge.flows.config import STAGES, load_config

    preset = load_config("tiny")
    later = [f"{s.name}=null" for s in STAGES if s.name != "curate" and getattr(preset, s.name) is not None]
    return load_config(
        "tiny",
        overrides=[
            *later, "curate.sample_corpus=null", f"curate.data_dir={json.dumps(str(corpus))}", "execution.runner=local",
            f"execution.workers={workers}", f"tracking.experiment={EXPERIMENT}",
        ],
    )


def share_of_curation(cfg, root: Path, repeats: int) -> tuple[list[dict[str, Any]], Path]:
    """Each repeat's flow seconds and dataset phase; the last run's dataset folder."""
    from smolforge import parallel
    from smolforge.flows.curate import curate
    from smolforge.runners import task_runner_for

    runs, folder = [], None
    for i in range(repeats):
        os.environ["SMOLFORGE_HOME"] = str(root / f"home-{i}")
        parallel.shutdown()  # a cold worker pool, as in a fresh `smolforge run curate`
        result = curate.with_options(task_runner=task_runner_for(cfg.execution))(cfg)
        folder = result.corpus.path / "dataset"
        profile = json.loads((folder / "profile.json").read_text())
        runs.append({"seconds": result.seconds, "dataset": result.timings["dataset"], "rows": profile["rows"], "bytes": profile["bytes"]})
        log(f"  curation {i + 1}/{repeats}: {result.seconds:.1f} s, dataset phase {result.timings['dataset']:.2f} s")
    return runs, folder


def _shift(n: int) -> dict[int, str]:
    """A Caesar shift of the ASCII letters by `n`: copy n's text differs from copy 0's almost everywhere."""
    lower, upper = "abcdefghijklmnopqrstuvwxyz", "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    k = n % 26
    return str.maketrans(lower + upper, lower[k:] + lower[:k] + upper[k:] + upper[:k])


def inflated_copy(folder: Path, out: Path, text_mb: int) -> dict[str, Any]:
    """The dataset's rows repeated (ids `<id>~<n>`, letters shifted by n) until they hold `text_mb`
    MB of text, as the corpus's Parquet files and as one JSONL file of the same rows."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from smolforge.tasks.curate import dataset

    table = dataset.open_dataset(folder).to_table()
    text_bytes = int(pc.sum(pc.binary_length(table.column("text"))).as_py() or 0)
    if text_bytes == 0:
        raise BenchError(f"the curated dataset in {folder} holds no text")
    copies = -(-text_mb * 1_000_000 // text_bytes)
    writer = dataset.PartWriter(out / "parquet" / "data", 256, 32)
    jsonl = out / "jsonl" / "train.jsonl"
    jsonl.parent.mkdir(parents=True)
    with open(jsonl, "w", encoding="utf-8") as f:
        for n in range(copies):
            ids = pc.binary_join_element_wise(table.column("id"), pa.scalar(str(n)), "~")
            shifted = pa.array([t.translate(_shift(n)) for t in table.column("text").to_pylist()], pa.large_string())
            copy = table.set_column(0, "id", ids.cast(pa.string())).set_column(1, "text", shifted)
            writer.write(copy)
            f.write(copy.to_pandas().to_json(orient="records", lines=True, force_ascii=False))
    files = writer.close()
    return {
        "rows": len(table) * copies, "text_mb": text_bytes * copies / 1e6, "parquet_files": [str(p) for p in files],
        "parquet_mb": sum(p.stat().st_size for p in files) / 1e6, "jsonl": str(jsonl), "jsonl_mb": jsonl.stat().st_size / 1e6,
    }


def read_back(copy: dict[str, Any], root: Path, reads: int) -> dict[str, list[float]]:
    """Alternated reads of the same rows: datasets (Parquet), pandas (JSONL), pandas (Parquet)."""
    import datasets
    import pandas as pd

    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    times: dict[str, list[float]] = {"datasets parquet": [], "pandas jsonl": [], "pandas parquet": []}

    def timed(name: str, read) -> None:
        t0 = time.perf_counter()
        rows = read()
        times[name].append(time.perf_counter() - t0)
        if rows != copy["rows"]:
            raise BenchError(f"{name} read {rows} rows, {copy['rows']} were written")

    def with_datasets(i: int):
        cache = root / f"hf-cache-{i}"
        rows = len(datasets.load_dataset("parquet", data_files=copy["parquet_files"], split="train", cache_dir=str(cache)))
        shutil.rmtree(cache, ignore_errors=True)
        return rows

    for i in range(-1, reads):  # read -1 warms every reader up, untimed
        order = ["datasets parquet", "pandas jsonl", "pandas parquet"]
        if i % 2:
            order.reverse()
        readers = {
            "datasets parquet": lambda: with_datasets(i),
            "pandas jsonl": lambda: len(pd.read_json(copy["jsonl"], lines=True, dtype=False)),
            "pandas parquet": lambda: len(pd.read_parquet(Path(copy["parquet_files"][0]).parent)),
        }
        for name in order:
            timed(name, readers[name])
        if i < 0:
            for values in times.values():
                values.clear()
            continue
        log(f"  reads {i + 1}/{reads}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()))
    return times


def report(share: list[dict[str, Any]], copy: dict[str, Any], times: dict[str, list[float]], args: argparse.Namespace) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    console.print(f"[bold]Dataset write as a share of curation[/] (sample corpus scale {args.scale}, {args.workers} workers, every source)")
    table = Table()
    for col in ("repeat", "curation s", "dataset phase s", "share", "rows", "Parquet MB"):
        table.add_column(col, justify="right")
    shares = [r["dataset"] / r["seconds"] for r in share]
    for i, (r, s) in enumerate(zip(share, shares), 1):
        table.add_row(str(i), f"{r['seconds']:.1f}", f"{r['dataset']:.2f}", f"{s:.2%}", f"{r['rows']:,}", f"{r['bytes'] / 1e6:.2f}")
    med = statistics.median(shares)
    table.add_row("median", f"{statistics.median(r['seconds'] for r in share):.1f}", f"{statistics.median(r['dataset'] for r in share):.2f}", f"{med:.2%}", "", "")
    console.print(table)
    console.print(f"dataset share of curation: median {med:.2%} (target <= {SHARE_TARGET:.0%}: {'met' if med <= SHARE_TARGET else 'MISSED'})")

    console.print(
        f"\n[bold]Reading back[/] {copy['rows']:,} rows, {copy['text_mb']:.1f} MB of text "
        f"(Parquet {copy['parquet_mb']:.1f} MB in {len(copy['parquet_files'])} file(s), JSONL {copy['jsonl_mb']:.1f} MB), "
        f"{len(times['pandas jsonl'])} alternated reads, medians"
    )
    table = Table()
    for col in ("reader", "median s", "min s", "max s", "MB of text/s"):
        table.add_column(col, justify="left" if col == "reader" else "right")
    for name, values in times.items():
        m = statistics.median(values)
        table.add_row(name, f"{m:.2f}", f"{min(values):.2f}", f"{max(values):.2f}", f"{copy['text_mb'] / m:.0f}")
    console.print(table)
    ratio = statistics.median(times["pandas jsonl"]) / statistics.median(times["datasets parquet"])
    paired = [j / d for j, d in zip(times["pandas jsonl"], times["datasets parquet"])]
    console.print(
        f"pandas jsonl / datasets parquet: [bold]{ratio:.2f}[/] (ratio of medians; per read {', '.join(f'{p:.2f}' for p in paired)}). "
        f"Above 1 = datasets faster (target >= 1: {'met' if ratio >= 1 else 'MISSED'})"
    )
    console.print(f"[dim]{machine()}; {versions()}[/]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=4, help="sample corpus scale (default 4: ~14 MB)")
    parser.add_argument("--repeats", type=int, default=3, help="curation runs (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="curation worker processes (default 2)")
    parser.add_argument("--text-mb", type=int, default=64, help="MB of text read back (default 64)")
    parser.add_argument("--reads", type=int, default=5, help="alternated reads of each reader (default 5)")
    parser.add_argument("--corpus", type=Path, help="build (or reuse) the sample corpus here instead of a temporary folder")
    parser.add_argument("--tmp", type=Path, help="parent folder of the temporary working folder")
    args = parse_args(parser, scale=1, repeats=1, text_mb=2, reads=2)
    if min(args.scale, args.repeats, args.workers, args.text_mb, args.reads) < 1:
        parser.error("--scale, --repeats, --workers, --text-mb and --reads must be positive")

    root = Path(tempfile.mkdtemp(prefix="smolforge-bench-dataset-", dir=args.tmp)).resolve()
    started = time.perf_counter()
    log(f"working folder {root}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        prepare_environment(root)
        from smolforge.tasks.curate.sample_corpus import build_sample_corpus

        corpus = (args.corpus or root / f"corpus-{args.scale}").resolve()
        log(f"sample corpus, scale {args.scale}: {corpus}")
        build_sample_corpus(corpus, scale=args.scale)
        share, folder = share_of_curation(curation_config(corpus, args.workers), root, args.repeats)
        log(f"writing {args.text_mb} MB of text as Parquet and JSONL")
        copy = inflated_copy(folder, root / "read", args.text_mb)
        times = read_back(copy, root, args.reads)
        report(share, copy, times, args)
        log(f"benchmark took {time.perf_counter() - started:.0f}s")
    except BenchError as exc:
        sys.exit(f"benchmark failed: {exc}")
    finally:
        shut_down()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
