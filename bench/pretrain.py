"""Pretraining throughput: smolforge's stage loop against a bare PyTorch loop and transformers' Trainer.

    python bench/pretrain.py [--repeats 5] [--steps 20] [--warmup 10] [--model tiny|small|both] [--threads N] [--quick]

Same model (SmolLM3 shape of the tiny preset: hidden 128, 4 layers, 4 heads / 2 KV, FFN 384, vocab
4096; `small` is hidden 256 x 6 layers, FFN 768), same batches (8 x 128 tokens, packed documents with
intra-document masks and restarting positions), same optimizer (smolforge's `build_optimizer`),
same device (CPU). Variants run alternated (A B C ... A B C ...) so slow and fast stretches of the
shared machine hit all of them; each one builds a fresh model from the same seed, runs `--warmup`
untimed steps, then times `--steps` steps. Reports medians, min-max and ratios of the medians.

Variants:
  smolforge/noop    `train_stage` (the pretraining task's loop) logging to a no-op callback
  smolforge/mlflow  the same, logging with `mlflow.log_metrics` to a local sqlite store every
                    `log_every` (10) steps, as the task does
  bare/adamw        forward, loss, backward, clip, step, zero_grad on pre-built batches and masks
  bare/muon         the same with `optimizer.name: muon`
  smolforge/compiled  `train_stage` with `compile: true` (torch.compile of forward + loss), logging
                    to MLflow (with --compile)
  trainer/compiled  `Trainer` with `torch_compile=True` (with --compile)
  trainer           transformers `Trainer` on a Dataset of the same input_ids / unshifted labels /
                    4-D masks / position ids, the same optimizer (constant LR), max_grad_norm 1.0

Everything goes into a temporary folder that is removed at the end. MLFLOW_TRACKING_URI is ignored.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from quickmode import parse_args  # bench/, beside this script
from rich.console import Console
from rich.table import Table

from smolforge.device import measure_peak_flops
from smolforge.models.architecture import build_model, count_parameters, flops_per_token
from smolforge.models.config import ModelConfig, OptimizerConfig
from smolforge.models.masking import document_labels, packed_attention_inputs
from smolforge.models.optim import build_optimizer
from smolforge.tasks.curate.documents import Doc
from smolforge.tasks.curate.pack import pack_documents
from smolforge.tasks.curate.tokenizer import load_tokenizer, train_tokenizer
from smolforge.tasks.train import checkpoint as ckpt
from smolforge.tasks.train.config import PretrainConfig
from smolforge.tasks.train.data import IGNORE_INDEX, CorpusSources, plan_stages, step_batches
from smolforge.tasks.train.loop import StageRun, train_stage
from smolforge.tasks.train.schedule import StageSchedule

console = Console()
SEQ, BATCH, VOCAB, LOG_EVERY = 128, 8, 4096, 10
SHAPES = {
    "tiny": dict(hidden_size=128, num_layers=4, num_heads=4, num_kv_heads=2, intermediate_size=384, max_seq_len=256),
    "small": dict(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2, intermediate_size=768, max_seq_len=256),
}


# --- data ------------------------------------------------------------------------------------------


def make_corpus(root: Path) -> CorpusSources:
    """Two packed sources of synthetic documents (30-150 made-up words each), a 4096-token BPE."""
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 9))) for _ in range(3000)]
    weights = [1 / (i + 1) for i in range(len(words))]  # Zipf-like
    texts = [" ".join(rng.choices(words, weights, k=rng.randint(30, 150))) + "." for _ in range(1600)]
    train_tokenizer(texts, vocab_size=VOCAB, out_dir=root / "tok")
    tok = load_tokenizer(str(root / "tok"))
    folders = {}
    for name, part in (("a", texts[:800]), ("b", texts[800:])):
        docs = [Doc(id=f"{name}/{i}", source=name, text=t) for i, t in enumerate(part)]
        pack_documents(docs, tok, root / name, val_fraction=0.05)
        folders[name] = root / name
    return CorpusSources.from_folders(folders, tokenizer=str(root / "tok"))


def make_config(total_steps: int) -> PretrainConfig:
    return PretrainConfig(
        # a short second stage only so the first is not the decay stage (no warmup/decay conflict)
        stages=[
            {"name": "bench", "steps": total_steps, "mixture": {"a": 1, "b": 1}, "seq_len": SEQ},
            {"name": "after", "steps": 10, "mixture": {"a": 1, "b": 1}, "seq_len": SEQ},
        ],
        batch_size=BATCH,
        schedule={"warmup_steps": 10},
        checkpoint={"every_steps": 10**6, "keep": 2},  # only the stage-start and stage-end saves, untimed
        eval_every=10**6,
        log_every=LOG_EVERY,
    )


# --- variants --------------------------------------------------------------------------------------


class Ctx:
    """What every variant shares: the base model, the plan, the pre-built batches and masks."""

    def __init__(self, shape: str, sources: CorpusSources, warmup: int, steps: int, tmp: Path, peak: float):
        self.shape, self.warmup, self.steps, self.tmp, self.peak = shape, warmup, steps, tmp, peak
        self.total = warmup + steps
        self.cfg = make_config(self.total)
        plans = plan_stages(self.cfg, sources)
        self.plan, self.schedule = plans[0], StageSchedule.from_plans(plans, self.cfg.schedule)
        self.base = build_model(ModelConfig(**SHAPES[shape]), vocab_size=VOCAB, bos_id=0, eos_id=sources.eos_id, pad_id=0, seed=0)
        self.flops_per_token = flops_per_token(self.base.config, SEQ)
        self.batches = [step_batches(self.plan, i, self.cfg.seed)[0] for i in range(self.total)]
        attn = self.base.config._attn_implementation
        self.packed = [packed_attention_inputs(b.doc_ids, attn, torch.float32) for b in self.batches]
        self.counter = 0

    def model(self) -> torch.nn.Module:
        return copy.deepcopy(self.base)

    def fresh_dir(self, what: str) -> Path:
        self.counter += 1
        path = self.tmp / f"{self.shape}-{what}-{self.counter}"
        path.mkdir(parents=True)
        return path


def run_smolforge(ctx: Ctx, log_to_mlflow: bool, compile_model: bool = False) -> dict:
    """`train_stage` for warmup + steps steps; the timer spans the log calls at step `warmup` and at
    the last step, so it covers exactly `steps` steps (with their `steps / log_every` log calls)."""
    import mlflow

    model = ctx.model()
    optimizer = build_optimizer(model, OptimizerConfig(name="adamw", lr=0.003))
    stamps: dict[int, float] = {}

    def sink(metrics, step):  # noqa: ANN001
        return None

    if log_to_mlflow:
        active = mlflow.start_run(run_name=f"bench-{ctx.shape}")

        def sink(metrics, step):  # noqa: ANN001, F811
            mlflow.log_metrics(metrics, step=step)

    def log(metrics, step):  # noqa: ANN001
        if "loss" in metrics:
            stamps[step] = time.perf_counter()
        sink(metrics, step)

    run = StageRun(
        model=model, optimizer=optimizer, schedule=ctx.schedule, config=ctx.cfg.model_copy(update={"compile": compile_model}),
        checkpoints=ctx.fresh_dir("ck"), device=torch.device("cpu"), flops_per_token=ctx.flops_per_token,
        peak_flops=ctx.peak, log=log,
    )
    try:
        train_stage(run, ctx.plan, ckpt.TrainState(stage="bench"))
    finally:
        if log_to_mlflow:
            mlflow.end_run()
    if run.events:
        console.print(f"[red]warning: instability events in the smolforge run: {run.events}")
    seconds = stamps[ctx.total] - stamps[ctx.warmup]
    return {"step_s": seconds / ctx.steps}


def run_bare(ctx: Ctx, optimizer_name: str) -> dict:
    """forward, loss, backward, clip, step, zero_grad on the pre-built batches and masks. Time stamps
    around `optimizer.step()` give the step alone (perf_counter costs well under a microsecond)."""
    model = ctx.model()
    model.train()
    optimizer = build_optimizer(model, OptimizerConfig(name=optimizer_name, lr=0.003))
    params = [p for group in optimizer.param_groups for p in group["params"]]
    opt_times = []
    for i in range(ctx.total):
        if i == ctx.warmup:
            start = time.perf_counter()
        batch, packed = ctx.batches[i], ctx.packed[i]
        out = model(input_ids=batch.input_ids, **packed)
        loss = F.cross_entropy(out.logits.float().flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE_INDEX)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        t0 = time.perf_counter()
        optimizer.step()
        if i >= ctx.warmup:
            opt_times.append(time.perf_counter() - t0)
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - start
    return {"step_s": seconds / ctx.steps, "opt_s": statistics.median(opt_times)}


class _Packed(torch.utils.data.Dataset):
    """The same rows as the other variants: input_ids, unshifted labels (transformers' loss shifts
    them; the first token of each later document is -100, so no target crosses a document boundary),
    the 4-D boolean intra-document mask and the restarting position ids."""

    def __init__(self, ctx: Ctx):
        self.rows = []
        for batch, packed in zip(ctx.batches, ctx.packed):
            labels = document_labels(batch.input_ids, batch.doc_ids, IGNORE_INDEX)
            for r in range(batch.input_ids.shape[0]):
                self.rows.append(
                    {
                        "input_ids": batch.input_ids[r],
                        "labels": labels[r],
                        "attention_mask": packed["attention_mask"][r],
                        "position_ids": packed["position_ids"][r],
                    }
                )

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def run_trainer(ctx: Ctx, compile_model: bool = False) -> dict:
    from transformers import Trainer, TrainerCallback, TrainingArguments

    stamps: dict[int, float] = {}

    class Stamp(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
            stamps[state.global_step] = time.perf_counter()

    model = ctx.model()
    optimizer = build_optimizer(model, OptimizerConfig(name="adamw", lr=0.003))
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    args = TrainingArguments(
        output_dir=str(ctx.fresh_dir("trainer")),
        per_device_train_batch_size=BATCH,
        max_steps=ctx.total,
        max_grad_norm=1.0,
        logging_strategy="steps",
        logging_steps=10**6,
        eval_strategy="no",
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        remove_unused_columns=False,
        torch_compile=compile_model,
        seed=0,
    )
    trainer = Trainer(
        model=model, args=args, train_dataset=_Packed(ctx), optimizers=(optimizer, scheduler), callbacks=[Stamp()]
    )
    trainer.train()
    return {"step_s": (stamps[ctx.total] - stamps[ctx.warmup]) / ctx.steps}


# --- what the loop does besides the bare step ------------------------------------------------------


def loop_costs(ctx: Ctx, n: int = 30) -> dict[str, float]:
    """Median seconds of the per-step extras of `train_stage`, one at a time."""
    import mlflow

    def med(fn, reps: int = n) -> float:  # noqa: ANN001
        times = []
        for i in range(reps):
            t0 = time.perf_counter()
            fn(i)
            times.append(time.perf_counter() - t0)
        return statistics.median(times)

    model = ctx.model()
    out: dict[str, float] = {}
    out["step_batches (data read)"] = med(lambda i: step_batches(ctx.plan, i % ctx.total, ctx.cfg.seed))
    attn = model.config._attn_implementation
    out["packed_attention_inputs (mask+positions)"] = med(
        lambda i: packed_attention_inputs(ctx.batches[i % ctx.total].doc_ids, attn, torch.float32)
    )
    out["n_targets (labels != -100).sum()"] = med(lambda i: ctx.batches[i % ctx.total].n_targets)
    loss = F.cross_entropy(model(input_ids=ctx.batches[0].input_ids).logits.flatten(0, 1), ctx.batches[0].labels.flatten())
    out["loss.item()"] = med(lambda i: loss.item(), 200)
    loss.backward()
    params = list(model.parameters())
    clip_tensor = med(lambda i: torch.nn.utils.clip_grad_norm_(params, 1.0))
    clip_float = med(lambda i: float(torch.nn.utils.clip_grad_norm_(params, 1.0)))
    out["float(grad_norm) (vs tensor)"] = clip_float - clip_tensor
    out["clip_grad_norm_ (in both loops)"] = clip_tensor
    metrics = {"loss": 1.0, "lr": 1e-3, "grad_norm": 1.0, "tokens_per_s": 1e4, "mfu": 0.1, "tokens": 1e5}
    with mlflow.start_run(run_name="bench-costs"):
        out["mlflow.log_metrics (per log call)"] = med(lambda i: mlflow.log_metrics(metrics, step=i), 20)
    return out


# --- main ------------------------------------------------------------------------------------------


def _fmt_rate(x: float) -> str:
    return f"{x:,.0f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="alternated rounds of all variants")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (multiple of 10)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps per run first (multiple of 10)")
    parser.add_argument("--model", choices=["tiny", "small", "both"], default="tiny")
    parser.add_argument(
        "--threads", type=int, default=0,
        help="torch intra-op threads (0: torch's default). 1 keeps timings sane when another process shares the cores: "
        "OpenMP threads that wait on a busy core slow every step by up to 10x",
    )
    parser.add_argument("--no-trainer", action="store_true", help="leave out transformers' Trainer")
    parser.add_argument(
        "--compile", action="store_true",
        help="also time the loop with `compile: true` (logging to MLflow) and Trainer with torch_compile=True; "
        "each run compiles afresh (inductor's disk cache shortens all but the first)",
    )
    args = parse_args(parser, repeats=1, steps=10, warmup=10, threads=1)
    if args.steps % LOG_EVERY or args.warmup % LOG_EVERY or args.warmup < LOG_EVERY:
        parser.error(f"--steps and --warmup must be multiples of {LOG_EVERY} (--warmup at least {LOG_EVERY})")

    os.environ.pop("MLFLOW_TRACKING_URI", None)
    if args.threads:
        torch.set_num_threads(args.threads)
    import logging
    import warnings

    import mlflow
    import transformers

    warnings.filterwarnings("ignore")
    transformers.logging.set_verbosity_error()
    logging.getLogger("mlflow").setLevel(logging.ERROR)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="smolforge-bench-pretrain-") as tmp_name:
        tmp = Path(tmp_name)
        mlflow.set_tracking_uri(f"sqlite:///{tmp / 'mlflow.db'}")
        mlflow.set_experiment("bench-pretrain")
        with mlflow.start_run(run_name="warm-up"):  # creates the store (schema migrations), untimed
            mlflow.log_metrics({"x": 1.0}, step=0)
        console.print("building the synthetic corpus ...")
        sources = make_corpus(tmp / "corpus")
        cpu = torch.device("cpu")
        peaks = [measure_peak_flops(cpu)]

        shapes = ["tiny", "small"] if args.model == "both" else [args.model]
        for shape in shapes:
            ctx = Ctx(shape, sources, args.warmup, args.steps, tmp, peaks[0])
            variants = {
                "smolforge/noop": lambda: run_smolforge(ctx, False),
                "smolforge/mlflow": lambda: run_smolforge(ctx, True),
                "bare/adamw": lambda: run_bare(ctx, "adamw"),
                "bare/muon": lambda: run_bare(ctx, "muon"),
            }
            if not args.no_trainer:
                variants["trainer"] = lambda: run_trainer(ctx)
            if args.compile:
                variants["smolforge/compiled"] = lambda: run_smolforge(ctx, True, compile_model=True)
                if not args.no_trainer:
                    variants["trainer/compiled"] = lambda: run_trainer(ctx, compile_model=True)
            # one untimed round: first-call costs (kernels, Trainer/accelerate imports) out of the way
            console.print(f"{shape}: untimed warm-up round ...")
            saved = ctx.warmup, ctx.steps
            for fn in variants.values():
                fn()
            ctx.warmup, ctx.steps = saved
            results: dict[str, list[dict]] = {name: [] for name in variants}
            for r in range(args.repeats):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    results[name].append(variants[name]())
                peaks.append(measure_peak_flops(cpu))
                line = "  ".join(f"{n} {BATCH * SEQ / results[n][-1]['step_s']:,.0f}" for n in variants)
                console.print(f"{shape}: repeat {r + 1}/{args.repeats} tokens/s: {line}")
            costs = loop_costs(ctx)
            report(ctx, results, costs, peaks, args)
    console.print(f"total {time.perf_counter() - started:.0f} s")


def report(ctx: Ctx, results: dict[str, list[dict]], costs: dict[str, float], peaks: list[float], args) -> None:  # noqa: ANN001
    tps = {n: [BATCH * SEQ / x["step_s"] for x in xs] for n, xs in results.items()}
    med = {n: statistics.median(v) for n, v in tps.items()}
    peak = statistics.median(peaks)
    params = count_parameters(ctx.base)
    title = (
        f"{ctx.shape}: {params / 1e6:.2f}M params (hidden {SHAPES[ctx.shape]['hidden_size']}, "
        f"{SHAPES[ctx.shape]['num_layers']} layers), batch {BATCH}x{SEQ}, CPU {torch.get_num_threads()} threads, "
        f"{args.repeats} alternated repeats x {args.steps} timed steps"
    )
    table = Table(title=title)
    for col in ("measure", "median", "min-max", "ratio"):
        table.add_column(col, justify="left" if col == "measure" else "right")
    bare = med["bare/adamw"]
    for name in tps:
        lo, hi = min(tps[name]), max(tps[name])
        ratio = "1.00 (ref)" if name == "bare/adamw" else f"{med[name] / bare:.3f}x bare/adamw"
        table.add_row(f"tokens/s {name}", _fmt_rate(med[name]), f"{_fmt_rate(lo)}-{_fmt_rate(hi)}", ratio)
    # ratios within each repeat (same stretch of machine time)
    def within(a: str, b: str) -> str:
        rs = [x / y for x, y in zip(tps[a], tps[b])]
        return f"{statistics.median(rs):.3f}x ({min(rs):.3f}-{max(rs):.3f})"

    table.add_section()
    table.add_row("smolforge/noop / bare/adamw", "", "per repeat", within("smolforge/noop", "bare/adamw"))
    table.add_row("smolforge/mlflow / bare/adamw", "", "per repeat", within("smolforge/mlflow", "bare/adamw"))
    if "trainer" in tps:
        table.add_row("smolforge/noop / trainer", "", "per repeat", within("smolforge/noop", "trainer"))
        table.add_row("smolforge/mlflow / trainer", "", "per repeat", within("smolforge/mlflow", "trainer"))
        table.add_row("bare/adamw / trainer", "", "per repeat", within("bare/adamw", "trainer"))
    if "smolforge/compiled" in tps:
        table.add_row("smolforge/compiled / smolforge/mlflow", "", "per repeat", within("smolforge/compiled", "smolforge/mlflow"))
        if "trainer" in tps:
            table.add_row("smolforge/compiled / trainer", "", "per repeat", within("smolforge/compiled", "trainer"))
            table.add_row("smolforge/compiled / trainer/compiled", "", "per repeat", within("smolforge/compiled", "trainer/compiled"))
    table.add_section()
    mfus = [t * ctx.flops_per_token / peak for t in tps["smolforge/noop"]]
    table.add_row(
        "matmul peak (measure_peak_flops)", f"{peak / 1e9:.1f} GFLOP/s",
        f"{min(peaks) / 1e9:.1f}-{max(peaks) / 1e9:.1f}", f"{ctx.flops_per_token / 1e6:.2f} MFLOP/token",
    )
    table.add_row("MFU smolforge/noop", f"{statistics.median(mfus):.1%}", f"{min(mfus):.1%}-{max(mfus):.1%}", "")
    table.add_section()
    ad = [x["opt_s"] * 1e3 for x in results["bare/adamw"]]
    mu = [x["opt_s"] * 1e3 for x in results["bare/muon"]]
    ads = [x["step_s"] * 1e3 for x in results["bare/adamw"]]
    mus = [x["step_s"] * 1e3 for x in results["bare/muon"]]
    table.add_row("optimizer.step() AdamW", f"{statistics.median(ad):.2f} ms", f"{min(ad):.2f}-{max(ad):.2f}", "")
    table.add_row(
        "optimizer.step() Muon", f"{statistics.median(mu):.2f} ms", f"{min(mu):.2f}-{max(mu):.2f}",
        f"{statistics.median(mu) / statistics.median(ad):.2f}x AdamW",
    )
    table.add_row("whole step AdamW (bare)", f"{statistics.median(ads):.1f} ms", f"{min(ads):.1f}-{max(ads):.1f}", "")
    table.add_row(
        "whole step Muon (bare)", f"{statistics.median(mus):.1f} ms", f"{min(mus):.1f}-{max(mus):.1f}",
        f"{statistics.median(mus) / statistics.median(ads):.3f}x AdamW",
    )
    table.add_section()
    step_ms = 1e3 * BATCH * SEQ / med["smolforge/noop"]
    for name, seconds in costs.items():
        per_step = seconds / LOG_EVERY if name.startswith("mlflow") else seconds
        table.add_row(f"loop extra: {name}", f"{seconds * 1e3:.3f} ms", "", f"{per_step * 1e3 / step_ms:.2%} of a step")
    console.print(table)
    console.print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"python {sys.version.split()[0]}, {datetime.date.today().isoformat()}"
    )


if __name__ == "__main__":
    main()
