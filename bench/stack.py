"""The team stack's two figures: `smolforge up` to all servers healthy, and what running a pipeline
through a deployment and a worker costs against `smolforge run`.

    python bench/stack.py [--repeats 3] [--steps 40] [--data-dir DIR] [--database-url URL] [--quick]

In a project folder that does not exist yet: `smolforge up` on SQLite (and, with `--database-url`,
a second stack on that PostgreSQL server), reporting the seconds until both servers answered (the
target is 20 s on SQLite) and the whole command's wall time (deploying every flow and starting the
workers). Then, with the stack up, a small pipeline (the web and chat sources, one pretraining stage
of `--steps` steps, no later stage; curated once beforehand) alternately through `smolforge run`
and through `smolforge submit --wait` (the deployment, the cpu worker), each repeat with new seeds
so pretraining runs every time; both talk to the same servers. Wall time of each whole command,
their ratio per pair and its median.
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import sys
import tempfile
from pathlib import Path

from commands import timed, user_env  # bench/, beside this script
from quickmode import parse_args

SMOLFORGE = Path(sys.executable).parent / "smolforge"  # the console script of this environment
HEALTHY_TARGET = 20.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def settings(data_dir: Path | None, steps: int, seed: int) -> list[str]:
    chosen = [
        "curate.sources=[{name: chat, kind: jsonl, path: 'jsonl/*.jsonl'}, {name: web, kind: html, path: 'html/**/*.html'}]",
        f"pretrain.stages=[{{name: stable, steps: {steps}, seq_len: 64, mixture: {{chat: 0.5, web: 0.5}}}}]",
        "pretrain.schedule.warmup_steps=2",
        "pretrain.schedule.decay_fraction=0.3",
        f"pretrain.seed={seed}",
        "distill=null", "finetune=null", "merge=null", "evaluate=null", "promote=null",
    ]
    if data_dir is not None:
        chosen += ["curate.sample_corpus=null", f"curate.data_dir={data_dir}"]
    return [arg for s in chosen for arg in ("--set", s)]


def up(env: dict[str, str], home: Path, database_url: str | None) -> tuple[float, float]:
    """(seconds until both servers answered, wall seconds of the whole `up`)."""
    extra = ["--database-url", database_url] if database_url else []
    wall, _ = timed([str(SMOLFORGE), "up", "--prefect-port", str(_free_port()), "--mlflow-port", str(_free_port()), *extra], env)
    return json.loads((home / "stack.json").read_text())["seconds_to_healthy"], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="pairs of runs (run, then submit)")
    parser.add_argument("--steps", type=int, default=40, help="pretraining steps of each run")
    parser.add_argument("--data-dir", type=Path, default=None, help="a sample corpus to read (default: each folder builds its own)")
    parser.add_argument("--database-url", default=None, help="also time `up` on this PostgreSQL server")
    args = parse_args(parser, repeats=1, steps=4)

    home = Path(tempfile.mkdtemp(prefix="bench-stack-")) / "new-project"
    env = {**user_env(home), "PREFECT_LOGGING_LEVEL": "WARNING"}
    healthy, up_wall = up(env, home, None)
    rows = [("sqlite", healthy, up_wall)]
    pairs = []
    try:
        timed([str(SMOLFORGE), "run", "curate", "--preset", "tiny", *settings(args.data_dir, args.steps, 0)], env)
        for i in range(args.repeats):
            run, _ = timed([str(SMOLFORGE), "run", "pipeline", "--preset", "tiny", *settings(args.data_dir, args.steps, 2 * i + 1)], env)
            submit, out = timed(
                [str(SMOLFORGE), "submit", "pipeline", "--preset", "tiny", *settings(args.data_dir, args.steps, 2 * i + 2), "--wait"], env
            )
            if not out.strip().splitlines()[-1].endswith("completed"):
                sys.exit(f"the submitted run did not complete:\n{out}")
            pairs.append((run, submit))
    finally:
        timed([str(SMOLFORGE), "down"], env)
    if args.database_url:
        pg_home = home.parent / "postgres-project"
        pg_env = {**env, "SMOLFORGE_HOME": str(pg_home)}
        try:
            healthy, up_wall = up(pg_env, pg_home, args.database_url)
            rows.append(("postgres", healthy, up_wall))
        finally:
            timed([str(SMOLFORGE), "down"], pg_env)

    print(f"\n`smolforge up` (target: servers healthy <= {HEALTHY_TARGET:.0f} s on SQLite)")
    print(f"{'database':<10} {'healthy s':>10} {'up wall s':>10}")
    for name, healthy, wall in rows:
        print(f"{name:<10} {healthy:>10.1f} {wall:>10.1f}")
    print(f"\nPipeline through the deployment and a worker against `smolforge run` ({args.steps} pretraining steps)")
    print(f"{'pair':>4} {'run s':>8} {'submit s':>9} {'submit/run':>11}")
    for i, (run, submit) in enumerate(pairs, 1):
        print(f"{i:>4} {run:>8.1f} {submit:>9.1f} {submit / run:>11.2f}")
    print(f"submit/run: median {statistics.median(s / r for r, s in pairs):.2f}")


if __name__ == "__main__":
    main()
