"""Sweep overhead per trial: what orchestration and logging add to a trial's own training.

    python bench/sweep.py [--trials 4] [--repeats 2] [--short 16] [--long 64] [--keep-home DIR] [--quick]

Each trial is a Prefect task that opens the Optuna study (SQLite), samples its settings, builds
its config, opens an MLflow child run, trains (timed inside the trial: `train_seconds`, the stage's
own work from reading the corpus to saving the model), reports every evaluation to Optuna and
MLflow, writes its model as an artifact (hashing the files), and closes the run. The overhead of a
trial is its task's wall time minus its training time. The flow adds more per trial (submitting
the task, polling the study) and once per sweep (plots, the best models, the trials table): both
are reported too.

Two training lengths alternate (short, long, short, long, ...: one sweep of `--trials` trials
each, one trial at a time, no pruning), on the pretraining objective with a small model
(hidden 64, 2 layers) on the tiny preset's curated corpus, so a constant overhead shows as a
falling ratio. Everything runs in a temporary project folder, removed at the end;
MLFLOW_TRACKING_URI and PREFECT_API_URL are ignored. Reports medians.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from quickmode import parse_args  # bench/, beside this script

for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME", "PREFECT_LOCAL_STORAGE_PATH"):
    os.environ.pop(var, None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
os.environ["HF_HUB_OFFLINE"] = "1"


def sweep_config(steps: int, trials: int, repeat: int):
    from smolforge.flows.config import load_config

    stages = f"[{{name: s{steps}, steps: {steps}, seq_len: 64, mixture: {{books: 0.8, chat: 0.2}}}}]"
    sweep = (
        f"{{stage: pretrain, trials: {trials}, parallel: 1, keep: 1, pruner: none, sampler: random, seed: {repeat}, "
        "space: {pretrain.optimizer.lr: float 1e-3..1e-2 log}, "
        f"fixed: {{pretrain.stages: {stages}, pretrain.eval_every: 8, pretrain.eval_batches: 1, "
        "pretrain.schedule.decay_fraction: 0.5, pretrain.schedule.warmup_steps: 2, pretrain.model.hidden_size: 64, "
        "pretrain.model.num_layers: 2, pretrain.model.intermediate_size: 128, pretrain.mtp.heads: 0}}"
    )
    return load_config("tiny", overrides=["distill=null", "finetune=null", "merge=null", "evaluate=null", "promote=null", f"sweep={sweep}"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=4, help="trials per sweep")
    parser.add_argument("--repeats", type=int, default=2, help="sweeps per training length")
    parser.add_argument("--short", type=int, default=16, help="training steps of the short trials")
    parser.add_argument("--long", type=int, default=64, help="training steps of the long trials")
    parser.add_argument("--keep-home", type=Path, default=None, help="use (and keep) this project folder")
    args = parse_args(parser, trials=1, repeats=1, short=8, long=16)

    home = args.keep_home or Path(tempfile.mkdtemp(prefix="smolforge-bench-sweep-"))
    from smolforge.environment import configure

    configure(home)
    from rich.console import Console
    from rich.table import Table

    from smolforge.flows.curate import curate
    from smolforge.flows.results import PipelineResult
    from smolforge.flows.sweep import sweep
    from smolforge.tasks.curate.sample_corpus import build_sample_corpus

    console = Console(width=150)
    try:
        if not (home / "sample-corpus-1").exists():
            build_sample_corpus(home / "sample-corpus-1", scale=1)
        console.print("curating the tiny corpus (untimed) ...")
        curated = PipelineResult(curate=curate(sweep_config(args.short, 1, 0)))
        rows: dict[int, list[dict]] = {args.short: [], args.long: []}
        flows: dict[int, list[dict]] = {args.short: [], args.long: []}
        for repeat in range(args.repeats):
            for steps in (args.short, args.long):
                started = time.perf_counter()
                summary = sweep(sweep_config(steps, args.trials, repeat), curated)
                wall = time.perf_counter() - started
                trials = [r for r in summary.this_run if r["state"] == "COMPLETE"]
                rows[steps] += trials
                train = sum(r["train_seconds"] for r in trials)
                flows[steps].append(
                    {"per_trial": (summary.timings["trials"] - train) / len(trials), "report": summary.timings["report"],
                     "flow": wall}
                )
                console.print(f"  {steps:>3} steps, repeat {repeat + 1}: {len(trials)} trials in {wall:.1f} s")

        table = Table(title=f"sweep overhead per trial (medians; {platform.processor() or platform.machine()}, "
                            f"{os.cpu_count()} cores)", title_justify="left")
        for col in ("train steps", "trials", "training s", "trial task s", "overhead s", "overhead / training",
                    "flow overhead s / trial", "report s / sweep"):
            table.add_column(col, justify="right")
        for steps, trials in rows.items():
            train = statistics.median(r["train_seconds"] for r in trials)
            task = statistics.median(r["wall_seconds"] for r in trials)
            over = statistics.median(r["wall_seconds"] - r["train_seconds"] for r in trials)
            flow_over = statistics.median(f["per_trial"] for f in flows[steps])
            report = statistics.median(f["report"] for f in flows[steps])
            table.add_row(str(steps), str(len(trials)), f"{train:.2f}", f"{task:.2f}", f"{over:.2f}",
                          f"{over / train:.2f}", f"{flow_over:.2f}", f"{report:.2f}")
        console.print(table)
        console.print("overhead = trial task wall time - training time measured inside the trial; flow overhead adds "
                      "submitting and polling (the sweep's trial phase minus the summed training, per trial).")
    finally:
        if args.keep_home is None:
            shutil.rmtree(home, ignore_errors=True)


if __name__ == "__main__":
    main()
