"""Peak memory and step time of QLoRA vs LoRA vs full fine-tuning on one ~100M-parameter base.

    python bench/finetune.py                       # small preset shape, vocab 8192 (~111M parameters)
    python bench/finetune.py --rounds 3 --steps 4 --threads 2

The base is SmolLM2-135M's shape (the `small` preset: 30 layers, width 576) with an 8,192-token
vocabulary, randomly initialised and saved once; every variant loads it the way the finetune stage
does (`tasks/finetune/adapters.load_base` + `add_adapter`, the same LoRA settings on all seven
projections) and trains on the same random batches. Each run is its own subprocess, so one
variant's memory never counts in another's; the variants run in alternation (A B C D, A B C D,
...) so a change in the machine's load hits all of them alike, and the table shows medians.

What is measured, and how:
* peak RSS (MiB): the kernel's high-water mark of the process's resident memory (`VmHWM` in
  /proc/self/status), reset right before the model is loaded by writing 5 to /proc/self/clear_refs.
  It covers loading, the optimizer state and the activations of the training steps, and leaves out
  the Python, torch and transformers libraries the process had already loaded, which are the same
  for every variant and would only blur the ratios (the "baseline" column shows them).
  `resource.getrusage(...).ru_maxrss` cannot be reset, so it would include whatever happened before;
  it is printed as `ru_maxrss` for reference. torch's allocator statistics exist only for CUDA, so
  on a CPU the operating system's count is the measure; it includes everything the process touched
  (weights, gradients, optimizer state, activations, allocator caches).
* load peak / train peak (MiB): the same mark over loading only, and over the training steps only
  (reset again once the model is loaded; the loaded model itself stays in it). Loading can be the
  larger one: the 4-bit base is quantised from the full-precision checkpoint as it is read.
* step time (s): wall time of one optimizer step (forward, backward, AdamW), median of the timed
  steps after one warm-up step.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = {
    # name: (method, gradient checkpointing)
    "full": ("full", False),
    "lora": ("lora", False),
    "lora+ckpt": ("lora", True),
    "qlora": ("qlora", True),
}


def status_mib(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Make VmHWM equal to the current RSS (Linux >= 4.0)."""
    Path("/proc/self/clear_refs").write_text("5")


def build_base(folder: Path, vocab: int, dtype: str = "float32") -> int:
    import torch

    from smolforge.models.architecture import build_model, count_parameters
    from smolforge.models.config import ModelConfig

    model = build_model(ModelConfig(preset="small"), vocab_size=vocab, bos_id=0, eos_id=1, pad_id=2, seed=0)
    model.to(getattr(torch, dtype)).save_pretrained(folder)
    return count_parameters(model)


def worker(args: argparse.Namespace) -> None:
    import resource

    import torch

    from smolforge.tasks.finetune import adapters
    from smolforge.tasks.finetune.config import FinetuneConfig
    from smolforge.tasks.finetune.train import masked_loss

    if args.threads:
        torch.set_num_threads(args.threads)
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

    baseline = status_mib("VmRSS")
    reset_peak()
    started = time.perf_counter()
    model = adapters.load_base(Path(args.base), config, torch.device("cpu"))
    if method != "full":
        model = adapters.add_adapter(model, config.lora, 0)
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
    print(json.dumps({
        "variant": args.worker,
        "baseline_mib": baseline,
        "peak_mib": max(load_peak, train_peak) - baseline,
        "load_peak_mib": load_peak - baseline,
        "train_peak_mib": train_peak - baseline,
        "loaded_mib": loaded - baseline,
        "weights_mib": stored / 2**20,
        "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "step_s": statistics.median(times[1:]),
        "load_s": load_seconds,
        "trainable": sum(p.numel() for p in params),
        "loss": float(loss / n),
    }))


def run_variant(name: str, base: Path, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable, __file__, "--worker", name, "--base", str(base), "--steps", str(args.steps),
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
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    names = args.variants.split(",")
    with tempfile.TemporaryDirectory(prefix="bench-finetune-") as scratch:
        base = Path(scratch) / "base"
        n_params = build_base(base, args.vocab, args.checkpoint_dtype)
        print(f"base: small preset shape, vocab {args.vocab}: {n_params / 1e6:.1f}M parameters; batch "
              f"{args.batch_size} x {args.seq_len} tokens, LoRA rank {args.rank}, {args.rounds} rounds x {args.steps} steps, "
              f"threads {args.threads or 'default'}, MALLOC_MMAP_THRESHOLD_ {args.mmap_threshold or 'default'}")
        results: dict[str, list[dict]] = {n: [] for n in names}
        for r in range(args.rounds):
            for name in names:
                row = run_variant(name, base, args)
                results[name].append(row)
                print(f"  round {r + 1} {name:10s} peak {row['peak_mib']:7.0f} MiB (load {row['load_peak_mib']:.0f}, "
                      f"train {row['train_peak_mib']:.0f})  step {row['step_s']:6.2f} s", flush=True)

    def med(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    ref = "lora" if "lora" in names else names[0]
    print()
    header = (f"{'variant':10s} {'trainable':>11s} {'weights MiB':>11s} {'peak MiB':>9s} {'x ' + ref:>8s} "
              f"{'load peak':>9s} {'train peak':>10s} {'x ' + ref:>8s} {'step s':>7s} {'x ' + ref:>8s} "
              f"{'ru_maxrss':>9s} {'baseline':>8s}")
    print(header)
    print("-" * len(header))
    for name in names:
        print(
            f"{name:10s} {int(med(name, 'trainable')):>11,d} {med(name, 'weights_mib'):>11.0f} {med(name, 'peak_mib'):>9.0f} "
            f"{med(name, 'peak_mib') / med(ref, 'peak_mib'):>8.2f} {med(name, 'load_peak_mib'):>9.0f} "
            f"{med(name, 'train_peak_mib'):>10.0f} {med(name, 'train_peak_mib') / med(ref, 'train_peak_mib'):>8.2f} "
            f"{med(name, 'step_s'):>7.2f} {med(name, 'step_s') / med(ref, 'step_s'):>8.2f} "
            f"{med(name, 'ru_maxrss_mib'):>9.0f} {med(name, 'baseline_mib'):>8.0f}"
        )
    if "qlora" in names and "lora" in names:
        for what, key in (("peak", "peak_mib"), ("training peak", "train_peak_mib")):
            ratio = med("qlora", key) / med("lora", key)
            print(f"QLoRA {what} / LoRA {what} = {ratio:.2f} ({'meets' if ratio <= 0.6 else 'misses'} the 0.6 target)")


if __name__ == "__main__":
    main()
