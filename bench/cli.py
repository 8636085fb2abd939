"""What a user waits for at the command line: `smolforge --help`, and a pipeline re-run that would
change nothing.

    python bench/cli.py [--repeats 2] [--help-runs 7] [--data-dir DIR] [--set KEY=VALUE ...] [--quick]

Start-up: `smolforge --help` against the bare interpreter (`python -c pass`), alternated, wall time
of each process; the difference is what the CLI's imports cost.

Re-run: `smolforge run pipeline --preset tiny` twice in a project folder that does not exist yet,
the second time with nothing changed (it is answered from the first run's record, without Prefect:
flows/replay.py). Wall time of each whole command, their ratio per repeat and the median ratio.
Each repeat gets its own fresh folder, removed at the end; the first run there builds the sample
corpus too, as a new user's does, unless `--data-dir` names one already built (the suite's smoke
run passes its own, to skip the build). MLFLOW_TRACKING_URI, PREFECT_API_URL
and SMOLFORGE_HOME are ignored: every run sets up its own project folder, as a new user's does.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from commands import timed, user_env  # bench/, beside this script
from quickmode import parse_args

from smolforge.flows.config import STAGES

SMOLFORGE = Path(sys.executable).parent / "smolforge"  # the console script of this environment
# The quick mode's pipeline: curation of one source, every later stage turned off.
QUICK_SETTINGS = [
    "curate.sources=[{name: chat, kind: jsonl, path: 'jsonl/*.jsonl'}]",
    *(f"{stage.name}=null" for stage in STAGES if stage.name != "curate"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=2, help="pairs of pipeline runs, each in a fresh folder")
    parser.add_argument("--help-runs", type=int, default=7, help="timed runs of each start-up command")
    parser.add_argument("--data-dir", type=Path, default=None, help="an existing sample corpus to read (not timed)")
    parser.add_argument("--set", dest="settings", action="append", default=[], help="a setting for the pipeline runs")
    args = parse_args(parser, repeats=1, help_runs=2, data_dir=None, settings=QUICK_SETTINGS)

    from rich.console import Console
    from rich.table import Table

    console = Console(width=150)
    startup: dict[str, list[float]] = {"python -c pass": [], "smolforge --help": []}
    commands = {"python -c pass": [sys.executable, "-c", "pass"], "smolforge --help": [str(SMOLFORGE), "--help"]}
    timed(commands["smolforge --help"], user_env())  # warm the file cache once, untimed
    for _ in range(args.help_runs):  # alternated: A B A B ...
        for name, command in commands.items():
            startup[name].append(timed(command, user_env())[0])
    table = Table(title=f"Start-up (wall s, {args.help_runs} runs each, alternated)")
    for column in ("command", "median s", "min s", "max s"):
        table.add_column(column, justify="left" if column == "command" else "right")
    for name, runs in startup.items():
        table.add_row(name, f"{statistics.median(runs):.3f}", f"{min(runs):.3f}", f"{max(runs):.3f}")
    console.print(table)

    settings = list(args.settings)
    if args.data_dir is not None:
        settings += ["curate.sample_corpus=null", f"curate.data_dir={args.data_dir.resolve()}"]
    pipeline = [str(SMOLFORGE), "run", "pipeline", "--preset", "tiny", *(a for s in settings for a in ("--set", s))]
    rows = []
    for repeat in range(args.repeats):
        home = Path(tempfile.mkdtemp(prefix="smolforge-bench-cli-")) / "new-project"
        try:
            console.print(f"repeat {repeat + 1}/{args.repeats}: first run in {home} ...")
            first, _ = timed(pipeline, user_env(home))
            second, _ = timed(pipeline, user_env(home))
        finally:
            shutil.rmtree(home.parent, ignore_errors=True)
        rows.append((first, second))
    table = Table(title="Re-run with nothing changed (wall s of the whole `smolforge run pipeline --preset tiny`)")
    for column in ("repeat", "first s", "second s", "second/first"):
        table.add_column(column, justify="right")
    for i, (first, second) in enumerate(rows, 1):
        table.add_row(str(i), f"{first:.1f}", f"{second:.1f}", f"{second / first:.1%}")
    console.print(table)
    ratios = [second / first for first, second in rows]
    console.print(f"second/first: median {statistics.median(ratios):.1%} over {len(rows)} repeat(s)")


if __name__ == "__main__":
    main()
