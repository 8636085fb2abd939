"""Curation benchmark: smolforge's curate flow against the same steps run by datatrove.

    python bench/curation.py [--scale 4] [--repeats 3] [--workers 2] [--dt-tasks 4] [--kinds html,jsonl] [--quick]

Two measurements, on one offline sample corpus built once at the start:

1. Throughput. smolforge's `curate` flow (the real Prefect flow, local task runner, `workers`
   processes) against `bench/datatrove_side.py` (datatrove's LocalPipelineExecutor, the same
   number of workers): extract -> language -> quality -> PII -> MinHash dedup. smolforge's time is
   the flow's `inputs + documents + dedup` phases; its tokenizer, pack, report and MLflow phases
   have no datatrove counterpart and are left out. Each smolforge repeat uses a fresh project folder
   (fresh artifact store, cold worker pool), each datatrove repeat a fresh output folder and process.
   The sides alternate A B B A A B ... so drift on a shared machine hits both alike.
2. Re-run. Right after each throughput run, the flow runs again on the same project folder with
   nothing changed (everything cached); reported as second/first of the flow's total `seconds`.

PDFs are left out of both sides: datatrove 0.10 has no PDF reader or extractor (see README.md).
"""

from __future__ import annotations

import argparse
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from quickmode import parse_args  # bench/, beside this script

BENCH = Path(__file__).resolve().parent
EXPERIMENT = "smolforge-bench"
SF_PHASES = ("inputs", "documents", "dedup")
SF_EXCLUDED = ("tokenizer", "pack", "report", "mlflow")
_STOPWATCH: Any = None  # the flow's stopwatch class once `instrument_flow` has run


class BenchError(RuntimeError):
    """A benchmark that cannot run or produced something unusable; the message says why."""


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- environment (before Prefect is imported) ----------------------------------------------------


def prepare_environment(root: Path) -> list[str]:
    """Quiet, isolated Prefect and MLflow under `root`; returns the user settings it overrode."""
    overridden = [v for v in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME") if os.environ.get(v)]
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)  # the bench must not log into the user's servers
    os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
    # One Prefect home (database, result records) for the whole run; artifacts move per repeat
    # through SMOLFORGE_HOME, which smolforge reads at call time.
    os.environ["PREFECT_HOME"] = str(root / "prefect")
    os.environ["PREFECT_LOCAL_STORAGE_PATH"] = str(root / "prefect" / "results")
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow' / 'mlflow.db'}"
    (root / "mlflow").mkdir(parents=True)
    from smolforge.environment import configure

    configure(root / "sf-warmup")
    return overridden


# --- smolforge side ------------------------------------------------------------------------------


def pipeline_config(corpus: Path, workers: int, kinds: set[str] | None = None, extra: tuple[str, ...] = ()):
    """The tiny preset on `corpus`, PDF sources removed (or only `kinds`), `workers` processes."""
    from smolforge.flows.config import STAGES, load_config

    preset = load_config("tiny")
    sources = [s.model_dump() for s in preset.curate.sources if s.kind != "pdf"]
    if kinds is not None:
        sources = [s for s in sources if s["kind"] in kinds]
    # Only curation is measured; the later stages' sections (their mixtures name the removed
    # sources) are turned off.
    later = [f"{s.name}=null" for s in STAGES if s.name != "curate" and getattr(preset, s.name) is not None]
    return load_config(
        "tiny",
        overrides=[
            *later,
            "curate.sample_corpus=null",
            f"curate.data_dir={json.dumps(str(corpus))}",
            f"curate.sources={json.dumps(sources)}",
            "execution.runner=local",
            f"execution.workers={workers}",
            f"tracking.experiment={EXPERIMENT}",
            *extra,
        ],
    )


def _tree_cpu_seconds() -> float:
    """CPU time of this process and its live children (Prefect's server, the worker pool); NaN
    without psutil (a dependency of pymupdf, so normally installed)."""
    try:
        import psutil
    except ImportError:
        return float("nan")

    me = psutil.Process()
    total = sum(me.cpu_times()[:2])
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def instrument_flow() -> None:
    """Measurement hooks on the flow module; the work itself is untouched.

    * The flow's phase stopwatch also reads the CPU time of the process tree at each lap, so the
      CPU seconds of the timed phases are known, not only their wall time.
    * Progress bars off (the path taken when stderr is not a terminal): this script prints its own.
    """
    import smolforge.flows.curate as module

    global _STOPWATCH
    if not hasattr(module, "_Stopwatch") or not hasattr(module, "wait_with_progress"):
        raise BenchError("smolforge.flows.curate no longer has _Stopwatch/wait_with_progress: update instrument_flow")

    class CpuStopwatch(module._Stopwatch):
        last: CpuStopwatch | None = None

        def __init__(self) -> None:
            super().__init__()
            self.cpu_laps: dict[str, float] = {}
            self._cpu = _tree_cpu_seconds()
            CpuStopwatch.last = self

        def lap(self, name: str) -> None:
            super().lap(name)
            now = _tree_cpu_seconds()
            self.cpu_laps[name] = round(now - self._cpu, 2)
            self._cpu = now

    module._Stopwatch = CpuStopwatch
    module.wait_with_progress = lambda groups, poll=0.2: [f.wait() for fs in groups.values() for f in fs]
    _STOPWATCH = CpuStopwatch


def run_flow(cfg) -> tuple[Any, dict[str, Any]]:
    """The flow's typed result, and what the bench measures around it (wall time, CPU per phase)."""
    from smolforge.flows.curate import curate
    from smolforge.runners import task_runner_for

    wall = time.perf_counter()
    result = curate.with_options(task_runner=task_runner_for(cfg.execution))(cfg)
    measured = {
        "wall": round(time.perf_counter() - wall, 3),  # with Prefect's flow-run set-up around the body
        "cpu_timings": _STOPWATCH.last.cpu_laps,
    }
    return result, measured


def smolforge_kept_ids(home: Path) -> list[str]:
    import pyarrow.parquet as pq

    ids: list[str] = []
    for path in sorted((home / "artifacts" / "deduped").glob("*/docs.parquet")):
        ids.extend(pq.read_table(path, columns=["id"]).column("id").to_pylist())
    return sorted(ids)


def smolforge_repeat(cfg, home: Path) -> dict[str, Any]:
    """One cold run on a fresh project folder, then the same run again with nothing changed."""
    from smolforge import parallel

    home.mkdir(parents=True)
    os.environ["SMOLFORGE_HOME"] = str(home)
    parallel.shutdown()  # a cold worker pool, as in a fresh `smolforge run curate`
    first, first_m = run_flow(cfg)
    second, second_m = run_flow(cfg)
    if second.corpus.key != first.corpus.key:
        raise BenchError("the re-run produced another corpus: something in the flow is not deterministic")
    funnel = {row["step"]: row for row in first.funnel}
    return {
        "timings": first.timings,
        "seconds": first.seconds,
        "phases_s": round(sum(first.timings[p] for p in SF_PHASES), 3),
        "cpu": round(sum(first_m["cpu_timings"][p] for p in SF_PHASES), 2),
        "cpu_timings": first_m["cpu_timings"],
        "rerun_seconds": second.seconds,
        "wall": first_m["wall"],
        "rerun_wall": second_m["wall"],
        "rerun_timings": second.timings,
        "funnel": {step: funnel[step]["docs_out"] for step in ("extract", "language", "quality", "pii", "dedup")},
        "docs_in": funnel["extract"]["docs_in"],
        "kept_ids": smolforge_kept_ids(home),
    }


# --- datatrove side ------------------------------------------------------------------------------


def datatrove_repeat(corpus: Path, work: Path, settings: Path, workers: int, tasks: int, logfile: Path) -> dict[str, Any]:
    """`datatrove_side.py` in a child process (own session, so a failure can end all of it)."""
    cmd = [
        sys.executable, str(BENCH / "datatrove_side.py"), "--corpus", str(corpus), "--work", str(work),
        "--workers", str(workers), "--tasks", str(tasks), "--settings", str(settings), "--ids",
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with open(logfile, "ab") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, cwd=work.parent, start_new_session=True)
        try:
            out, _ = proc.communicate(timeout=3600)
        except BaseException:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            proc.wait()
            raise
    line = next((ln for ln in out.decode().splitlines() if ln.startswith("DATATROVE_RESULT ")), None)
    if proc.returncode != 0 or line is None:
        tail = logfile.read_text(errors="replace").splitlines()[-25:]
        raise BenchError(f"datatrove side failed (exit {proc.returncode}); last lines of {logfile}:\n" + "\n".join(tail))
    return json.loads(line.split(" ", 1)[1])


def datatrove_funnel(counts: dict[str, list[dict]], kept: int) -> dict[str, int | None]:
    """Documents out of each smolforge-named step, from datatrove's per-step stats."""
    steps = counts.get("filter+signatures", [])

    def forwarded(match: str) -> int | None:
        rows = [r for r in steps if match in r["step"]]
        return rows[-1].get("forwarded", rows[-1].get("total")) if rows else None

    quality = [r for r in steps if "(per language)" in r["step"]]
    return {
        "extract": forwarded("Extract rules"),
        "language": forwarded("Language"),
        "quality": quality[-1].get("forwarded") if quality else forwarded("Language"),
        "pii": forwarded("PII"),
        "dedup": kept,
    }


# --- report --------------------------------------------------------------------------------------


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _spread(values: list[float]) -> str:
    return f"{min(values):.1f}–{max(values):.1f}" if values else ""


def machine() -> str:
    model = ""
    try:
        model = next(
            (ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")),
            "",
        )
    except OSError:
        pass
    cpu = f" ({model})" if model else ""
    return f"{platform.system()} {platform.machine()}, {os.cpu_count()} cores{cpu}, Python {platform.python_version()}"


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for pkg in ("smolforge", "datatrove", "prefect", "mlflow", "trafilatura", "spacy"):
        try:
            parts.append(f"{pkg} {version(pkg)}")
        except PackageNotFoundError:
            pass
    return ", ".join(parts)


def report(results: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=120)
    sf, dt = results["smolforge"], results["datatrove"]
    docs, mb = results["input_docs"], results["input_bytes"] / 1e6
    sf_t = [r["phases_s"] for r in sf]
    dt_t = [r["timings"]["total"] for r in dt]
    paired = [d / s for s, d in zip(sf_t, dt_t)]

    console.print(
        f"[bold]Throughput[/]: {docs} input documents, {mb:.1f} MB ({results['kinds']}; sample corpus scale "
        f"{results['scale']}), {results['workers']} workers, {len(sf_t)} repeats of each side, medians"
    )
    table = Table()
    for col in ("side", "what is timed", "seconds", "min–max", "docs/s", "MB/s", "CPU s*", "docs kept"):
        table.add_column(col, justify="left" if col in ("side", "what is timed") else "right")
    table.add_row(
        "smolforge", "flow phases inputs+documents+dedup", f"{_median(sf_t):.1f}", _spread(sf_t),
        f"{docs / _median(sf_t):.1f}", f"{mb / _median(sf_t):.3f}", f"{_median([r['cpu'] for r in sf]):.0f}",
        str(sf[0]["funnel"]["dedup"]),
    )
    table.add_row(
        "datatrove", f"4 executor stages, {results['dt_tasks']} tasks", f"{_median(dt_t):.1f}", _spread(dt_t),
        f"{docs / _median(dt_t):.1f}", f"{mb / _median(dt_t):.3f}", f"{_median([r['cpu'] for r in dt]):.0f}",
        str(dt[0]["kept"]),
    )
    console.print(table)
    console.print(
        "[dim]* CPU seconds of every process during the timed part: smolforge's main process, worker pool "
        "and Prefect server; datatrove's executor processes and Trafilatura sandboxes (sampled every 0.1 s)[/]"
    )
    ratio = _median(dt_t) / _median(sf_t)
    cpu_ratio = _median([r["cpu"] for r in dt]) / _median([r["cpu"] for r in sf])
    console.print(
        f"smolforge/datatrove throughput: [bold]{ratio:.2f}[/] (ratio of medians); per repeat "
        f"{', '.join(f'{p:.2f}' for p in paired)} (median {_median(paired):.2f}); "
        f"fastest runs {min(dt_t) / min(sf_t):.2f}. Above 1 = smolforge faster.\n"
        f"CPU seconds datatrove/smolforge: {cpu_ratio:.2f} (less sensitive to the machine's noise than wall time)."
    )
    console.print(
        "smolforge phases not timed (datatrove does no such work), medians: "
        + ", ".join(f"{p} {_median([r['timings'][p] for r in sf]):.1f}s" for p in SF_EXCLUDED)
        + "\nsmolforge timed phases, medians: "
        + ", ".join(f"{p} {_median([r['timings'][p] for r in sf]):.1f}s" for p in SF_PHASES)
        + "\ndatatrove stages, medians: "
        + ", ".join(f"{k} {_median([r['timings'][k] for r in dt]):.1f}s" for k in dt[0]["timings"] if k != "total")
    )

    console.print("\n[bold]Documents out of each step[/] (first repeat)")
    funnel = Table()
    for col in ("step", "smolforge", "datatrove"):
        funnel.add_column(col, justify="left" if col == "step" else "right")
    dtf = datatrove_funnel(dt[0]["counts"], dt[0]["kept"])
    for step in ("extract", "language", "quality", "pii", "dedup"):
        funnel.add_row(step, str(sf[0]["funnel"][step]), str(dtf[step]))
    console.print(funnel)
    a, b = set(sf[0]["kept_ids"]), set(dt[0]["kept_ids"])
    console.print(
        f"kept by both: {len(a & b)}; only smolforge: {len(a - b)} {sorted(a - b)[:5]}; "
        f"only datatrove: {len(b - a)} {sorted(b - a)[:5]}"
    )
    console.print(
        "[bold]identical[/] documents out of every step and kept ids, both sides, every repeat"
        if not results["differences"]
        else "[bold red]NOT identical[/]: " + "; ".join(results["differences"])
    )

    first = [r["seconds"] for r in sf]
    second = [r["rerun_seconds"] for r in sf]
    rr = [s / f for f, s in zip(first, second)]
    console.print("\n[bold]Re-run with nothing changed[/] (same project folder, same process): flow `seconds`")
    rerun = Table()
    walls = [(r["wall"], r["rerun_wall"]) for r in sf]
    for col in ("", "first run s", "second run s", "second/first", "same, wall incl. flow-run set-up"):
        rerun.add_column(col, justify="right")
    for i, (f, s, r, (wf, ws)) in enumerate(zip(first, second, rr, walls), 1):
        rerun.add_row(f"repeat {i}", f"{f:.1f}", f"{s:.2f}", f"{r:.1%}", f"{ws:.2f}/{wf:.1f} = {ws / wf:.1%}")
    rerun.add_row(
        "[bold]median", f"{_median(first):.1f}", f"{_median(second):.2f}", f"[bold]{_median(rr):.1%}",
        f"{_median([ws / wf for wf, ws in walls]):.1%}",
    )
    console.print(rerun)
    console.print(
        "second run, medians by phase: "
        + ", ".join(f"{p} {_median([r['rerun_timings'][p] for r in sf]):.2f}s" for p in (*SF_PHASES, *SF_EXCLUDED))
    )
    console.print(f"[dim]{results['date']} · {results['machine']}\n{results['versions']}[/]")


# --- main ----------------------------------------------------------------------------------------


def input_size(cfg) -> int:
    data_dir = Path(cfg.curate.data_dir)
    return sum(
        os.path.getsize(p)
        for s in cfg.curate.sources
        for p in glob.glob(str(data_dir / s.path), recursive=True)
        if os.path.isfile(p)
    )


def settle_prefect() -> None:
    """Let Prefect's temporary server take the last events before it stops with this process
    (as `smolforge run` does); otherwise it prints cancelled-task tracebacks on the way out."""
    try:
        from prefect.events.worker import EventsWorker

        EventsWorker.drain_all(timeout=10)
        time.sleep(1.5)
    except Exception:  # noqa: BLE001 - cosmetic only
        pass


def shut_down() -> None:
    """Stop the worker pool and let Prefect's temporary server settle, whatever the bench got to."""
    if "smolforge.parallel" in sys.modules:
        sys.modules["smolforge.parallel"].shutdown()
    if "prefect" in sys.modules:
        settle_prefect()


def bench(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    overridden = prepare_environment(root)
    if overridden:
        log(f"ignoring {', '.join(overridden)} from the environment: the benchmark uses its own Prefect and MLflow")
    import logging

    import mlflow

    from smolforge.tasks.curate.sample_corpus import build_sample_corpus

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)

    mlflow.set_tracking_uri(os.environ["MLFLOW_TRACKING_URI"])
    mlflow.create_experiment(EXPERIMENT, artifact_location=(root / "mlflow" / "artifacts").as_uri())

    corpus = (args.corpus or root / f"corpus-{args.scale}").resolve()
    log(f"sample corpus, scale {args.scale}: {corpus}")
    t0 = time.perf_counter()
    build_sample_corpus(corpus, scale=args.scale)
    log(f"  ready in {time.perf_counter() - t0:.1f}s")

    cfg = pipeline_config(corpus, args.workers, set(args.kinds.split(",")) if args.kinds else None)
    settings = root / "curate-settings.json"
    settings.write_text(json.dumps(cfg.curate.model_dump(mode="json"), indent=1))
    kinds = ", ".join(s.kind for s in cfg.curate.sources)

    instrument_flow()

    log("warm-up: one small untimed flow run (starts Prefect's temporary server, loads MLflow)")
    t0 = time.perf_counter()
    # (a vocabulary the little warm-up text can fill, so the tokenizer step does not warn)
    run_flow(pipeline_config(corpus, args.workers, kinds={"jsonl"}, extra=("curate.tokenizer.vocab_size=2048",)))
    log(f"  done in {time.perf_counter() - t0:.1f}s")

    results: dict[str, Any] = {"smolforge": [], "datatrove": []}
    dt_log = root / "datatrove.log"
    total = 2 * args.repeats
    n = 0
    for i in range(args.repeats):
        order = ("smolforge", "datatrove") if i % 2 == 0 else ("datatrove", "smolforge")
        for side in order:
            n += 1
            t0 = time.perf_counter()
            if side == "smolforge":
                r = smolforge_repeat(cfg, root / f"sf-{i}")
                log(
                    f"[{n}/{total}] smolforge repeat {i + 1}: {r['phases_s']:.1f}s timed phases "
                    f"(flow {r['seconds']:.1f}s, re-run {r['rerun_seconds']:.2f}s), kept {len(r['kept_ids'])} docs"
                )
                if not args.keep:
                    shutil.rmtree(root / f"sf-{i}", ignore_errors=True)
            else:
                work = root / f"dt-{i}"
                work.mkdir()
                r = datatrove_repeat(corpus, work, settings, args.workers, args.dt_tasks, dt_log)
                log(f"[{n}/{total}] datatrove repeat {i + 1}: {r['timings']['total']:.1f}s, kept {r['kept']} docs")
                if not args.keep:
                    shutil.rmtree(work, ignore_errors=True)
            r["elapsed"] = round(time.perf_counter() - t0, 1)
            results[side].append(r)

    sf0, dt0 = results["smolforge"][0], results["datatrove"][0]
    results.update(
        input_docs=sf0["docs_in"],
        input_bytes=input_size(cfg),
        kinds=kinds,
        workers=args.workers,
        dt_tasks=args.dt_tasks,
        scale=args.scale,
        date=datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        machine=machine(),
        versions=versions(),
    )
    timeouts = sum(
        row.get("timeout", 0) + row.get("clean_error", 0)
        for r in results["datatrove"]
        for row in r["counts"]["filter+signatures"]
    )
    if timeouts:
        log(f"WARNING: datatrove's Trafilatura timed out or failed on {timeouts} pages over all repeats")
    results["differences"] = differences(results)
    for problem in results["differences"]:
        log(f"WARNING: the sides differ ({problem}): the comparison is not like for like")
    return results


def differences(results: dict[str, Any]) -> list[str]:
    """Where the two sides did not do the same work: documents out of any step, or the kept ids,
    in any repeat (each side is also compared with its own first repeat). Empty when identical."""
    found = []
    reference = results["smolforge"][0]
    for side in ("smolforge", "datatrove"):
        for i, r in enumerate(results[side], 1):
            funnel = r["funnel"] if side == "smolforge" else datatrove_funnel(r["counts"], r["kept"])
            for step, docs in funnel.items():
                if docs != reference["funnel"][step]:
                    found.append(f"{side} repeat {i}: {step} passed {docs} documents, smolforge repeat 1 {reference['funnel'][step]}")
            if r["kept_ids"] != reference["kept_ids"]:
                found.append(f"{side} repeat {i}: other kept ids than smolforge repeat 1")
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=int, default=4, help="sample corpus scale (default 4: ~14 MB, ~450 documents)")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each side (default 3)")
    parser.add_argument("--workers", type=int, default=2, help="worker processes for both sides (default 2)")
    parser.add_argument("--dt-tasks", type=int, default=4, help="datatrove tasks of the per-document stages (default 4 = 2 per worker)")
    parser.add_argument("--corpus", type=Path, help="build (or reuse) the sample corpus here instead of a temporary folder")
    parser.add_argument("--tmp", type=Path, help="parent folder of the temporary working folder")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (printed at the end)")
    parser.add_argument("--json", type=Path, help="also write all measurements to this JSON file")
    parser.add_argument("--kinds", help="only sources of these kinds, comma-separated (default: all but pdf)")
    args = parse_args(parser, scale=1, repeats=1, kinds="html,jsonl")
    if args.repeats < 1 or args.workers < 1 or args.dt_tasks < 1 or args.scale < 1:
        parser.error("--scale, --repeats, --workers and --dt-tasks must be positive")

    root = Path(tempfile.mkdtemp(prefix="smolforge-bench-", dir=args.tmp)).resolve()
    started = time.perf_counter()
    log(f"working folder {root}")
    try:
        results = bench(args, root)
        if args.json:
            args.json.write_text(json.dumps(results, indent=1))
        report(results)
        log(f"benchmark took {time.perf_counter() - started:.0f}s")
    except BenchError as exc:
        sys.exit(f"benchmark failed: {exc}")
    finally:
        shut_down()
        if args.keep:
            log(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
