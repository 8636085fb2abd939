"""Perplexity evaluation throughput: the evaluate stage's loop against a bare `torch.no_grad()` loop.

    python bench/evaluate.py [--repeats 5] [--docs 64] [--model tiny|small] [--threads N] [--quick]

Same model (the tiny preset's SmolLM3 shape: hidden 128, 4 layers, vocab 4096; `small`: hidden 256
x 6 layers), same batches: documents of 50-900 random tokens cut into windows of 256 by the stage's
own `document_windows` and `make_batches` (8 windows a batch, longest first), built once, before any
timing. The two sides alternate A B, B A, ..., each repeat reading every batch once; tokens/s counts
target tokens. Reports medians, min-max, the ratio of the medians, and the median of the ratios
within each repeat (on a shared machine the paired figure drifts less).

  smolforge   `perplexity.summed_nll`: the loop the `perplexity` evaluation task runs
  bare        `with torch.no_grad():` forward, summed cross-entropy, `.item()` per batch

`--quick` (tests/test_bench.py runs it): 2 repeats over 4 documents; the numbers mean little.
"""

from __future__ import annotations

import argparse
import platform
import random
import time

import torch
import torch.nn.functional as F
from rich.console import Console

from quickmode import parse_args  # bench/, beside this script
from ratios import alternating, print_ratio_table

from smolforge.models.architecture import build_model, count_parameters
from smolforge.models.config import ModelConfig
from smolforge.tasks.evaluate.perplexity import IGNORE_INDEX, document_windows, make_batches, summed_nll

SHAPES = {
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384, max_seq_len=256),
    "small": dict(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2, intermediate_size=768, max_seq_len=256),
}
VOCAB, SEQ_LEN, BATCH = 4096, 256, 8
console = Console()


def bare_loop(model: torch.nn.Module, batches: list[dict[str, torch.Tensor]]) -> tuple[float, int]:
    total, count = 0.0, 0
    with torch.no_grad():
        for b in batches:
            logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
            total += F.cross_entropy(logits.flatten(0, 1).float(), b["targets"].flatten(), ignore_index=IGNORE_INDEX, reduction="sum").item()
            count += int((b["targets"] != IGNORE_INDEX).sum())
    return total, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--docs", type=int, default=64)
    parser.add_argument("--model", choices=sorted(SHAPES), default="tiny")
    parser.add_argument("--threads", type=int, default=None)
    args = parse_args(parser, repeats=2, docs=4)
    if args.threads:
        torch.set_num_threads(args.threads)
    rng = random.Random(0)
    docs = [[rng.randrange(1, VOCAB) for _ in range(rng.randrange(50, 900))] + [2] for _ in range(args.docs)]
    batches = make_batches(document_windows(docs, SEQ_LEN), BATCH, pad_id=0)
    model = build_model(ModelConfig(**SHAPES[args.model]), vocab_size=VOCAB, bos_id=1, eos_id=2, pad_id=0, seed=0).eval()
    sides = {"smolforge": lambda: summed_nll(model, batches), "bare": lambda: bare_loop(model, batches)}
    for run in sides.values():  # warm-up: allocator, kernels
        run()
    rates: dict[str, list[float]] = {name: [] for name in sides}
    results: dict[str, float] = {}
    for name, run in alternating(sides, args.repeats):  # A B, B A, ...
        started = time.perf_counter()
        nll, tokens = run()
        rates[name].append(tokens / (time.perf_counter() - started))
        results[name] = nll / tokens
    if abs(results["smolforge"] - results["bare"]) > 1e-3:
        raise SystemExit(f"the two loops disagree on the loss: {results}")
    tokens = sum(int((b["targets"] != IGNORE_INDEX).sum()) for b in batches)
    title = (
        f"perplexity evaluation, {args.model} model ({count_parameters(model) / 1e6:.2f}M parameters), {len(batches)} "
        f"batches, {tokens:,} target tokens, {args.repeats} repeats, {torch.get_num_threads()} threads (tokens/s)"
    )
    paired = print_ratio_table(console, title, rates, baseline="bare", fmt=",.0f", first_column="loop")
    console.print(f"paired ratio smolforge/bare (median over repeats, each running both sides): {paired:.3f}")
    console.print(f"loss per token {results['smolforge']:.4f} (both loops); {platform.processor() or platform.machine()}, torch {torch.__version__}")


if __name__ == "__main__":
    main()
