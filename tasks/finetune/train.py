"""The fine-tuning loop, as a plain function the stage and the sweep both call.

Per step: a batch of rendered conversations, the loss on the assistant's tokens only (mean over
the batch's target tokens), clipping, AdamW, a warm-up + cosine schedule (transformers'). The batch
runs as micro-batches whose gradients add up to the whole batch's (each micro-batch's summed loss
is divided by the whole batch's target count), so the micro-batch size changes memory, not the
step. An out-of-memory error in a step halves the micro-batch and runs the same step again
(`run_step`). Every
`eval_every` steps and at the end the validation loss is measured on the held-out records with
the model in eval mode; the best weights are kept aside, and training stops after `patience`
evaluations without improvement. The best weights are what gets saved.
"""

from __future__ import annotations

import ctypes
import functools
import gc
import json
import math
import os
import random
import shutil
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from smolforge.device import pick_device
from smolforge.model_source import ADAPTERS, DEFAULT_ADAPTER, model_folder
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.finetune import adapters
from smolforge.tasks.finetune.config import FinetuneConfig
from smolforge.tasks.finetune.data import (
    IGNORE_INDEX,
    Example,
    InstructData,
    collate,
    load_data,
)
from smolforge.tasks.registry.serving import turn_stop_ids

Logger = Callable[[dict[str, float], int], None]
EventLogger = Callable[[str, dict[str, Any]], None]


class OutOfMemory(RuntimeError):
    """A training step does not fit in memory even one record at a time."""


def run_step(
    model: torch.nn.Module, records: Sequence[Example], micro: int, pad_id: int, device: torch.device,
    on_event: EventLogger, step: int,
) -> tuple[float, int]:
    """Forward and backward over `records` in micro-batches of `micro`; returns (mean loss per
    target token of the whole batch, the micro-batch size that fitted).

    On `torch.OutOfMemoryError` (what CUDA's and MPS's allocators raise) the gradients so far are
    dropped, the micro-batch halved (so gradient accumulation doubles: the same records make the
    same step, and the optimizer and schedule have not moved) and the step run again; each retry is
    an `oom_recovered` event. At one record per micro-batch there is nothing left to halve, and the
    error says what else would help. No library ships this for a hand-written loop (accelerate's
    `find_executable_batch_size` restarts the whole function), so it is written here."""
    targets = sum(sum(1 for t in e.labels[1:] if t != IGNORE_INDEX) for e in records)
    while True:
        try:
            total = 0.0
            for i in range(0, len(records), micro):
                batch = {k: v.to(device) for k, v in collate(records[i : i + micro], pad_id).items()}
                loss_sum, _ = masked_loss(model, batch)
                (loss_sum / max(targets, 1)).backward()
                total += loss_sum.item()
            return total / max(targets, 1), micro
        except torch.OutOfMemoryError as exc:
            batch = loss_sum = None  # the failed micro-batch's tensors, before the allocator's cache is emptied
            model.zero_grad(set_to_none=True)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            elif device.type == "mps":
                torch.mps.empty_cache()
            if micro == 1:
                raise OutOfMemory(
                    f"out of memory at step {step} with one record per micro-batch (finetune.micro_batch_size=1): "
                    f"lower finetune.max_seq_len, turn on finetune.gradient_checkpointing, use method=qlora, or a "
                    f"device with more memory ({type(exc).__name__}: {str(exc)[:200]})"
                ) from None
            smaller = max(1, micro // 2)
            accumulation = -(-len(records) // smaller)
            on_event("oom_recovered", {
                "step": step, "micro_batch_size": smaller, "previous_micro_batch_size": micro,
                "accumulation_steps": accumulation, "batch_size": len(records),
            })
            micro = smaller


def masked_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, int]:
    """(summed next-token loss over target tokens, number of target tokens) of one batch."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    targets = batch["labels"][:, 1:]
    loss = F.cross_entropy(
        logits[:, :-1].flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
    )
    return loss, int((targets != IGNORE_INDEX).sum())


@torch.no_grad()
def validation_loss(model: torch.nn.Module, examples: Sequence[Example], batch_size: int, pad_id: int, device: torch.device) -> float:
    """Mean loss per target token over the held-out records, in eval mode (no dropout)."""
    model.eval()
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        batch = {k: v.to(device) for k, v in collate(examples[i : i + batch_size], pad_id).items()}
        loss, n = masked_loss(model, batch)
        total, count = total + loss.item(), count + n
    model.train()
    return total / max(count, 1)


def _chat_generation_config(model: torch.nn.Module, tokenizer: Any) -> None:
    """A chat model stops at the end of its turn (`<|im_end|>`) as well as at end of text."""
    model.generation_config.eos_token_id = turn_stop_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id


@torch.no_grad()
def sample_generations(model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], max_new_tokens: int) -> list[dict[str, str]]:
    """Greedy answers to held-out prompts, beside the reference answers."""
    model.eval()
    device = next(model.parameters()).device
    rows = []
    for e in examples:
        ids = tokenizer.apply_chat_template(
            e.prompt, add_generation_prompt=True, tokenize=True, return_dict=True
        )["input_ids"]
        ids = torch.tensor([list(ids)], device=device)
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_new_tokens, do_sample=False)
        rows.append(
            {
                "prompt": e.prompt[-1]["content"],
                "reference": e.reference,
                "completion": tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True),
            }
        )
    model.train()
    return rows


def with_config_threads(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Run `fn(config, ...)` with torch's intra-op threads set to `config.threads` (process-wide,
    restored after); `None` leaves them as they are."""

    @functools.wraps(fn)
    def run(config: FinetuneConfig, *args: Any, **kwargs: Any) -> Any:
        previous = torch.get_num_threads()
        if config.threads:
            torch.set_num_threads(config.threads)
        try:
            return fn(config, *args, **kwargs)
        finally:
            torch.set_num_threads(previous)

    return run


def release_freed_memory() -> None:
    """Collect what was dropped and hand the C heap's free pages back to the operating system.

    After training, glibc's heap keeps the memory of many small freed allocations (the autograd
    graph's, the optimizer's and the model's bookkeeping) as its own: ~60 MiB on the benchmark's
    111M-parameter base. The merge that follows loads the full-precision base on top of it, so it
    would count in the stage's peak. glibc's `malloc_trim` returns it; elsewhere (macOS, musl,
    Windows) there is no such call and this only collects."""
    gc.collect()
    if os.name != "posix":
        return
    trim = getattr(ctypes.CDLL(None), "malloc_trim", None)
    if trim is not None:
        trim(0)


def _snapshot(params: dict[str, torch.nn.Parameter]) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in params.items()}


@with_config_threads
def finetune_model(
    config: FinetuneConfig,
    base_folder: str | Path,
    data: Sequence[str | Path] | InstructData,
    out: str | Path,
    *,
    on_eval: Callable[[int, float], None] | None = None,
    log: Logger | None = None,
    quantized: str | Path | None = None,
    on_event: EventLogger | None = None,
) -> dict[str, float]:
    """Fine-tune `base_folder` on `data` as `config` says and save the result into `out`.

    Arguments:
        config: the `finetune` section (method, lora, qlora, lr, steps, ...).
        base_folder: a transformers model folder with its tokenizer, or a folder holding one as `model/`.
        data: JSONL files of instruction/chat records (read, checked, rendered and split here), or an
            `InstructData` already loaded with this base's tokenizer.
        out: folder to write into: `adapter/` (every method but full: the peft adapter and tokenizer)
            and `model/` (the merged model, or the fully fine-tuned one, with its tokenizer; for
            prefix and prompt tuning, which cannot be merged, the base with the adapter in
            `model/adapters/default/`, which `model_source.load_causal_lm` puts on it).
        on_eval: called as `on_eval(step, val_loss)` after every validation evaluation; whatever
            it raises (e.g. `optuna.TrialPruned`) propagates and ends training with nothing saved.
        log: called as `log(metrics, step)` with `loss`, `lr`, `grad_norm` and `val_loss` curves.
        quantized: for qlora, the base saved in 4-bit by `quantize.quantize_base` (with
            `config.qlora`'s settings), loaded instead of quantising `base_folder` as it is read.
            The merged model is made on `base_folder`, the full-precision weights, either way.
        on_event: called as `on_event(name, details)` for what happens once in a while, such as
            `oom_recovered` (a step retried with half the micro-batch).

    Returns (all floats): `val_loss` (best), `first_val_loss` (before any step), `train_loss` (mean
    of the last `eval_every` steps), `best_step`, `steps`, `stopped_early` (0/1), `trainable_params`,
    `total_params`, `train_records`, `val_records`, `dropped` and `dropped.<reason>`, `step_seconds`
    (median wall time of a training step), `micro_batch_size` (at the end), `oom_recoveries`,
    `merged` (0 for a base + adapter), `seconds`.
    """
    started = time.perf_counter()
    out, base_folder = Path(out), Path(base_folder)
    log = log or (lambda metrics, step: None)
    events: list[dict[str, Any]] = []

    def event(name: str, details: dict[str, Any]) -> None:
        events.append({"event": name, **details})
        if on_event is not None:
            on_event(name, details)
    adapters.check_against_model(config, base_folder)

    tokenizer = load_tokenizer(str(model_folder(base_folder)))
    if not isinstance(data, InstructData):
        data = load_data(
            [Path(p) for p in data], tokenizer, **config.split_settings(),
        )
    device = pick_device(config.device)
    model = adapters.load_base(base_folder, config, device, None if quantized is None else Path(quantized))
    if config.method != "full":
        model = adapters.add_adapter(model, config, model_folder(base_folder))
    model.train()
    params = {n: p for n, p in model.named_parameters() if p.requires_grad}
    optimizer = torch.optim.AdamW(params.values(), lr=config.lr, weight_decay=config.weight_decay)
    from transformers import get_cosine_schedule_with_warmup

    scheduler = get_cosine_schedule_with_warmup(optimizer, min(config.warmup_steps, config.steps), config.steps)

    pad_id = tokenizer.pad_token_id
    order_rng = random.Random(config.seed)
    order: list[int] = []
    best_loss = validation_loss(model, data.val, config.batch_size, pad_id, device)
    first_loss, best_step, best_state = best_loss, 0, _snapshot(params)
    log({"val_loss": best_loss}, 0)
    if on_eval is not None:
        on_eval(0, best_loss)
    recent: list[float] = []
    evals_without_gain, step, stopped_early = 0, 0, False
    micro = config.micro_batch_size or config.batch_size
    step_times: list[float] = []
    torch.manual_seed(config.seed)  # dropout draws from torch's global generator: a run repeats only if it is seeded
    while step < config.steps:
        if len(order) < config.batch_size:  # a new pass over the training records, reshuffled
            fresh = list(range(len(data.train)))
            order_rng.shuffle(fresh)
            order += fresh
        picked, order = order[: config.batch_size], order[config.batch_size :]
        started_step = time.perf_counter()
        loss, micro = run_step(model, [data.train[i] for i in picked], micro, pad_id, device, event, step + 1)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        step_times.append(time.perf_counter() - started_step)
        recent = (recent + [loss])[-config.eval_every :]
        log({"loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm}, step)
        if step % config.eval_every and step != config.steps:
            continue
        val_loss = validation_loss(model, data.val, config.batch_size, pad_id, device)
        log({"val_loss": val_loss}, step)
        if on_eval is not None:
            on_eval(step, val_loss)
        if not math.isfinite(val_loss):
            raise FloatingPointError(f"validation loss is {val_loss} at step {step}: lower finetune.lr")
        if val_loss < best_loss:
            best_loss, best_step, best_state, evals_without_gain = val_loss, step, _snapshot(params), 0
        else:
            evals_without_gain += 1
            if config.patience is not None and evals_without_gain >= config.patience:
                stopped_early = True
                break

    with torch.no_grad():  # back to the best evaluation's weights
        for name, value in best_state.items():
            params[name].copy_(value)
    samples = sample_generations(model, tokenizer, data.val[: config.sample_prompts], config.max_new_tokens)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in params.values())
    if config.method == "full":
        _save_model(model, config, tokenizer, out)
    elif not config.mergeable():
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        del model, params, optimizer, scheduler, best_state
        release_freed_memory()
        _save_base_with_adapter(base_folder, config, tokenizer, out)
    else:
        model.save_pretrained(out / "adapter")
        tokenizer.save_pretrained(out / "adapter")
        # The merge loads the full-precision base: the trained model, its optimizer state and the
        # best weights go first, so they are not held beside it (for LoRA that would be two fp32
        # copies of the base; for QLoRA the 4-bit one plus the fp32 one).
        del model, params, optimizer, scheduler, best_state
        release_freed_memory()
        _save_model(adapters.merge_adapter(base_folder, out / "adapter"), config, tokenizer, out)
    dropped = {f"dropped.{reason}": float(n) for reason, n in sorted(data.dropped.items())}
    (out / "samples.json").write_text(json.dumps(samples, indent=2, ensure_ascii=False), encoding="utf-8")
    return {
        "val_loss": best_loss,
        "first_val_loss": first_loss,
        "train_loss": sum(recent) / max(len(recent), 1),
        "best_step": float(best_step),
        "steps": float(step),
        "stopped_early": float(stopped_early),
        "trainable_params": float(trainable),
        "total_params": float(total),
        "train_records": float(len(data.train)),
        "val_records": float(len(data.val)),
        "dropped": float(sum(data.dropped.values())),
        **dropped,
        "step_seconds": round(statistics.median(step_times), 4) if step_times else 0.0,
        "micro_batch_size": float(micro),
        "oom_recoveries": float(sum(e["event"] == "oom_recovered" for e in events)),
        "merged": float(config.mergeable()),
        "seconds": round(time.perf_counter() - started, 2),
    }


def _save_model(model: torch.nn.Module, config: FinetuneConfig, tokenizer: Any, out: Path) -> None:
    """`model/`: the merged or fully trained model as a plain transformers model, with its tokenizer."""
    if config.method == "full" and config.uses_checkpointing():
        model.gradient_checkpointing_disable()
    _chat_generation_config(model, tokenizer)
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")


def _save_base_with_adapter(base_folder: Path, config: FinetuneConfig, tokenizer: Any, out: Path) -> None:
    """`model/` for a method that cannot be merged: the base itself (its weights and config, the
    tokenizer, a chat generation config) with the adapter in `adapters/default/`, so the folder
    alone is the whole model, with no reference to where the base came from."""
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_folder(base_folder), dtype=torch.float32)
    _save_model(base, config, tokenizer, out)
    shutil.copytree(out / "adapter", out / "model" / ADAPTERS / DEFAULT_ADAPTER)
