"""Peak memory and step time of QLoRA vs LoRA vs full fine-tuning on one ~100M-parameter base.

    python bench/finetune.py                       # small preset shape, vocab 8192 (~111M parameters)
    python bench/finetune.py --rounds 3 --steps 4 --threads 2
    python bench/finetune.py --quick               # smoke run: tiny shape, one round of one step, one thread

The base is SmolLM2-135M's shape (the `small` preset: 30 layers, width 576) with an 8,192-token
vocabulary, randomly initialised and saved once; every variant loads it the way the finetune stage
does (`tasks/finetune/adapters.load_base` + `add_adapter`, the same LoRA settings on all seven
projections) and trains on the same random batches. `qlora` loads the base the stage's
quantisation step saved in 4-bit (`quantize.quantize_base`); that step runs in its own subprocess
(the `quantize` row: its one-time cost, paid once per base and settings), and `qlora-otf`
quantises the fp32 base as it reads it, as QLoRA did before that step existed. Each run is its own
subprocess, so one variant's memory never counts in another's; the variants run in alternation
(A B C D, A B C D, ...) so a change in the machine's load hits all of them alike, and the table
shows medians.

What is measured, and how:
* peak RSS (MiB): the kernel's high-water mark of the process's resident memory (`VmHWM` in
  /proc/self/status), reset right before the model is loaded by writing 5 to /proc/self/clear_refs.
  It covers loading, the optimizer state and the activations of the training steps, and leaves out
  the libraries (Python, torch, transformers' model code, peft, bitsandbytes), which every variant
  imports before that point and which are the same for all (the "baseline" column shows the RSS
  then, "libs" what importing transformers' model code, peft and bitsandbytes added to it; the
  summary gives the ratios with "libs" added back too).
  `resource.getrusage(...).ru_maxrss` cannot be reset, so it would include whatever happened before;
  it is printed as `ru_maxrss` for reference. torch's allocator statistics exist only for CUDA, so
  on a CPU the operating system's count is the measure; it includes everything the process touched
  (weights, gradients, optimizer state, activations, allocator caches).
* load peak / train peak (MiB): the same mark over loading only, and over the training steps only
  (reset again once the model is loaded; the loaded model itself stays in it). Loading can be the
  larger one: `qlora-otf` quantises the full-precision checkpoint as it reads it.
* merge peak (MiB): what the stage does after training (lora, qlora): the adapter saved, the
  trained model and optimizer freed (`train.release_freed_memory`), the full-precision base
  loaded, the adapter merged into it (`adapters.merge_adapter`) and the merged model saved. It is
  measured from the same baseline, so what training left behind counts in it. "stage peak" is the
  largest of the three.
* step time (s): wall time of one optimizer step (forward, backward, AdamW), median of the timed
  steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from quickmode import parse_args  # bench/, beside this script

VARIANTS = {
    # name: (method, gradient checkpointing)
    "quantize": ("qlora", True),  # the one-time quantisation step, no training
    "full": ("full", False),
    "lora": ("lora", False),
    "lora+ckpt": ("lora", True),
    "qlora": ("qlora", True),  # from the saved 4-bit base, as the stage runs it
    "qlora-otf": ("qlora", True),  # quantised on the fly from the fp32 base
}


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Make VmHWM equal to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def build_base(folder: Path, vocab: int, dtype: str = "float32", shape: str = "small") -> int:
    """The random base, with a small tokenizer beside it (the quantisation step saves the tokenizer
    with the 4-bit model; nothing here tokenizes text)."""
    import torch

    from smolforge.models.architecture import build_model, count_parameters
    from smolforge.models.config import ModelConfig
    from smolforge.tasks.curate.tokenizer import train_tokenizer

    model = build_model(ModelConfig(preset=shape), vocab_size=vocab, bos_id=0, eos_id=1, pad_id=2, seed=0)
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    train_tokenizer([Path(__file__).read_text(encoding="utf-8")], vocab_size=min(vocab, 1024), out_dir=folder)
    return count_parameters(model)


def import_libraries() -> None:
    """What every variant imports anyway (peft imports bitsandbytes when it is installed), done
    before the baseline so that no variant's peak carries the libraries' own memory."""
    import bitsandbytes  # noqa: F401
    import peft  # noqa: F401
    from transformers.models.smollm3 import modeling_smollm3  # noqa: F401


def quantize_worker(args: argparse.Namespace) -> None:
    """The quantisation step alone: its peak is paid once per base and settings."""
    from smolforge.tasks.finetune.config import QuantSettings
    from smolforge.tasks.finetune.quantize import quantize_base

    before = status_mib("VmRSS")
    import_libraries()
    baseline = status_mib("VmRSS")
    reset_peak()
    started = time.perf_counter()
    sizes = quantize_base(Path(args.base), QuantSettings(), Path(args.quantized))
    print(json.dumps({
        "variant": "quantize", "baseline_mib": baseline, "libs_mib": baseline - before,
        "load_peak_mib": status_mib("VmHWM") - baseline, "load_s": time.perf_counter() - started, **sizes,
    }))


def worker(args: argparse.Namespace) -> None:
    import resource

    import torch

    from smolforge.tasks.finetune import adapters
    from smolforge.tasks.finetune.config import FinetuneConfig
    from smolforge.tasks.finetune.train import masked_loss, release_freed_memory

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.worker == "quantize":
        quantize_worker(args)
        return
    method, checkpointing = VARIANTS[args.worker]
    config = FinetuneConfig(
        method=method, gradient_checkpointing=checkpointing, device="cpu", max_seq_len=args.seq_len,
        lora={"r": args.rank, "alpha": 2 * args.rank, "dropout": 0.0},
    )
    gen = torch.Generator().manual_seed(0)
    batches = []
    for _ in range(args.steps + 1):
        ids = torch.randint(5, args.vocab, (args.batch_size, args.seq_len), generator=gen)
        labels = ids.clone()
        labels[:, : args.seq_len // 2] = -100  # a prompt half, as in instruction data
        batches.append({"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)})

    before = status_mib("VmRSS")
    import_libraries()
    baseline = status_mib("VmRSS")
    reset_peak()
    started = time.perf_counter()
    quantized = Path(args.quantized) if args.worker == "qlora" else None
    model = adapters.load_base(Path(args.base), config, torch.device("cpu"), quantized)
    if method != "full":
        model = adapters.add_adapter(model, config, Path(args.base))
    model.train()
    load_seconds = time.perf_counter() - started
    loaded = status_mib("VmRSS")
    load_peak = status_mib("VmHWM")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4)
    reset_peak()
    times = []
    for batch in batches:
        started = time.perf_counter()
        loss, n = masked_loss(model, batch)
        (loss / n).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - started)
    train_peak = status_mib("VmHWM")
    stored = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
    trainable = sum(p.numel() for p in params)
    final_loss = float(loss.detach() / n)
    merge_peak, merge_seconds = float("nan"), float("nan")
    if method != "full":  # what the stage does next: free the trained model, merge on the fp32 base
        scratch = Path(tempfile.mkdtemp(prefix="bench-merge-", dir=Path(args.quantized).parent))
        model.save_pretrained(scratch / "adapter")
        del model, params, optimizer, loss, batch, batches
        release_freed_memory()
        reset_peak()
        started = time.perf_counter()
        adapters.merge_adapter(Path(args.base), scratch / "adapter").save_pretrained(scratch / "model")
        merge_peak, merge_seconds = status_mib("VmHWM"), time.perf_counter() - started
        shutil.rmtree(scratch)
    print(json.dumps({
        "variant": args.worker,
        "baseline_mib": baseline,
        "libs_mib": baseline - before,
        "peak_mib": max(load_peak, train_peak) - baseline,
        "stage_peak_mib": max(load_peak, train_peak, 0 if math.isnan(merge_peak) else merge_peak) - baseline,
        "load_peak_mib": load_peak - baseline,
        "train_peak_mib": train_peak - baseline,
        "merge_peak_mib": merge_peak - baseline,
        "merge_s": merge_seconds,
        "loaded_mib": loaded - baseline,
        "weights_mib": stored / 2**20,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_s": statistics.median(times[1:]),
        "load_s": load_seconds,
        "trainable": trainable,
        "loss": final_loss,
    }))


def picked(parser: argparse.ArgumentParser, value: str, known: list[str], option: str) -> list[str]:
    """The comma-separated names of `value`, each one of `known` (else a usage error naming `option`)."""
    names = value.split(",")
    unknown = sorted(set(names) - set(known))
    if unknown:
        parser.error(f"{option}: unknown {unknown}; choose from {', '.join(known)}")
    return names


def run_variant(name: str, base: Path, quantized: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", name, "--base", str(base), "--quantized", str(quantized), "--steps", str(args.steps),
        "--batch-size", str(args.batch_size), "--seq-len", str(args.seq_len), "--rank", str(args.rank),
        "--vocab", str(args.vocab), "--threads", str(args.threads),
    ]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if args.mmap_threshold:
        # glibc serves allocations above this size with their own mmap and unmaps them when freed,
        # so RSS follows the live tensors instead of what the heap kept after the last free.
        env["MALLOC_MMAP_THRESHOLD_"] = str(args.mmap_threshold)
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--worker", choices=sorted(VARIANTS), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--quantized", help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=2, help="Runs of each variant, alternated.")
    parser.add_argument("--steps", type=int, default=3, help="Timed optimizer steps per run (after one warm-up).")
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--seq-len", type=int, default=256)
    parser.add_argument("--rank", type=int, default=16, help="LoRA rank on all seven projections.")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument(
        "--checkpoint-dtype", choices=["float32", "bfloat16"], default="float32",
        help="dtype the base is saved in; published bases are usually bfloat16, which halves what QLoRA reads "
        "while it quantises (LoRA and full still load it as float32)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch threads per run; 0: torch's default.")
    parser.add_argument(
        "--mmap-threshold", type=int, default=0,
        help="Bytes; set glibc's MALLOC_MMAP_THRESHOLD_ in the runs (e.g. 65536) so freed tensors leave RSS; "
        "0: glibc's default, whose dynamic threshold keeps freed multi-MB buffers in the heap.",
    )
    parser.add_argument("--variants", default=",".join(VARIANTS), help="Comma-separated subset of " + ", ".join(VARIANTS))
    parser.add_argument("--model", choices=["small", "tiny"], default="small", help="the base's preset shape")
    args = parse_args(parser, rounds=1, steps=1, seq_len=64, vocab=1024, model="tiny", threads=1)
    if args.worker:
        worker(args)
        return

    names = picked(parser, args.variants, list(VARIANTS), "--variants")
    tuned = [n for n in names if n != "quantize"]
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
        base, quantized = Path(scratch) / "base", Path(scratch) / "base-4bit"
        n_params = build_base(base, args.vocab, args.checkpoint_dtype, args.model)
        print(f"base: {args.model} preset shape, vocab {args.vocab}: {n_params / 1e6:.1f}M parameters; batch "
              f"{args.batch_size} x {args.seq_len} tokens, LoRA rank {args.rank}, {args.rounds} rounds x {args.steps} steps, "
              f"threads {args.threads or 'default'}, MALLOC_MMAP_THRESHOLD_ {args.mmap_threshold or 'default'}")
        results: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(args.rounds):
            # the 4-bit base qlora reads is made by the quantisation step, in its own process
            if "quantize" in names or (r == 0 and "qlora" in names):
                shutil.rmtree(quantized, ignore_errors=True)
                row = run_variant("quantize", base, quantized, args)
                if "quantize" in names:
                    results["quantize"].append(row)
                    print(f"  round {r + 1} quantize   peak {row['load_peak_mib']:7.0f} MiB  {row['load_s']:6.2f} s", flush=True)
            for name in tuned:
                row = run_variant(name, base, quantized, args)
                results[name].append(row)
                print(f"  round {r + 1} {name:10s} peak {row['peak_mib']:7.0f} MiB (load {row['load_peak_mib']:.0f}, "
                      f"train {row['train_peak_mib']:.0f}, merge {row['merge_peak_mib']:.0f})  step {row['step_s']:6.2f} s",
                      flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    ref = "lora" if "lora" in tuned else tuned[0]

    def cells(name: str, key: str, ratio: bool = True) -> str:
        value = med(name, key)
        if math.isnan(value):
            return f"{'-':>9s}" + (f" {'-':>7s}" if ratio else "")
        return f"{value:>9.0f}" + (f" {value / med(ref, key):>7.2f}" if ratio else "")

    print()
    header = (f"{'variant':10s} {'trainable':>11s} {'weights':>8s} {'peak MiB':>9s} {'x ' + ref:>7s} {'load pk':>9s} "
              f"{'train pk':>9s} {'x ' + ref:>7s} {'merge pk':>9s} {'stage pk':>9s} {'x ' + ref:>7s} "
              f"{'step s':>7s} {'x ' + ref:>7s} {'libs':>5s} {'baseline':>8s}")
    print(header)
    print("-" * len(header))
    for name in tuned:
        print(
            f"{name:10s} {int(med(name, 'trainable')):>11,d} {med(name, 'weights_mib'):>8.0f} {cells(name, 'peak_mib')} "
            f"{cells(name, 'load_peak_mib', False)} {cells(name, 'train_peak_mib')} {cells(name, 'merge_peak_mib', False)} "
            f"{cells(name, 'stage_peak_mib')} {med(name, 'step_s'):>7.2f} {med(name, 'step_s') / med(ref, 'step_s'):>7.2f} "
            f"{med(name, 'libs_mib'):>5.0f} {med(name, 'baseline_mib'):>8.0f}"
        )
    if "quantize" in names:
        peak = med("quantize", "load_peak_mib")
        print(f"{'quantize':10s} once per base and settings: peak {peak:.0f} MiB ({peak / med(ref, 'peak_mib'):.2f}x {ref}'s "
              f"peak), {med('quantize', 'load_s'):.1f} s; fp32 file {med('quantize', 'source_mib'):.0f} MiB -> 4-bit file "
              f"{med('quantize', 'quantized_mib'):.0f} MiB (libs {med('quantize', 'libs_mib'):.0f})")
    if "lora" in tuned:
        for variant in ("qlora", "qlora-otf"):
            if variant not in tuned:
                continue
            for what, key in (("peak", "peak_mib"), ("training peak", "train_peak_mib"), ("stage peak", "stage_peak_mib")):
                ratio = med(variant, key) / med("lora", key)
                with_libs = (med(variant, key) + med(variant, "libs_mib")) / (med("lora", key) + med("lora", "libs_mib"))
                print(f"{variant} {what} / lora {what} = {ratio:.2f} ({'meets' if ratio <= 0.6 else 'misses'} the 0.6 "
                      f"target); {with_libs:.2f} with the libraries counted in")


if __name__ == "__main__":
    main()
