"""Train a student from a teacher: a flat loop over pretraining's own data plan, top to bottom.

The batches are pretraining's (`plan_stage` / `step_batches` / `val_batches`): the same mixture
sampling, the same packed windows with intra-document attention and IGNORE_INDEX at document
boundaries, and a validation loss computed exactly as pretraining computes it (`loop.evaluate`), so
a distilled student and a student pretrained from scratch are compared on equal terms.

There is no checkpoint or rollback machinery here: a distillation run is short next to
pretraining, so an interrupted run starts again from the beginning.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from smolforge.device import autocast_dtype, pick_device
from smolforge.model_source import model_folder
from smolforge.models.architecture import build_model, check_vocab, count_parameters, tokenizer_ids
from smolforge.models.masking import packed_attention_inputs
from smolforge.models.optim import build_optimizer
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.distill.config import DistillConfig
from smolforge.tasks.distill.loss import distill_loss
from smolforge.tasks.distill.teacher import (
    TopKStore,
    load_teacher,
    require_same_tokenizer,
    teacher_logits,
)
from smolforge.tasks.train.data import (
    CorpusSources,
    StagePlan,
    plan_stage,
    step_batches,
    val_batches,
)
from smolforge.tasks.train.loop import StageRun, evaluate
from smolforge.tasks.train.schedule import StageSchedule

Logger = Callable[[dict[str, float], int], None]


def plan_for(config: DistillConfig, sources: CorpusSources) -> StagePlan:
    """The distillation data as a pretraining stage plan. Raises ValueError for a budget the corpus
    cannot give, or a warmup that does not end before the decay starts."""
    plan = plan_stage(config.data, sources, config.batch_size, config.grad_accum, max_epochs=config.max_epochs)
    StageSchedule.from_plans([plan], config.schedule)
    return plan


def distill_student(
    config: DistillConfig,
    teacher: Path | None,
    corpus_sources: CorpusSources,
    out: Path,
    *,
    topk: Path | None = None,
    on_eval: Callable[[int, float], None] | None = None,
    log: Logger | None = None,
) -> dict[str, Any]:
    """Train `config.student` from the teacher on the corpus and save it to `out/model`.

    Args:
        config: the distillation settings (student shape, alpha, temperature, data, optimizer).
        teacher: a transformers model folder. Not read when `topk` is given or `config.alpha == 0`
            (pass None then).
        corpus_sources: the curated corpus (`CorpusSources.from_corpus_json`); its tokenizer is the
            student's, and the teacher's must be the same.
        out: folder that receives `model/` (a plain transformers model and the tokenizer) once
            training has finished; nothing is written there before.
        topk: a `teacher-topk` artifact folder made for this data plan: the KL is computed from the
            stored top-k log-probabilities (see `loss.topk_kl` for the approximation) and the teacher
            never runs.
        on_eval: called as `on_eval(step, val_loss)` after every validation evaluation (every
            `config.eval_every` steps and after the last step). Whatever it raises (a sweep's
            `optuna.TrialPruned`) propagates at once, before anything is written to `out`.
        log: called as `log(metrics, step)` with the training curves (loss, kl, ce, lr, grad_norm,
            tokens_per_s) and each evaluation (val_loss, val_loss.<source>).

    Returns:
        Final metrics: `val_loss` and `val_loss.<source>` (student cross-entropy on the validation
        batches, in nats per token), `train_loss`, `train_kl`, `train_ce` (means over the last
        logging window), `steps`, `tokens`, `parameters`, `seconds`.
    """
    started = time.perf_counter()
    log = log or (lambda metrics, step: None)
    plan = plan_for(config, corpus_sources)
    schedule = StageSchedule.from_plans([plan], config.schedule)
    tokenizer = load_tokenizer(corpus_sources.tokenizer)
    device = pick_device(config.device)
    amp = autocast_dtype(device, config.dtype)

    store = None
    teacher_model = None
    if config.alpha > 0 and topk is not None:
        store = TopKStore(topk)
        store.check_plan(plan, config.seed)
    elif config.alpha > 0:
        if teacher is None:
            raise ValueError("alpha > 0 needs a teacher folder or a teacher top-k store")
        teacher = model_folder(Path(teacher))
        require_same_tokenizer(load_tokenizer(str(teacher)), tokenizer, str(teacher), str(corpus_sources.tokenizer))
        teacher_model = load_teacher(teacher, device)

    student = build_model(config.student, **tokenizer_ids(tokenizer), seed=config.seed).to(device)
    check_vocab(student.config, tokenizer)
    optimizer = build_optimizer(student, config.optimizer)
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    params = [p for group in optimizer.param_groups for p in group["params"]]
    clip = config.clip_norm or float("inf")
    # `evaluate` reads only the model, the validation batches, the device and the autocast dtype
    evaluator = StageRun(
        model=student, optimizer=optimizer, schedule=schedule, config=None, checkpoints=out, device=device,
        val=val_batches(corpus_sources, plan.seq_len, config.eval_batches, config.seed), autocast_dtype=amp,
    )
    autocast = (lambda: torch.autocast(device.type, dtype=amp)) if amp else contextlib.nullcontext

    student.train()
    window = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "steps": 0, "tokens": 0, "started": time.perf_counter()}
    means: dict[str, float] = {}
    tokens = 0
    for step in range(plan.steps):
        lr_mult = schedule.multiplier(step)
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * lr_mult
        micro = step_batches(plan, step, config.seed)
        n_targets = max(1, sum(b.n_targets for b in micro))
        stored = store.micro_batches(step, config.batch_size, device) if store else None
        loss_sum = kl_sum = ce_sum = 0.0
        for batch in micro:
            batch = batch.to(device)
            teacher_kwargs: dict[str, Any] = {}
            if stored is not None:
                teacher_kwargs["teacher_topk"] = next(stored)
            elif teacher_model is not None:
                teacher_kwargs["teacher_logits"] = teacher_logits(teacher_model, batch.input_ids, batch.doc_ids)
            with autocast():
                packed = packed_attention_inputs(batch.doc_ids, student.config._attn_implementation, amp or torch.float32)
                logits = student(input_ids=batch.input_ids, **packed).logits
                parts = distill_loss(
                    logits, batch.labels, temperature=config.temperature, alpha=config.alpha, **teacher_kwargs
                )
            (parts.loss / n_targets).backward()
            loss_sum += parts.loss.item() / n_targets
            kl_sum += parts.kl.item() / n_targets
            ce_sum += parts.ce.item() / n_targets
        if not math.isfinite(loss_sum):
            raise FloatingPointError(
                f"distillation loss is {loss_sum} at step {step}; lower distill.optimizer.lr or check the teacher"
            )
        grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

        step_tokens = sum(b.input_ids.numel() for b in micro)
        tokens += step_tokens
        window.update(
            loss=window["loss"] + loss_sum, kl=window["kl"] + kl_sum, ce=window["ce"] + ce_sum,
            steps=window["steps"] + 1, tokens=window["tokens"] + step_tokens,
        )
        done = step + 1
        last = done == plan.steps
        if done % config.log_every == 0 or last:
            elapsed = time.perf_counter() - window["started"]
            means = {name: window[name] / window["steps"] for name in ("loss", "kl", "ce")}
            log(
                {
                    **means,
                    "lr": optimizer.param_groups[0]["lr"],
                    "grad_norm": grad_norm,
                    "tokens_per_s": window["tokens"] / elapsed if elapsed > 0 else 0.0,
                    "tokens": float(tokens),
                },
                done,
            )
            window = {"loss": 0.0, "kl": 0.0, "ce": 0.0, "steps": 0, "tokens": 0, "started": time.perf_counter()}
        if done % config.eval_every == 0 or last:
            scores = evaluate(evaluator)
            log(scores, done)
            if on_eval is not None:
                on_eval(done, scores["val_loss"])

    student.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    return {
        **scores,
        "train_loss": means["loss"],
        "train_kl": means["kl"],
        "train_ce": means["ce"],
        "steps": plan.steps,
        "tokens": tokens,
        "parameters": count_parameters(student),
        "seconds": round(time.perf_counter() - started, 1),
    }
