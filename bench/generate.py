"""Time to first token of `smolforge generate` in a fresh process, for the tiny chat model.

    python bench/generate.py [--runs 5] [--max-new-tokens 16] [--warm-runs 1] [--quick]

The model has the tiny preset's shape (flows/presets/tiny.yaml: ~1M parameters, vocabulary 4,096)
and random weights (generation costs the same whatever the weights), a byte-level BPE with the
ChatML template trained on the standard library's docstrings, and a generation config that ends a
turn at `<|im_end|>`, as fine-tuning saves it; it is registered as `bench-chat` (llm/v1/chat, as the
finetune stage registers) in a temporary project folder, removed at the end.

Each run is a new process, timed from its start to the first byte of the answer on its stdout
(transformers' TextStreamer writes a word once it is complete), and to its exit. The commands
alternate A B C D A B C D ...; the table shows medians, min-max and each median's ratio to the
baseline, `python -c "import torch, transformers"`: the imports every generation pays before it
can load a model. `smolforge --help` is the CLI's own start-up. The target: ≤ 5 s to the first
token from the registry (`models:/bench-chat/1`).
"""

from __future__ import annotations

import argparse
import inspect
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from commands import user_env  # bench/, beside this script
from quickmode import parse_args
from ratios import print_ratio_table
from rich.console import Console

SMOLFORGE = Path(sys.executable).parent / "smolforge"  # the console script of this environment
TARGET_SECONDS = 5.0
BASELINE = "python -c 'import torch, transformers'"
QUESTION = "What does json.dumps do?"


def build_chat_model(home: Path) -> Path:
    """The tiny chat model as an artifact-like folder (`model/`), registered as `bench-chat`; its path."""
    import builtins

    import mlflow

    from smolforge import tracking
    from smolforge.environment import configure
    from smolforge.flows.config import load_config
    from smolforge.models.architecture import build_model, tokenizer_ids
    from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer
    from smolforge.tasks.registry.register import pip_requirements
    from smolforge.tasks.registry.serving import inference, turn_stop_ids

    configure(home)
    cfg = load_config("tiny")
    texts = [doc for obj in vars(builtins).values() if (doc := inspect.getdoc(obj))]
    folder = home / "bench-chat" / "model"
    train_tokenizer(texts * 4, vocab_size=cfg.curate.tokenizer.vocab_size, out_dir=folder)
    tokenizer = load_tokenizer(str(folder))
    model = build_model(cfg.pretrain.model, **tokenizer_ids(tokenizer), seed=0)
    model.generation_config.eos_token_id = turn_stop_ids(tokenizer)
    model.save_pretrained(folder)
    task, model_config = inference(True, tokenizer)
    # An experiment of our own, as the stages log to: its artifacts go to the project folder's
    # mlartifacts/ (removed at the end), where MLflow's default experiment would write ./mlruns.
    with mlflow.start_run(experiment_id=tracking.experiment_id("bench-generate"), run_name="bench-generate"):
        info = mlflow.transformers.log_model(
            transformers_model={"model": model, "tokenizer": tokenizer}, name="model", task=task,
            model_config=model_config, pip_requirements=pip_requirements(),
        )
    mlflow.register_model(info.model_uri, "bench-chat")
    return folder.parent


def first_token(command: list[str], env: dict[str, str]) -> tuple[float, float]:
    """(seconds to the first byte on stdout, seconds to exit) of one fresh process."""
    with tempfile.TemporaryFile() as err:
        start = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=err, bufsize=0)
        first = process.stdout.read(1)
        seen = time.perf_counter()
        rest = process.stdout.read()
        code = process.wait()
        done = time.perf_counter()
        if code != 0 or not first.strip() and not rest.strip():
            err.seek(0)
            sys.exit(f"{' '.join(command)} failed ({code}) or printed nothing:\n{(first + rest).decode()}\n"
                     f"{err.read().decode()[-3000:]}")
    return seen - start, done - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command, alternated")
    parser.add_argument("--max-new-tokens", type=int, default=16, help="the answer's length")
    parser.add_argument("--warm-runs", type=int, default=1, help="untimed runs first, to fill the file cache")
    args = parse_args(parser, runs=1, max_new_tokens=4, warm_runs=0)

    console = Console(width=150)
    home = Path(tempfile.mkdtemp(prefix="smolforge-bench-generate-"))
    try:
        console.print(f"building and registering the tiny chat model in {home} ...")
        folder = build_chat_model(home)
        env = {**user_env(home), "HF_HUB_OFFLINE": "1"}
        tokens = ["--max-new-tokens", str(args.max_new_tokens)]
        commands = {
            BASELINE: [sys.executable, "-c", "import torch, transformers; print('x')"],
            "smolforge --help": [str(SMOLFORGE), "--help"],
            "generate models:/bench-chat/1": [str(SMOLFORGE), "generate", "models:/bench-chat/1", QUESTION, *tokens],
            "generate <folder>": [str(SMOLFORGE), "generate", str(folder), QUESTION, *tokens],
        }
        for _ in range(args.warm_runs):
            first_token(commands["generate models:/bench-chat/1"], env)
        firsts: dict[str, list[float]] = {name: [] for name in commands}
        exits: dict[str, list[float]] = {name: [] for name in commands}
        for _ in range(args.runs):  # alternated: A B C D A B C D ...
            for name, command in commands.items():
                seen, done = first_token(command, env)
                firsts[name].append(seen)
                exits[name].append(done)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    title = f"first output on stdout (s, {args.runs} fresh processes each, alternated; {args.max_new_tokens} new tokens)"
    print_ratio_table(console, title, firsts, BASELINE, ".3f", "command")
    print_ratio_table(console, "process exit (s)", exits, BASELINE, ".3f", "command")
    ttft = statistics.median(firsts["generate models:/bench-chat/1"])
    verdict = "met" if ttft <= TARGET_SECONDS else "NOT met"
    console.print(f"time to first token from the registry: median {ttft:.2f} s; target ≤ {TARGET_SECONDS:.0f} s {verdict}")


if __name__ == "__main__":
    main()
