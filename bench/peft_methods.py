"""All six fine-tuning methods on one ~110M-parameter base: trainable parameters, peak memory, step
time and held-out loss, as one table.

    python bench/peft_methods.py                    # small preset shape, vocab 8192 (~111M parameters)
    python bench/peft_methods.py --rounds 2 --steps 20 --threads 2
    python bench/peft_methods.py --base FOLDER      # any transformers folder with a chat tokenizer
    python bench/peft_methods.py --quick            # smoke run: tiny shape, one round of two steps, one thread

Every method runs the stage's own function (`tasks/finetune/train.finetune_model`): the base loaded
as the method needs it, peft's adapter for the method, the loop, the validation loss on held-out
records, and the save (merge for lora, qlora and ia3; base + adapter for prefix and prompt; the
whole model for full). qlora reads the base the quantisation step saved in 4-bit, made once before
the runs, as the stage does. The data is made here: arithmetic questions in words ("What is seven
plus five?" -> "Seven plus five is twelve."), a task whose answers follow from the question, so
the held-out loss measures learning rather than memorising; the same seeded split for every method.

Each run is its own subprocess, so no method's memory counts in another's, and the methods run in
alternation (A B C D E F, then F E D C B A, ...) so a change in the machine's load hits all alike;
the table shows medians over rounds.

What is measured, and how (the memory figures are bench/finetune.py's):
* trainable: parameters with gradients (peft's adapter, or every weight for full), and their
  share of the base's parameters.
* peak MiB: the kernel's high-water mark of the process's resident memory (`VmHWM`), reset right
  before the stage's function starts (after the libraries are imported) and read at the end: it
  covers loading, training, evaluating and saving (a merge loads the full-precision base again).
  "train pk" is the same mark over the training steps and evaluations only (reset once the base is
  loaded and first evaluated, read at the last evaluation: the loaded model stays in it).
* step s: median wall time of one optimizer step (forward and backward over the batch, clipping,
  AdamW), from the stage's own `step_seconds`.
* held-out loss: mean loss per answer token on the held-out records before training and at the
  best evaluation (the stage keeps the best weights), each method at the learning rate its authors
  use (`LR`), since one rate for all would rank the rates, not the methods.

A random base learns nothing from a soft prompt that a pretrained one would: prefix and prompt
tuning steer what the model already knows. `--base` runs the same table on a pretrained folder.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from finetune import build_base, import_libraries, picked, reset_peak, status_mib  # bench/, beside this script
from quickmode import parse_args

METHODS = ["full", "lora", "qlora", "ia3", "prefix", "prompt"]
# Learning rates from each method's paper or peft's examples: full fine-tuning ~1e-5..1e-4, LoRA
# 1e-4..1e-3 (higher for small models), (IA)³ 3e-3, prefix tuning 1e-3..1e-2 (Li & Liang used 5e-5
# with a reparametrisation on GPT-2, peft's examples 1e-2), prompt tuning 0.3 (Lester et al.).
LR = {"full": 1e-4, "lora": 1e-3, "qlora": 1e-3, "ia3": 3e-3, "prefix": 1e-2, "prompt": 0.3}
NUMBERS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
           "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen"]


def arithmetic_records(n: int, seed: int = 0) -> list[dict[str, str]]:
    """Instruction records whose answer follows from the question: sums and differences in words."""
    rng = random.Random(seed)
    records = []
    for _ in range(n):
        a, b = rng.randrange(10), rng.randrange(10)
        if rng.random() < 0.5:
            question, answer = f"What is {NUMBERS[a]} plus {NUMBERS[b]}?", f"{NUMBERS[a]} plus {NUMBERS[b]} is {NUMBERS[a + b]}."
        else:
            a, b = max(a, b), min(a, b)
            question, answer = f"What is {NUMBERS[a]} minus {NUMBERS[b]}?", f"{NUMBERS[a]} minus {NUMBERS[b]} is {NUMBERS[a - b]}."
        records.append({"instruction": question, "output": answer.capitalize()})
    return records


def config_for(method: str, args: argparse.Namespace):
    from smolforge.tasks.finetune.config import FinetuneConfig

    return FinetuneConfig(
        method=method, device="cpu", steps=args.steps, eval_every=args.steps, batch_size=args.batch_size,
        max_seq_len=args.seq_len, lr=LR[method], warmup_steps=1, patience=None, sample_prompts=0,
        val_fraction=0.2, max_val_records=args.val_records, lora={"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.0},
        prefix={"num_virtual_tokens": args.virtual_tokens},
        prompt={"num_virtual_tokens": args.virtual_tokens, "init_text": "Answer the arithmetic question in words."},
    )


def worker(args: argparse.Namespace) -> None:
    import torch

    from smolforge.tasks.finetune.train import finetune_model

    if args.threads:
        torch.set_num_threads(args.threads)
    config = config_for(args.worker, args)
    import_libraries()
    marks: dict[str, float] = {}

    def on_eval(step: int, _loss: float) -> None:
        if step == 0:  # loaded and evaluated once: the training mark starts here
            marks["load"] = status_mib("VmHWM")
            reset_peak()
        else:
            marks["train"] = status_mib("VmHWM")

    baseline = status_mib("VmRSS")
    reset_peak()
    out = Path(args.scratch) / f"out-{args.worker}"
    quantized = Path(args.scratch) / "base-4bit" if args.worker == "qlora" else None
    result = finetune_model(config, Path(args.base), [Path(args.data)], out, on_eval=on_eval, quantized=quantized)
    end = status_mib("VmHWM")
    shutil.rmtree(out)
    print(json.dumps({
        "method": args.worker, "trainable": result["trainable_params"],
        "peak_mib": max(marks["load"], marks.get("train", 0), end) - baseline,
        "train_peak_mib": marks.get("train", float("nan")) - baseline,
        "step_s": result["step_seconds"], "first_val_loss": result["first_val_loss"], "val_loss": result["val_loss"],
        "merged": result["merged"],
    }))


def run(method: str, args: argparse.Namespace, base: Path, data: Path, scratch: Path) -> dict:
    cmd = [sys.executable, __file__, "--worker", method, "--base", str(base), "--data", str(data), "--scratch", str(scratch),
           "--steps", str(args.steps), "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len),
           "--rank", str(args.rank), "--virtual-tokens", str(args.virtual_tokens), "--val-records", str(args.val_records),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{method} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def base_parameters(folder: Path) -> int:
    """The base's parameter count, from its config (built on the meta device: nothing allocated).
    A 4-bit model counts its packed weights as fewer parameters, so every method's share is taken
    of this one count."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    return sum(p.numel() for p in model.parameters())


def prepare(args: argparse.Namespace, scratch: Path) -> tuple[Path, Path, str]:
    """The base (made here, or --base), the data file and the 4-bit copy qlora reads."""
    from smolforge.tasks.finetune.config import QuantSettings
    from smolforge.tasks.finetune.quantize import quantize_base

    data = scratch / "arithmetic.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in arithmetic_records(args.records)), encoding="utf-8")
    if args.base:
        base, what = Path(args.base), f"base {args.base}"
    else:
        base = scratch / "base"
        n = build_base(base, args.vocab, shape=args.model)
        what = f"random base, {args.model} preset shape, vocab {args.vocab}: {n / 1e6:.1f}M parameters"
    quantize_base(base, QuantSettings(), scratch / "base-4bit")
    return base, data, what


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=METHODS, help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    parser.add_argument("--scratch", help=argparse.SUPPRESS)
    parser.add_argument("--base", help="A transformers folder to fine-tune instead of a random base of --model's shape.")
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each method, alternated.")
    parser.add_argument("--steps", type=int, default=20, help="Optimizer steps per run.")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128, help="finetune.max_seq_len (soft prompts included).")
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank on all seven projections.")
    parser.add_argument("--virtual-tokens", type=int, default=16, help="Prefix and soft-prompt length.")
    parser.add_argument("--records", type=int, default=400, help="Arithmetic records made (a fifth held out, at most --val-records).")
    parser.add_argument("--val-records", type=int, default=32)
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--model", choices=["small", "tiny"], default="small", help="the random base's preset shape")
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run; 0: torch's default.")
    parser.add_argument("--methods", default=",".join(METHODS), help="Comma-separated subset of " + ", ".join(METHODS))
    args = parse_args(parser, rounds=1, steps=2, vocab=1024, model="tiny", threads=1, records=60, val_records=8)
    if args.worker:
        worker(args)
        return
    names = picked(parser, args.methods, METHODS, "--methods")

    results: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench-peft-") as tmp:
        scratch = Path(tmp)
        base, data, what = prepare(args, scratch)
        total = base_parameters(base)
        print(f"{what}; {args.records} arithmetic records, batch {args.batch_size}, {args.steps} steps, "
              f"{args.rounds} rounds, threads {args.threads or 'default'}", flush=True)
        for r in range(args.rounds):
            for name in names if r % 2 == 0 else reversed(names):
                row = run(name, args, base, data, scratch)
                results[name].append(row)
                print(f"  round {r + 1} {name:7s} peak {row['peak_mib']:7.0f} MiB  step {row['step_s']:6.3f} s  "
                      f"held-out {row['first_val_loss']:.3f} -> {row['val_loss']:.3f}", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    ref = "lora" if "lora" in names else names[0]
    print()
    header = (f"{'method':7s} {'trainable':>12s} {'% of all':>8s} {'peak MiB':>9s} {'x ' + ref:>7s} {'train pk':>9s} "
              f"{'step s':>7s} {'x ' + ref:>7s} {'held-out before':>15s} {'after':>7s} {'merged':>6s}")
    print(header)
    print("-" * len(header))
    for name in names:
        print(f"{name:7s} {int(med(name, 'trainable')):>12,d} {100 * med(name, 'trainable') / total:>8.3f} "
              f"{med(name, 'peak_mib'):>9.0f} {med(name, 'peak_mib') / med(ref, 'peak_mib'):>7.2f} {med(name, 'train_peak_mib'):>9.0f} "
              f"{med(name, 'step_s'):>7.3f} {med(name, 'step_s') / med(ref, 'step_s'):>7.2f} "
              f"{med(name, 'first_val_loss'):>15.3f} {med(name, 'val_loss'):>7.3f} {'yes' if med(name, 'merged') else 'no':>6s}")
    for what, key in (("held-out loss", "val_loss"), ("peak memory", "peak_mib"), ("step time", "step_s"), ("trainable", "trainable")):
        order = sorted(names, key=lambda n: med(n, key))
        print(f"ranking by {what} (lowest first): {' < '.join(order)}")


if __name__ == "__main__":
    main()
