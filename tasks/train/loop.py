"""The pretraining loop for one stage: flat, top to bottom, nanoGPT style.

Per optimizer step: set the learning rate from the one schedule that spans all stages, run the
step's micro-batches (intra-document attention, optional multi-token-prediction loss), clip the
gradient, check for instability, step, optionally QK-clip, then log, evaluate and checkpoint on
their cadences. An unstable step (NaN/inf loss or gradient, or a loss spike against the running
average) is never applied: training rolls back to the last good checkpoint, skips the offending
batches, lowers the learning rate and goes on, until `max_rollbacks` says it keeps diverging.

Everything that decides the next update (data position, lr scale, optimizer state, RNG) lives in
the checkpoint, so a killed stage resumes and reaches the weights an uninterrupted run would have.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from smolforge.models.masking import packed_attention_inputs
from smolforge.models.mtp import MTPHeads, mtp_loss, mtp_target_counts
from smolforge.models.optim import AttentionLogitTracker, qk_clip
from smolforge.tasks.train import checkpoint as ckpt
from smolforge.tasks.train.config import PretrainConfig
from smolforge.tasks.train.data import IGNORE_INDEX, Batch, StagePlan, step_batches
from smolforge.tasks.train.distributed import SINGLE, World, barrier, local_rows, sum_gradients, sum_scalar
from smolforge.tasks.train.schedule import StageSchedule


class DivergenceError(RuntimeError):
    """Training kept diverging after the allowed number of rollbacks."""


Logger = Callable[[dict[str, float], int], None]


@dataclass
class StageRun:
    """What one stage needs beyond its plan: the model, its extras and where to keep checkpoints."""

    model: torch.nn.Module
    optimizer: Any
    schedule: StageSchedule
    config: PretrainConfig
    checkpoints: Path
    device: torch.device
    val: dict[str, list[Batch]] = field(default_factory=dict)
    mtp: MTPHeads | None = None
    qk_clip_threshold: float | None = None
    flops_per_token: float = 0.0
    peak_flops: float = 0.0
    autocast_dtype: torch.dtype | None = None
    log: Logger = lambda metrics, step: None  # noqa: E731
    # called with (global step, val_loss) after each evaluation; a sweep's pruner raises from here
    on_eval: Callable[[int, float], None] | None = None
    world: World = SINGLE  # data-parallel processes (torchrun); rank 0 logs and writes checkpoints
    # fault injection for tests: (data step, loss) -> loss
    perturb_loss: Callable[[int, torch.Tensor], torch.Tensor] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)


def _next_token_loss(
    model: torch.nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor,
    n_targets: torch.Tensor,
    autocast_dtype: torch.dtype | None,
    want_hidden: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The model's forward and the summed next-token loss over the step's targets: the part of a
    step that `compile` hands to torch.compile (tensors in, tensors out, no Python state)."""
    autocast = torch.autocast(input_ids.device.type, dtype=autocast_dtype) if autocast_dtype else contextlib.nullcontext()
    with autocast:
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            output_hidden_states=want_hidden, use_cache=False,
        )
        logits = out.logits.float()
        loss = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
    return loss / n_targets, (out.hidden_states[-1] if want_hidden else None)


def _forward_loss(
    run: StageRun, loss_fn: Callable, batch: Batch, n_targets: int, mtp_targets: dict[int, int] | None
) -> torch.Tensor:
    """Next-token loss (plus the weighted MTP loss) of one micro-batch, normalised by the targets
    of the whole step, so the micro-batches and the processes' rows add up to the step's mean loss."""
    with_mtp = run.mtp is not None and len(run.mtp.heads) > 0
    packed = _packed(run, batch)
    loss, hidden = loss_fn(
        run.model, batch.input_ids, batch.labels, packed["attention_mask"], packed["position_ids"],
        torch.tensor(float(n_targets), device=run.device), run.autocast_dtype, with_mtp,
    )
    if with_mtp:
        autocast = torch.autocast(run.device.type, dtype=run.autocast_dtype) if run.autocast_dtype else contextlib.nullcontext()
        with autocast:
            aux = mtp_loss(
                run.mtp, hidden, batch.labels, lm_head=run.model.lm_head, doc_ids=batch.doc_ids, denominators=mtp_targets
            )
        loss = loss + run.mtp.weight * aux
    return loss


def _mtp_targets(mtp: MTPHeads | None, micro: list[Batch]) -> dict[int, int] | None:
    """MTP targets per offset over the global batch (every micro-batch, every process's rows)."""
    if mtp is None or not mtp.heads:
        return None
    counts = [mtp_target_counts(mtp, b.labels, b.doc_ids) for b in micro]
    return {d: sum(c[d] for c in counts) for d in mtp.offsets}


def _packed(run: StageRun, batch: Batch) -> dict[str, Any]:
    """Intra-document attention: mask and restarting positions in the form this model's attention
    implementation needs (eager adds the mask, so it must be a float mask there)."""
    dtype = run.autocast_dtype or next(run.model.parameters()).dtype
    return packed_attention_inputs(batch.doc_ids, run.model.config._attn_implementation, dtype)


@torch.no_grad()
def evaluate(run: StageRun) -> dict[str, float]:
    """Mean validation loss per source and overall (weighted by targets), on fixed batches."""
    run.model.eval()
    metrics: dict[str, float] = {}
    total_loss, total_targets = 0.0, 0
    for source, batches in run.val.items():
        loss_sum, targets = 0.0, 0
        for batch in batches:
            batch = batch.to(run.device)
            out = run.model(input_ids=batch.input_ids, **_packed(run, batch))
            loss_sum += F.cross_entropy(
                out.logits.float().flatten(0, 1), batch.labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
            ).item()
            targets += batch.n_targets
        if targets:
            metrics[f"val_loss.{source}"] = loss_sum / targets
            total_loss, total_targets = total_loss + loss_sum, total_targets + targets
    if total_targets:
        metrics["val_loss"] = total_loss / total_targets
    run.model.train()
    return metrics


def _instability(loss: float, grad_norm: float, state: ckpt.TrainState, config: PretrainConfig) -> str | None:
    if not math.isfinite(loss):
        return "nonfinite_loss"
    if not math.isfinite(grad_norm):
        return "nonfinite_grad"
    stab = config.stability
    if (
        state.running_loss is not None
        and state.running_loss_steps >= stab.spike_window
        and loss > stab.spike_factor * state.running_loss
    ):
        return "loss_spike"
    return None


def _save(run: StageRun, state: ckpt.TrainState) -> None:
    """Rank 0 writes (every rank holds the same weights); the others wait until it is on disk."""
    if run.world.is_main:
        path = ckpt.save(run.checkpoints, state, run.model, run.optimizer, run.mtp, keep=run.config.checkpoint.keep)
        ckpt.mark_good(path)
    barrier(run.world)


def _rollback(run: StageRun, state: ckpt.TrainState, reason: str, loss: float, grad_norm: float) -> ckpt.TrainState:
    """Back to the last good checkpoint, past the offending batches, at a lower learning rate."""
    stab = run.config.stability
    event = {
        "step": state.step,
        "stage": state.stage,
        "data_step": state.data_step,
        "reason": reason,
        "loss": loss,
        "grad_norm": grad_norm,
        "running_loss": state.running_loss,
        "lr_scale_after": state.lr_scale * stab.lr_backoff,
    }
    run.events.append(event)
    if state.rollbacks >= stab.max_rollbacks:
        raise DivergenceError(
            f"stage {state.stage!r} keeps diverging: {reason} at step {state.step} (loss {loss:.4g}, "
            f"grad norm {grad_norm:.4g}) after {state.rollbacks} rollbacks (max_rollbacks={stab.max_rollbacks}); "
            "lower optimizer.lr, raise stability.spike_factor or check the data"
        )
    good = ckpt.last_good(run.checkpoints)
    if good is None:
        raise DivergenceError(f"stage {state.stage!r}: {reason} at step {state.step} and no good checkpoint to return to")
    restored = ckpt.load(good, run.model, run.optimizer, run.mtp)
    barrier(run.world)  # every rank has read the checkpoint before rank 0 prunes newer ones
    if run.world.is_main:
        ckpt.remove_after(run.checkpoints, restored.step)
    run.optimizer.zero_grad(set_to_none=True)
    new_state = replace(
        restored,
        data_step=state.data_step + 1 + stab.skip_batches,
        rollbacks=state.rollbacks + 1,
        lr_scale=state.lr_scale * stab.lr_backoff,
    )
    if run.world.is_main:
        run.log({"instability_event": 1.0, "lr_scale": new_state.lr_scale, "rollback_to_step": float(restored.step)}, state.step)
    return new_state


def train_stage(run: StageRun, plan: StagePlan, state: ckpt.TrainState) -> ckpt.TrainState:
    """Train `plan` from `state` (a fresh stage start, or a resumed checkpoint) to its last step."""
    config, model, optimizer = run.config, run.model, run.optimizer
    stage_range = next(r for r in run.schedule.ranges if r.name == plan.name)
    params = [p for group in optimizer.param_groups for p in group["params"]]
    # compiled once per process; evaluation and generation stay eager (their shapes vary)
    loss_fn = torch.compile(_next_token_loss) if config.compile else _next_token_loss
    tracker = AttentionLogitTracker(model) if run.qk_clip_threshold else None
    clip = config.stability.clip_norm or float("inf")
    for group in optimizer.param_groups:  # the peak rate the schedule multiplies (kept in checkpoints)
        group.setdefault("initial_lr", group["lr"])
    model.train()
    fresh = ckpt.last_good(run.checkpoints) is None
    # Every rank looks before rank 0 can write: a rank that looked after it would skip the save's
    # barrier and wait in the first all-reduce while rank 0 waits in the barrier, for ever.
    barrier(run.world)
    if fresh:
        _save(run, state)  # a stage always has somewhere to roll back to
    window_started, window_tokens = time.perf_counter(), 0
    try:
        while state.stage_step < plan.steps:
            global_step = stage_range.start + state.stage_step
            lr_mult = run.schedule.multiplier(global_step) * state.lr_scale
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * lr_mult
            micro = step_batches(plan, state.data_step, config.seed)
            n_targets = max(1, sum(b.n_targets for b in micro))  # over the global batch
            mtp_targets = _mtp_targets(run.mtp, micro)
            if tracker:
                tracker.reset()
            loss_value = 0.0
            for batch in micro:
                loss = _forward_loss(run, loss_fn, local_rows(batch, run.world).to(run.device), n_targets, mtp_targets)
                if run.perturb_loss is not None:
                    loss = run.perturb_loss(state.data_step, loss)
                loss.backward()
                loss_value += loss.item()
            # each rank's loss is its rows' share of the global mean: summing gives the step's loss
            loss_value = sum_scalar(loss_value, run.world)
            sum_gradients(params, run.world)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, clip))
            problem = _instability(loss_value, grad_norm, state, config)
            if problem:
                state = _rollback(run, state, problem, loss_value, grad_norm)
                continue
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            metrics: dict[str, float] = {"loss": loss_value, "lr": optimizer.param_groups[0]["lr"], "grad_norm": grad_norm}
            if tracker:
                metrics.update(qk_clip(model, tracker.max_logits(), run.qk_clip_threshold).metrics())
            beta = 1.0 / config.stability.spike_window
            state.running_loss = loss_value if state.running_loss is None else (1 - beta) * state.running_loss + beta * loss_value
            state.running_loss_steps += 1
            step_tokens = sum(b.input_ids.numel() for b in micro)  # the global batch
            state.tokens += step_tokens
            window_tokens += step_tokens
            state.step, state.stage_step, state.data_step = state.step + 1, state.stage_step + 1, state.data_step + 1
            last = state.stage_step == plan.steps
            if run.world.is_main and (state.stage_step % config.log_every == 0 or last):
                elapsed = time.perf_counter() - window_started
                tokens_per_s = window_tokens / elapsed if elapsed > 0 else 0.0
                metrics["tokens_per_s"] = tokens_per_s
                if run.peak_flops:
                    metrics["mfu"] = tokens_per_s * run.flops_per_token / run.peak_flops
                metrics["tokens"] = float(state.tokens)
                run.log(metrics, state.step)
                window_started, window_tokens = time.perf_counter(), 0
            if run.world.is_main and run.val and (state.stage_step % config.eval_every == 0 or last):
                scores = evaluate(run)
                run.log(scores, state.step)
                if run.on_eval is not None and "val_loss" in scores:
                    run.on_eval(state.step, scores["val_loss"])
            if state.stage_step % config.checkpoint.every_steps == 0 or last:
                _save(run, state)
    finally:
        if tracker:
            tracker.remove()
    return state
