"""Merging: the stage's merge step against mergekit's `run_merge` called directly, and the model-soup
claim measured.

    python bench/merge.py [--repeats 5] [--model small|tiny] [--method linear] [--tunes 4] [--quick]
    python bench/merge.py --quick    # smoke run: --repeats 2 --model tiny --vocab 4096 --tunes 3 --steps 8 --base-steps 8

1. Merge time. Three models of the `small` shape (SmolLM2-135M's: hidden 576, 30 layers, vocab
   49,152; ~135M parameters, 540 MB each in float32): a base and two "fine-tunes" (the base plus
   small noise), saved once. The sides alternate A B, B A, ...:

     stage     `merge_step` as the flow calls it on a cache miss: the key, the mergekit call, the
               manifest (every file hashed), the atomic rename into a fresh artifact store
     direct    `run_merge(MergeConfiguration.model_validate(cfg), out, options=...)` on the same
               configuration and ingredients, into a fresh folder

   Reports medians, min-max, the ratio of the medians and the median of the per-repeat ratios. The
   target: stage <= 1.1x direct. `linear` (the soup the greedy loop makes) by default; `ties`
   spends ~70 s a merge on this shape in mergekit's magnitude sparsification, which hides any
   overhead of the stage.

2. The soup claim (Wortsman et al. 2022): a tiny base trained briefly on templated questions, then
   `--tunes` full fine-tunes of it with different seeds and learning rates on one split, held-out
   selection and test records that none of them saw; the greedy soup (chosen on selection) against
   the best single ingredient (chosen on selection) and the uniform soup of all, on test. A toy
   task on a toy model: the row says what happened here, not what soups do at scale.

`--quick` (tests/test_bench.py runs it): the `tiny` shape with a 4,096 vocabulary, 2 repeats, 3 fine-tunes
of 8 steps; the numbers mean little.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
from pathlib import Path

import torch
import transformers
from rich.console import Console
from rich.table import Table

from quickmode import parse_args  # bench/, beside this script
from ratios import alternating, print_ratio_table

from smolforge.artifacts import ArtifactRef
from smolforge.models.architecture import build_model, count_parameters
from smolforge.models.config import ModelConfig, ModelShape
from smolforge.runtime import Runtime
from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer
from smolforge.tasks.finetune.config import FinetuneConfig
from smolforge.tasks.finetune.train import finetune_model
from smolforge.tasks.merge.config import METHODS, MergeMethod
from smolforge.tasks.merge.mergekit_run import mergekit_config, mergekit_version, run_mergekit
from smolforge.tasks.merge.prefect_tasks import merge_step
from smolforge.tasks.merge.score import score_model, write_heldout
from smolforge.tasks.merge.soup import greedy_soup

console = Console()
THINGS = "mill river bridge boat barn gate tower well cart road lamp hill".split()
COLOURS = "red blue green white black grey brown gold".split()


def make_ingredients(root: Path, shape: str, vocab: int) -> tuple[list[ArtifactRef], ArtifactRef, int]:
    """A base and two noisy copies, each an artifact-like folder holding `model/` and a tokenizer
    (the merge copies it, as the stage's merges do)."""
    model = build_model(ModelConfig(preset=shape), vocab_size=vocab, bos_id=1, eos_id=2, pad_id=0, seed=0)
    train_tokenizer([" ".join(THINGS + COLOURS)] * 20, vocab_size=300, out_dir=root / "tok")
    tok = load_tokenizer(str(root / "tok"))
    refs = []
    for i in range(3):
        if i:
            with torch.no_grad():
                for p in model.parameters():
                    p.add_(torch.randn_like(p) * 1e-3)
        model.save_pretrained(root / f"m{i}" / "model")
        tok.save_pretrained(root / f"m{i}" / "model")
        refs.append(ArtifactRef(kind="bench-model", key=f"m{i}", uri=str(root / f"m{i}")))
    return refs[1:], refs[0], count_parameters(model)


def time_merges(args: argparse.Namespace, root: Path) -> None:
    tunes, base, parameters = make_ingredients(root, args.model, args.vocab)
    method = MergeMethod(method=args.method, **({"density": 0.5} if args.method in ("ties", "dare_ties", "dare_linear") else {}))
    needs_base = METHODS[method.method].needs_base
    config = mergekit_config(method, [t.path / "model" for t in tunes], base.path / "model" if needs_base else None, "float32")
    version = mergekit_version()

    def stage(i: int) -> None:
        runtime = Runtime(root=str(root / f"store{i}"))
        merge_step.fn(tunes, method, base if needs_base else None, "float32", version, runtime)
        shutil.rmtree(root / f"store{i}")

    def direct(i: int) -> None:
        run_mergekit(config, root / f"direct{i}")
        shutil.rmtree(root / f"direct{i}")

    sides = {"stage": stage, "direct": direct}
    for run in sides.values():  # warm-up: imports, the page cache
        run(-1)
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for n, (name, run) in enumerate(alternating(sides, args.repeats)):  # A B, B A, ...
        started = time.perf_counter()
        run(n)
        seconds[name].append(time.perf_counter() - started)
    title = (
        f"merge time, {args.method} of 2 models{' on a base' if needs_base else ''}, {args.model} shape "
        f"({parameters / 1e6:.1f}M parameters), {args.repeats} repeats, {torch.get_num_threads()} threads (s)"
    )
    paired = print_ratio_table(console, title, seconds, baseline="direct", fmt=".3f", first_column="side")
    console.print(f"paired ratio stage/direct (median over repeats, each running both sides): {paired:.3f}  (target <= 1.1)")


def records(n: int) -> list[dict]:
    rng = random.Random(0)
    colour = {t: rng.choice(COLOURS) for t in THINGS}
    forms = ["What colour is the {}?", "Which colour has the {}?", "Tell me the colour of the {}.", "The {}: what colour?"]
    return [
        {"instruction": forms[i % len(forms)].format(THINGS[i % len(THINGS)]), "input": "",
         "output": f"The {THINGS[i % len(THINGS)]} is {colour[THINGS[i % len(THINGS)]]}."}
        for i in range(n)
    ]


def soup_claim(args: argparse.Namespace, root: Path) -> None:
    root.mkdir(parents=True)
    data = root / "qa.jsonl"
    rows = records(160)
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    train_tokenizer([f"{r['instruction']} {r['output']}" for r in rows] * 3, vocab_size=300, out_dir=root / "tok")
    tok = load_tokenizer(str(root / "tok"))
    shape = ModelShape(hidden_size=64, num_layers=2, num_heads=2, num_kv_heads=1, intermediate_size=128,
                       rope_theta=10_000.0, nope_every=0, max_seq_len=96)
    build_model(shape, vocab_size=len(tok), bos_id=tok.bos_token_id, eos_id=tok.eos_token_id, pad_id=tok.pad_token_id,
                seed=0).save_pretrained(root / "init")
    tok.save_pretrained(root / "init")
    common = dict(method="full", batch_size=8, warmup_steps=2, eval_every=8, patience=None, max_seq_len=96, max_val_records=16,
                  val_fraction=0.2, heldout_records=48, sample_prompts=0, threads=1)
    # a shared base: trained a little, so the fine-tunes start from one basin (as soups assume)
    finetune_model(FinetuneConfig(**common, lr=3e-3, steps=args.base_steps, seed=100), root / "init", [data], root / "base")
    base = root / "base" / "model"
    write_heldout([data], tok, FinetuneConfig(**common).split_settings(), root)
    tunes = {}
    for i in range(args.tunes):
        lr = (1e-3, 3e-3, 1e-2)[i % 3]
        finetune_model(FinetuneConfig(**common, lr=lr, steps=args.steps, seed=i), base, [data], root / f"tune{i}")
        tunes[f"seed{i}-lr{lr:g}"] = root / f"tune{i}" / "model"
    scores = {label: score_model(folder, root) for label, folder in tunes.items()}

    def make_soup(labels: list[str]) -> Path:
        if len(labels) == 1:
            return tunes[labels[0]]
        out = root / ("soup-" + "+".join(sorted(labels)))
        if not out.exists():
            run_mergekit(mergekit_config(MergeMethod(method="linear"), [tunes[x] for x in labels], None, "float32"), out)
        return out

    greedy = greedy_soup([(k, v["selection_loss"]) for k, v in scores.items()], make_soup,
                         lambda folder: score_model(folder, root)["selection_loss"])
    best = min(scores, key=lambda k: scores[k]["selection_loss"])
    uniform = score_model(make_soup(list(tunes)), root)
    chosen = score_model(greedy.soup, root)
    table = Table(
        title=f"soup claim on held-out test records: {args.tunes} full fine-tunes of one base ({args.steps} steps each), "
        "assistant-token loss, lower is better",
        title_justify="left",
    )
    for col in ("model", "chosen on", "selection loss", "test loss"):
        table.add_column(col, justify="left" if col in ("model", "chosen on") else "right")
    table.add_row(f"greedy soup ({' + '.join(greedy.ingredients)})", "selection", f"{chosen['selection_loss']:.4f}", f"{chosen['test_loss']:.4f}")
    table.add_row(f"best ingredient ({best})", "selection", f"{scores[best]['selection_loss']:.4f}", f"{scores[best]['test_loss']:.4f}")
    table.add_row("uniform soup of all", "-", f"{uniform['selection_loss']:.4f}", f"{uniform['test_loss']:.4f}")
    table.add_row("base (no fine-tuning)", "-", *(f"{v:.4f}" for v in (lambda s: (s["selection_loss"], s["test_loss"]))(score_model(base, root))))
    console.print(table)
    verdict = "beats" if chosen["test_loss"] < scores[best]["test_loss"] else "does not beat"
    console.print(f"the greedy soup {verdict} the best single ingredient on test "
                  f"({chosen['test_loss']:.4f} vs {scores[best]['test_loss']:.4f}; {scores[best]['test_records']:.0f} records)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--model", choices=("tiny", "small"), default="small")
    parser.add_argument("--vocab", type=int, default=49_152, help="vocabulary of the timed models (SmolLM2's: 49,152)")
    parser.add_argument("--method", default="linear", choices=("linear", "slerp", "task_arithmetic", "ties", "dare_ties", "dare_linear"))
    parser.add_argument("--tunes", type=int, default=4)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--base-steps", type=int, default=30)
    parser.add_argument("--threads", type=int, default=None)
    args = parse_args(parser, repeats=2, model="tiny", vocab=4096, tunes=3, steps=8, base_steps=8)
    if args.threads:
        torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()  # a bar per save and load would bury the tables
    with tempfile.TemporaryDirectory(prefix="bench-merge-") as tmp:
        time_merges(args, Path(tmp) / "time")
        soup_claim(args, Path(tmp) / "soup")


if __name__ == "__main__":
    main()
