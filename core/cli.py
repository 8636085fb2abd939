"""The `smolforge` command. Heavy libraries are imported inside the commands so `--help` is instant."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from smolforge.flows.config import ARTIFACT_KINDS, DEFAULT_PRESET, FLOWS, available_presets

app = typer.Typer(
    help="Make small language models as an orchestrated, reproducible pipeline (Prefect + MLflow).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
# Users paste keys and paths from this output (a corpus key into `curate.dedup.against`), so a line
# is never broken inside them, and when the output is not a terminal (a pipe, a CI log) tables take
# the width of their content instead of rich's 80-column default.
console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 1_000)


def _fail(message: str) -> None:
    console.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(2)


# The configuration options `run`, `promote` and `rollback` share (the gates and the evaluation
# settings a promotion reads come from the same preset, file and overrides as a run's).
PresetOption = Annotated[
    Optional[str],
    typer.Option(help=f"Preset: {', '.join(available_presets())}. \\[default: {DEFAULT_PRESET}; none when --config is given]"),
]
ConfigOption = Annotated[Optional[Path], typer.Option(help="YAML file merged over the preset.")]
FlowArgument = Annotated[str, typer.Argument(help=f"Which flow: {', '.join(FLOWS)}.")]
SetOption = Annotated[list[str], typer.Option("--set", help="Override one setting: section.field=value (repeatable).")]


def _load_config(preset: str | None, config: Path | None, set_: list[str]):
    from smolforge.errors import ConfigError
    from smolforge.flows.config import load_config

    try:
        return load_config(preset or (None if config else DEFAULT_PRESET), config, set_)
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def run(
    flow: FlowArgument = "pipeline",
    preset: PresetOption = None,
    config: ConfigOption = None,
    set_: SetOption = [],
) -> None:
    """Run a flow on the embedded default (or the servers your environment points at)."""
    import time

    from smolforge.environment import configure
    from smolforge.errors import ConfigError

    started = time.perf_counter()
    if flow not in FLOWS:
        _fail(f"unknown flow {flow!r}; choose one of: {', '.join(FLOWS)}")
    cfg = _load_config(preset, config, set_)
    if flow not in ("pipeline", "retrain") and getattr(cfg, flow) is None:  # retrain has defaults
        _fail(f"the {flow} flow needs a `{flow}` section in the config (--config FILE or --set {flow}=...)")
    # MLflow's own INFO lines (creating its tables on a first run) say nothing a user acts on; our
    # own log records (a stage resuming from a checkpoint) go to the Prefect UI beside the console.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "smolforge")
    home = configure()
    console.print(f"[dim]project folder {home}[/]")
    _check_store(home, flows=True)
    if flow == "pipeline":
        from smolforge.flows.replay import replay

        replayed = replay(cfg)
        if replayed is not None:
            console.print("nothing changed since the last run of this config (same code and inputs): every stage is cached")
            _print_results(replayed, cfg.tracking.experiment, time.perf_counter() - started)
            return
    quiet_task_runs_on_console()

    from smolforge.flows.config import STAGES
    from smolforge.flows.pipeline import pipeline
    from smolforge.flows.results import PipelineResult
    from smolforge.flows.routing import stage_flow

    try:
        if flow == "retrain":
            from smolforge.flows.retrain import retrain

            outcome = retrain(cfg)
            _print_retrain(outcome)
            if outcome.stages is None:
                return
            result = outcome.stages
        elif flow == "pipeline":
            result = pipeline(cfg)
        else:
            alone = stage_flow(next(s for s in STAGES if s.name == flow), cfg.execution)(cfg)
            result = PipelineResult(mlflow_run_id=alone.mlflow_run_id, seconds=alone.seconds, **{flow: alone})
    except ConfigError as exc:
        _fail(str(exc))
    finally:
        _settle_events()
    _print_results(result, cfg.tracking.experiment, time.perf_counter() - started)


def _check_store(home, flows: bool = False) -> None:
    """Refuse a remote artifact store that cannot be used (no credentials, no bucket) before any
    work; before `flows` run, save the Prefect block their results go to beside it."""
    from smolforge.artifacts import project_store
    from smolforge.errors import ConfigError

    try:
        project_store(home).check()
    except ConfigError as exc:
        _fail(str(exc))
    if flows:
        from smolforge.steps import save_result_storage

        save_result_storage()


def _print_retrain(outcome) -> None:
    files = ", ".join(f"{n} {what}" for what, n in outcome.files.items())
    console.print(f"retrain     from {outcome.start}: files {files}; {outcome.status}")
    if outcome.stages is None:
        console.print(f"            recorded in MLflow run {outcome.mlflow_run_id}")


def _print_results(result, experiment: str, wall: float) -> None:
    for name, stage_result in result.stages.items():
        PRINTERS[name](stage_result)
        if stage_result.cached and stage_result.mlflow_run_id:
            console.print(f"[dim]{name} came from the cache: recorded in MLflow run {stage_result.mlflow_run_id}[/]")
    _where_to_look(result, experiment, wall)


class _NoTaskRunInfo(logging.Filter):
    """Drops task runs' INFO records (one "Finished in state Completed()" per shard and step: dozens
    per stage); their warnings and errors, and the flow runs' lines, still pass."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or not record.name.startswith("prefect.task_runs")


def quiet_task_runs_on_console() -> None:
    """Quiet Prefect's console handler, not its loggers: the API handler, attached to the task-run
    logger itself, still sends every record to the Prefect UI. Called after `configure()`: Prefect
    reads its settings when its logging is set up, here or at the import of its flow API."""
    from prefect.logging.configuration import ensure_logging_setup
    from prefect.logging.handlers import PrefectConsoleHandler

    ensure_logging_setup()
    for handler in logging.getLogger().handlers:
        if isinstance(handler, PrefectConsoleHandler):
            handler.addFilter(_NoTaskRunInfo())


def print_sweep(summary) -> None:
    table = Table(title=f"sweep {summary.study} ({summary.stage}), trials of this run", title_justify="left")
    for col in ("trial", "state", "value", "train s", "total s", "settings"):
        table.add_column(col, justify="left" if col in ("state", "settings") else "right")
    for r in sorted(summary.this_run, key=lambda r: r.get("number", -1)):
        value = f"{r['value']:.4f}" if r.get("value") is not None else ""
        train = f"{r['train_seconds']:.1f}" if r.get("train_seconds") is not None else ""
        settings = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.get("params", {}).items())
        table.add_row(str(r.get("number", "")), r["state"], value, train, f"{r['wall_seconds']:.1f}", settings)
    console.print(table)
    console.print(
        f"study       {summary.complete} complete, {summary.pruned} pruned, {summary.fail} failed "
        f"of {summary.trials} trials in {summary.storage}"
    )
    if summary.best_params is not None:
        console.print(f"best        trial {summary.best_trial}: {summary.best_value:.4f} with {summary.best_params}")
    for k in summary.kept:
        console.print(f"kept        #{k['rank']} trial {k['trial']} ({k['value']:.4f}) {k['model']['uri']}")


def _settle_events() -> None:
    """Hand the last task-run events to Prefect's temporary server before it shuts down with the
    process; without the pause its recorder is cancelled mid-flush and the UI misses the last states."""
    from prefect.events.worker import EventsWorker

    EventsWorker.drain_all(timeout=10)
    if not os.environ.get("PREFECT_API_URL"):
        time.sleep(1.5)


def _stage_table(title: str, columns: tuple[str, ...], label_column: bool = True) -> Table:
    """A stage's results table: numbers right-aligned, the first column left when it is a label."""
    table = Table(title=title, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify="left" if label_column and i == 0 else "right")
    return table


def _print_registered(label: str, registered) -> None:
    console.print(f"{label:<12}{registered.uri} (version {registered.version})")


def print_funnel(curated) -> None:
    rows, drops = curated.funnel, curated.drops
    table = _stage_table("curation funnel", ("step", "docs in", "docs out", "dropped", "chars out", "tokens"))
    for r in rows:
        table.add_row(
            r["step"], f"{r['docs_in']:,}", f"{r['docs_out']:,}", f"{r['dropped']:,}", f"{r['chars_out']:,}",
            f"{r['tokens_out']:,}" if r.get("tokens_out") else "",
        )
    console.print(table)
    reasons = Table(title="dropped documents by reason", title_justify="left")
    for col in ("step", "reason", "documents"):
        reasons.add_column(col, justify="right" if col == "documents" else "left")
    for step, counts in drops.items():
        for reason, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
            reasons.add_row(step, reason, f"{n:,}")
    console.print(reasons)


def print_pretraining(pretrained) -> None:
    table = _stage_table("pretraining", ("stage", "global step", "tokens", "val loss", "rollbacks", "seconds"))
    for s in pretrained.stages:
        table.add_row(
            s["stage"], str(s["steps"]), f"{s['tokens']:,}", f"{s.get('val_loss', float('nan')):.3f}",
            str(s["rollbacks"]), str(s["seconds"]),
        )
    console.print(table)
    _print_registered("model", pretrained.registered)


def print_distillation(distilled) -> None:
    m = distilled.metrics
    table = _stage_table("distillation", ("model", "parameters", "steps", "val loss", "train kl", "seconds"))
    table.add_row(f"teacher {distilled.inputs.teacher.kind}", f"{distilled.teacher_parameters:,}", "", "", "", "")
    table.add_row(
        "student", f"{distilled.student_parameters:,}", str(m["steps"]), f"{m['val_loss']:.3f}",
        f"{m['train_kl']:.3f}", str(m["seconds"]),
    )
    console.print(table)
    _print_registered("student", distilled.registered)


def print_finetuning(tuned) -> None:
    m = tuned.metrics
    table = _stage_table(
        "fine-tuning", ("trainable", "records", "dropped", "steps", "val loss", "from", "seconds"), label_column=False
    )
    table.add_row(
        f"{int(m['trainable_params']):,} / {int(m['total_params']):,}", f"{int(m['train_records'])} + {int(m['val_records'])}",
        f"{int(m['dropped'])}", f"{int(m['steps'])}{' (early stop)' if m['stopped_early'] else ''}",
        f"{m['val_loss']:.3f}", f"{m['first_val_loss']:.3f}", str(m["seconds"]),
    )
    console.print(table)
    reasons = ", ".join(f"{k.removeprefix('dropped.')} {int(v)}" for k, v in m.items() if k.startswith("dropped."))
    if reasons:
        console.print(f"dropped     {reasons}")
    _print_registered("chat model", tuned.registered)


def print_evaluation(evaluated) -> None:
    from smolforge.tasks.evaluate.report import COLUMNS

    rows = evaluated.rows
    present = [(m, h) for m, h in COLUMNS if any(m in r for r in rows)]
    table = _stage_table("evaluation (held-out data)", ("model", "tokenizer", *(h for _, h in present)))
    for r in rows:
        cells = [f"{r[m]:.3f}" if m in r else "" for m, _ in present]
        table.add_row(r["model"], r["tokenizer"], *cells)
    console.print(table)
    console.print(f"note        {evaluated.note}")
    console.print(f"comparison  {evaluated.report.uri}/comparison.png")


def print_merging(merged) -> None:
    table = _stage_table("merging (assistant-token loss on held-out records)", ("model", "kind", "selection", "test"))
    for r in merged.rows:
        mark = " *" if r["model"] == merged.chosen else ""
        table.add_row(f"{r['model']}{mark}", r["kind"], f"{r['selection_loss']:.4f}", f"{r['test_loss']:.4f}")
    console.print(table)
    if merged.soup:
        console.print(f"greedy soup {' + '.join(merged.soup_ingredients)} "
                      f"(left out: {', '.join(s['ingredient'] for s in merged.soup if not s['kept']) or 'none'})")
    console.print(f"comparison  {merged.report.uri}/comparison.png")
    _print_registered("merged", merged.registered)
    console.print(f"            the {merged.chosen} merge (* above), chosen on the selection records")


def print_promotion(promoted) -> None:
    table = _stage_table("promotion (champion/challenger gate)", ("model", "version", "champion before", "decision", "reason"))
    table.columns[-1].justify = "left"
    table.columns[-2].justify = "left"
    for d in promoted.decisions:
        decision = d["decision"] + (" (forced)" if d["forced"] else "")
        table.add_row(d["name"], d["version"], d["champion"] or "none", decision, d["reason"])
    console.print(table)


PRINTERS = {
    "curate": print_funnel,
    "pretrain": print_pretraining,
    "distill": print_distillation,
    "finetune": print_finetuning,
    "sweep": print_sweep,
    "merge": print_merging,
    "evaluate": print_evaluation,
    "promote": print_promotion,
}


def _where_to_look(result, experiment: str, wall: float) -> None:
    from smolforge import tracking
    from smolforge.environment import mlflow_tracking_uri, project_home

    curated = result.curate
    if curated is not None:
        console.print(f"corpus      {curated.corpus.key}  {curated.corpus.uri}")
    if result.mlflow_run_id:
        console.print(f"MLflow run  {result.mlflow_run_id}  {tracking.run_url(result.mlflow_run_id, experiment)}")
    console.print(f"            tracking store {mlflow_tracking_uri(project_home())}")
    console.print("Prefect     `smolforge ui` shows this flow run and its task runs")
    stages = ", ".join(f"{name} cached" if r.cached else f"{name} {r.seconds:.1f} s" for name, r in result.stages.items())
    console.print(f"took        {wall:.1f} s in all ({stages})")


@app.command()
def artifacts(kind: Annotated[Optional[str], typer.Option(help=f"Only this kind: {', '.join(ARTIFACT_KINDS)}.")] = None) -> None:
    """List artifacts with their size, age and lineage (the artifacts they were made from)."""
    from smolforge.artifacts import project_store
    from smolforge.environment import project_home

    if kind is not None and kind not in ARTIFACT_KINDS:
        _fail(f"unknown artifact kind {kind!r}; the kinds are: {', '.join(ARTIFACT_KINDS)}")
    _check_store(project_home())
    store = project_store(project_home())
    rows = [r for r in store.list() if kind is None or r.get("kind") == kind]
    if not rows:
        console.print(f"no artifacts under {store.location}")
        return
    table = Table(title=f"artifacts in {store.location}", title_justify="left")
    for col in ("kind", "key", "size", "created", "made from"):
        table.add_column(col, justify="right" if col == "size" else "left", no_wrap=col == "key")
    for r in rows:
        inputs = r.get("inputs", [])
        lineage = ", ".join(sorted({f"{i['kind']}:{i['key'][:8]}" for i in inputs})[:4])
        if len(inputs) > 4:
            lineage += f" … ({len(inputs)} inputs)"
        table.add_row(r["kind"], r["key"], _size(r["bytes"]), r.get("created", "?"), lineage)
    console.print(table)


@app.command()
def lineage(
    model: Annotated[str, typer.Argument(help="models:/name@alias, models:/name/version, an artifact key (kind:key) or folder.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print the chain as JSON (as logged in the run's lineage.json).")] = False,
) -> None:
    """The chain from a model back to the raw data: version, stage run, artifacts, the models it came from, the corpus."""
    from smolforge.artifacts import project_store
    from smolforge.environment import configure
    from smolforge.errors import ConfigError
    from smolforge.tasks.registry.lineage import lineage as read_lineage

    home = configure()
    _check_store(home)
    store = project_store(home)
    try:
        chain = read_lineage(model, store)
    except ConfigError as exc:
        _fail(str(exc))
    if as_json:
        console.print_json(json.dumps(chain, default=str))
        return
    from rich.markup import escape
    from rich.tree import Tree

    if "registered" in chain:
        aliases = " ".join(f"@{a}" for a in chain["aliases"])
        tree = Tree(f"[bold]{chain['registered']}[/] {aliases}  {_run_text(chain['run'])}")
        for tag, value in chain["tags"].items():
            tree.add(f"[dim]{tag}[/] {escape(value)}")
        _add_artifact(tree, chain["artifact"])
    else:
        tree = Tree(f"[bold]{model}[/]")
        _add_artifact(tree, chain)
    console.print(tree)


def _run_text(run: dict | None) -> str:
    if not run:
        return ""
    if "missing" in run:
        return f"run {run['run_id']} ({run['missing']})"
    prefect = f"  Prefect {run['prefect_flow_run']}" if "prefect_flow_run" in run else ""
    return f"{run['stage']} run {run['run_id']}{prefect}"


def _add_artifact(parent, node: dict) -> None:
    """One artifact of a lineage and, below it, what it was made from."""
    label = f"{node.get('kind', '?')}:{node['key']}"
    if "missing" in node or "shown" in node:
        parent.add(f"{label} [dim]({node.get('missing') or 'shown above'})[/]")
        return
    branch = parent.add(f"[bold]{label}[/] {node['step']} {node['created']}  {_run_text(node.get('run'))}")
    if "source" in node:
        branch.add(f"imported from {node['source']}")
    corpus = node.get("corpus")
    if corpus is not None:
        steps = ", ".join(f"{r['step']} {r['docs_in']}->{r['docs_out']}" for r in corpus["funnel"])
        branch.add(f"curation (documents in->out): {steps}")
        sources = ", ".join(f"{name} {s['documents']} docs" for name, s in corpus["sources"].items())
        branch.add(f"sources: {sources}; {corpus['tokens']:,} tokens in all")
    if "retrain_data" in node:
        sources = ", ".join(f"{name} {s['documents']} docs" for name, s in node["retrain_data"].items())
        branch.add(f"retrain data (new documents, then replay): {sources}")
        for key, fingerprints in node.get("repacked", {}).items():
            branch.add(f"corpus {key} re-packed for replay with the champion's tokenizer {fingerprints['to']} (was {fingerprints['from']})")
    for item in node.get("inputs", []):
        _add_artifact(branch, item)


def _size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


@app.command()
def models() -> None:
    """Registered models, their aliases and key metrics (the evaluation's tags), one table."""
    from smolforge.environment import configure

    configure()
    from smolforge.tasks.promote.registry import overview

    rows = overview()
    if not rows:
        console.print("no registered models")
        return
    metrics = list(dict.fromkeys(m for r in rows for m in r["metrics"]))
    table = _stage_table("registered models", ("model", "version", "aliases", *metrics, "promotion"))
    for r in rows:
        table.add_row(
            r["name"], r["version"], ", ".join(r["aliases"]), *(r["metrics"].get(m, "") for m in metrics), r["promotion"]
        )
    console.print(table)


def _reevaluate_when_needed(cfg):
    """The evaluate stage's scoring of a champion on its challenger's data, imported (torch,
    lm-eval, Prefect) only when a champion was scored on other data."""

    def reevaluate(name: str, version: str, data_key: str):
        from smolforge.flows.promote import reevaluator

        return reevaluator(cfg)(name, version, data_key)

    return reevaluate


@app.command()
def promote(
    name: Annotated[str, typer.Argument(help="Registered model name, e.g. smolforge-chat.")],
    version: Annotated[str, typer.Argument(help="Version number, or an alias such as candidate.")],
    reason: Annotated[str, typer.Option(help="Why, recorded on the version.")],
    force: Annotated[bool, typer.Option(help="Skip the comparison (never the evaluation); recorded as forced.")] = False,
    preset: PresetOption = None,
    config: ConfigOption = None,
    set_: SetOption = [],
) -> None:
    """Run the promotion gate on one version: `champion` moves to it only on a pass (or --force)."""
    from smolforge.environment import configure
    from smolforge.errors import ConfigError

    cfg = _load_config(preset, config, set_)
    if cfg.promote is None:
        _fail("promotion needs a `promote` section in the config (--set promote={} for the default gates)")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    configure()
    from smolforge.flows.results import PromoteResult
    from smolforge.tasks.promote.decisions import decide, version_of

    started = time.perf_counter()
    try:
        outcomes, run_id = decide(
            cfg.promote, cfg.tracking.experiment, [(name, version_of(name, version))],
            reevaluate=_reevaluate_when_needed(cfg), force=force, note=reason,
        )
    except ConfigError as exc:
        _fail(str(exc))
    result = PromoteResult.of(outcomes, run_id, time.perf_counter() - started)
    print_promotion(result)
    if result.decisions[0]["decision"] == "rejected":
        raise typer.Exit(1)


@app.command()
def rollback(
    name: Annotated[str, typer.Argument(help="Registered model name, e.g. smolforge-chat.")],
    reason: Annotated[str, typer.Option(help="Why, recorded on both versions.")] = "",
    preset: PresetOption = None,
    config: ConfigOption = None,
    set_: SetOption = [],
) -> None:
    """Put `champion` back on `previous-champion`, with tags on both versions saying so."""
    from smolforge.environment import configure
    from smolforge.errors import ConfigError

    cfg = _load_config(preset, config, set_)
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    configure()
    from smolforge.flows.results import PromoteResult
    from smolforge.tasks.promote.decisions import roll_back

    started = time.perf_counter()
    try:
        outcomes, run_id = roll_back(cfg.tracking.experiment, name, reason)
    except ConfigError as exc:
        _fail(str(exc))
    result = PromoteResult.of(outcomes, run_id, time.perf_counter() - started)
    print_promotion(result)


dataset_app = typer.Typer(help="The curated documents of a corpus as a dataset: show it, export a copy.", no_args_is_help=True)
app.add_typer(dataset_app, name="dataset")
CorpusArgument = Annotated[str, typer.Argument(metavar="KEY", help="A corpus key (or its first 6+ characters), or `latest`.")]


def _corpus(spec: str):
    from smolforge.artifacts import ArtifactStore
    from smolforge.environment import project_home
    from smolforge.tasks.curate.dataset import DatasetError
    from smolforge.tasks.curate.dataset_export import find_corpus

    try:
        return find_corpus(ArtifactStore(project_home() / "artifacts"), spec)
    except DatasetError as exc:
        _fail(str(exc))


@dataset_app.command("show")
def dataset_show(
    key: CorpusArgument,
    samples: Annotated[int, typer.Option(min=0, help="Sample documents per source and language.")] = 2,
    chars: Annotated[int, typer.Option(min=20, help="Characters of each sample shown.")] = 200,
) -> None:
    """The dataset card's numbers and a few documents per source and language."""
    from smolforge.tasks.curate.dataset import samples as first_rows

    corpus = _corpus(key)
    p = corpus.profile
    console.print(f"{corpus.ref.kind} [bold]{corpus.ref.key}[/] ({corpus.created}): {corpus.folder}")
    console.print(f"{p['rows']:,} documents, {p['chars']:,} characters, {p['tokens']:,} tokens, {p['files']} file(s), {_size(p['bytes'])}")
    table = _stage_table("sources", ("source", "documents", "characters", "tokens"))
    for source, v in p["sources"].items():
        table.add_row(source, f"{v['rows']:,}", f"{v['chars']:,}", f"{v['tokens']:,}")
    console.print(table)
    console.print("languages: " + ", ".join(f"{lang} {n:,}" for lang, n in p["languages"].items()))
    record = corpus.ref.path / "corpus.json"
    funnel = json.loads(record.read_text(encoding="utf-8")).get("funnel", []) if record.is_file() else []
    if funnel:
        console.print("documents per step: " + ", ".join(f"{r['step']} {r['docs_in']:,} → {r['docs_out']:,}" for r in funnel))
    for part in p.get("parts", []):
        console.print(f"from corpus {part['corpus']}: {part['rows']:,} documents ({part['left_out']:,} of changed or deleted files left out)")
    if samples:
        for row in first_rows(corpus.folder, samples):
            text = " ".join(row["text"].split())
            console.print(f"[bold]{row['id']}[/] ({row['source']}, {row['language']}, {row['tokens']} tokens)", highlight=False)
            console.print(f"  {text[:chars]}{'…' if len(text) > chars else ''}", highlight=False, markup=False)


@dataset_app.command("export")
def dataset_export(
    key: CorpusArgument,
    dest: Annotated[Path, typer.Argument(metavar="DEST", help="Folder to write into (must be empty or absent, unless --overwrite).")],
    format_: Annotated[str, typer.Option("--format", help="parquet or jsonl.")] = "parquet",
    source: Annotated[Optional[str], typer.Option(help="Only the documents of this source.")] = None,
    language: Annotated[Optional[str], typer.Option(help="Only the documents in this language (ISO 639-1).")] = None,
    overwrite: Annotated[bool, typer.Option(help="Replace what DEST holds.")] = False,
    push_to_hub: Annotated[Optional[str], typer.Option(metavar="REPO", help="Then upload DEST to this hub dataset repository (needs a token and a network).")] = None,
) -> None:
    """Write a copy of a corpus's documents (all, or one source or language) with its card."""
    from smolforge.tasks.curate.dataset import DatasetError
    from smolforge.tasks.curate.dataset_export import export
    from smolforge.tasks.curate.dataset_export import push_to_hub as push

    corpus = _corpus(key)
    try:
        written = export(corpus, dest, fmt=format_, source=source, language=language, overwrite=overwrite)
    except DatasetError as exc:
        _fail(str(exc))
    console.print(f"wrote {written['rows']:,} documents in {written['files']} {format_} file(s), {_size(written['bytes'])}, to {written['dest']}")
    if push_to_hub:
        try:
            url = push(Path(written["dest"]), push_to_hub)
        except DatasetError as exc:
            _fail(str(exc))
        console.print(f"uploaded to {url}")


@app.command("sample-corpus")
def sample_corpus(
    dest: Annotated[Path, typer.Argument(help="Folder to write the corpus into.")],
    scale: Annotated[int, typer.Option(min=1, help="More documents per package.")] = 1,
) -> None:
    """Assemble the offline, multilingual, messy sample corpus from installed packages."""
    from smolforge.tasks.curate.sample_corpus import build_sample_corpus

    summary = build_sample_corpus(dest, scale=scale)
    console.print_json(json.dumps(summary, default=str))


@app.command()
def ui(
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect UI.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow UI.")] = 5000,
) -> None:
    """Start the Prefect UI and the MLflow UI on 127.0.0.1 for this project folder; Ctrl-C stops both."""
    from smolforge.environment import configure
    from smolforge.ui import serve

    home = configure()
    from smolforge.deployments.stack import running

    stack = running(home)
    if stack is not None and os.environ.get("PREFECT_API_URL", "").startswith(stack.prefect):
        console.print(f"the stack `smolforge up` started serves this folder: Prefect UI {stack.prefect}, MLflow UI {stack.mlflow}")
        return
    try:
        serve(home, prefect_port, mlflow_port, console)
    except RuntimeError as exc:
        _fail(str(exc))


@app.command()
def deploy(
    gpu_pool: Annotated[str, typer.Option(help="Work pool of the training stages' deployments.")] = "gpu",
    gpus: Annotated[int, typer.Option(min=1, help="Slots of the global `gpu` concurrency limit when it is created (the team's GPUs).")] = 1,
) -> None:
    """Create or update the work pools, the `gpu` limit and one deployment per flow on the Prefect server."""
    from smolforge.environment import configure
    from smolforge.errors import ConfigError

    home = configure()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from smolforge.deployments.apply import deploy as apply_all
    from smolforge.deployments.apply import server_url

    try:
        server_url()
        _check_store(home, flows=True)  # the runs' result storage must exist before a worker starts one
        changes = apply_all(gpu_pool=gpu_pool, gpus=gpus)
    except ConfigError as exc:
        _fail(str(exc))
    table = Table("what", "action", "detail", title=f"deployed to {os.environ['PREFECT_API_URL']}")
    for change in changes:
        table.add_row(change.what, change.action, change.detail)
    console.print(table)


@app.command()
def worker(
    pool: Annotated[str, typer.Option(help="Work pool to take flow runs from: cpu or gpu.")],
    limit: Annotated[Optional[int], typer.Option(min=1, help="Most flow runs at once. [default: gpu: one per GPU; cpu: no limit]")] = None,
) -> None:
    """Run a Prefect worker for one of the project's pools (flow runs execute in processes it starts)."""
    from smolforge.environment import configure
    from smolforge.errors import ConfigError

    home = configure()
    from smolforge.deployments.worker import check_pool, default_limit, exec_worker

    try:
        check_pool(pool)
        _check_store(home, flows=True)
        exec_worker(pool, limit or default_limit(pool))
    except ConfigError as exc:
        _fail(str(exc))


@app.command()
def submit(
    flow: FlowArgument = "pipeline",
    preset: PresetOption = None,
    config: ConfigOption = None,
    set_: SetOption = [],
    wait: Annotated[bool, typer.Option(help="Wait for the run to finish; exit 1 unless it completes.")] = False,
) -> None:
    """Create a run of FLOW's deployment with the whole config (preset, file, --set) for a worker to execute."""
    from smolforge.environment import configure
    from smolforge.errors import ConfigError

    if flow not in FLOWS:
        _fail(f"unknown flow {flow!r}; choose one of: {', '.join(FLOWS)}")
    cfg = _load_config(preset, config, set_)
    home = configure()
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    from smolforge.deployments.apply import server_url
    from smolforge.deployments.submit import submit_run, wait_for

    try:
        url = server_url()
        _check_store(home, flows=True)
        run = submit_run(flow, cfg, url)
    except ConfigError as exc:
        _fail(str(exc))
    console.print(f"submitted {run.name} ({run.id}) to {flow}/smolforge on pool {run.work_pool_name}")
    console.print(f"  {run.url}")
    if wait:
        state = wait_for(run.id)
        console.print(f"{run.name}: {state.type.value.lower()} {state.message or ''}".rstrip())
        if not state.is_completed():
            raise typer.Exit(1)


@app.command()
def up(
    prefect_port: Annotated[int, typer.Option(help="Port of the Prefect server.")] = 4200,
    mlflow_port: Annotated[int, typer.Option(help="Port of the MLflow server.")] = 5000,
    database_url: Annotated[
        Optional[str], typer.Option(help="postgresql://user[:password]@host[:port]: one database per service on it. [default: SQLite files in the project folder]")
    ] = None,
) -> None:
    """Start the team stack on 127.0.0.1 (Prefect and MLflow servers, a cpu and a gpu worker) and deploy every flow."""
    from smolforge.environment import configure
    from smolforge.errors import ConfigError

    home = configure()
    from smolforge.deployments.stack import up as start_stack

    try:
        stack = start_stack(home, prefect_port, mlflow_port, database_url, report=console.print)
    except ConfigError as exc:
        _fail(str(exc))
    console.print(f"Prefect UI  {stack.prefect}   (deployments: run the pipeline from its form)")
    console.print(f"MLflow UI   {stack.mlflow}")
    console.print(f"[dim]workers: cpu and gpu; logs in {home / 'logs'}; `smolforge run`, `submit` and `ui` use this stack "
                  "until `smolforge down`[/]")


@app.command()
def down() -> None:
    """Stop the stack `smolforge up` started for this project folder (the processes it recorded)."""
    from smolforge.deployments.stack import down as stop_stack
    from smolforge.environment import project_home
    from smolforge.errors import ConfigError

    try:
        stopped = stop_stack(project_home())
    except ConfigError as exc:
        _fail(str(exc))
    console.print("stopped " + ", ".join(stopped))


@app.command()
def generate(
    model_uri: Annotated[
        str,
        typer.Argument(
            metavar="MODEL_URI",
            help="models:/name@alias, models:/name/version, an artifact key (finetuned:<key> or a bare key) or a folder.",
        ),
    ],
    prompt: Annotated[str, typer.Argument(metavar="PROMPT", help="The question (a chat model) or the text to continue (any other).")],
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Stop after this many new tokens.")] = 64,
    temperature: Annotated[float, typer.Option(min=0.0, help="0 answers greedily; above 0 samples, hotter = more varied.")] = 0.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0, help="When sampling: keep the likeliest tokens up to this total probability.")] = 1.0,
    seed: Annotated[Optional[int], typer.Option(help="When sampling: the same seed gives the same answer.")] = None,
    chat: Annotated[
        Optional[bool],
        typer.Option(
            "--chat/--no-chat",
            help="Apply the chat template or continue the raw text. \\[default: as the model was registered, or, "
            "for a folder, whether its generation config ends a turn at <|im_end|> (a fine-tune's does)]",
            show_default=False,
        ),
    ] = None,
    adapter: Annotated[
        Optional[str],
        typer.Option(
            help="For a model registered as base + adapters (prefix or prompt tuning, finetune.adapters): the adapter "
            "that answers. \\[default: the one named default, else the first]",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Answer PROMPT with a model, streaming the text to stdout as it is generated."""
    from smolforge.artifacts import project_store
    from smolforge.environment import configure
    from smolforge.errors import ConfigError
    from smolforge.tasks.serve.generate import Sampling, generate_from

    # Only the answer and errors: no progress bars for a download or a load that takes a moment.
    # Environment variables rather than transformers' `disable_progress_bar()`: importing
    # transformers here would hold back the registry lookup `generate_from` starts (~0.8 s).
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # transformers' bars follow huggingface_hub's
    home = configure()
    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed)
    try:
        generate_from(model_uri, prompt, project_store(home), sampling, chat, adapter)
    except ConfigError as exc:
        _fail(str(exc))


def main() -> None:  # pragma: no cover
    app(prog_name="smolforge")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
