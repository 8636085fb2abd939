"""Pretraining stages as cached Prefect tasks, and the registration of the result in MLflow.

A stage's key covers the corpus, the previous stage's artifact, the settings of this stage and the
ones before it, and the learning rates this stage will use: changing only stage 3 leaves stages 1
and 2 cached, while a change that moves an earlier stage's schedule re-runs it. Checkpoints go to
the step's work folder, so a killed stage resumes where it stopped when the task runs again.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from smolforge import tracking
from smolforge.artifacts import ArtifactRef
from smolforge.config import PretrainSection
from smolforge.device import autocast_dtype, measure_peak_flops, pick_device
from smolforge.models.architecture import build_model, check_vocab, count_parameters, flops_per_token
from smolforge.models.mtp import MTPHeads
from smolforge.models.optim import build_optimizer
from smolforge.steps import Runtime, artifact_step
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.train import checkpoint as ckpt
from smolforge.tasks.train.data import CorpusSources, plan_stages, val_batches
from smolforge.tasks.train.loop import StageRun, evaluate, train_stage
from smolforge.tasks.train.schedule import StageRange, StageSchedule

_HERE = Path(__file__).parent
_MODELS = _HERE.parent.parent / "models"


@dataclass
class _StageRates:
    """The slice of the run-wide schedule one stage needs (its key includes exactly these rates)."""

    ranges: tuple[StageRange, ...]
    start: int
    values: list[float]

    def multiplier(self, global_step: int) -> float:
        return self.values[global_step - self.start]


def stage_inputs(config: PretrainSection, sources: CorpusSources) -> list[dict[str, Any]]:
    """Per stage: its config prefix (stages up to it) and its learning-rate multipliers. Planning
    all stages here also refuses impossible mixtures and budgets before any training starts."""
    plans = plan_stages(config, sources)
    schedule = StageSchedule.from_plans(plans, config.schedule)
    out = []
    for i, r in enumerate(schedule.ranges):
        out.append(
            {
                "config": config.model_copy(update={"stages": config.stages[: i + 1]}),
                "rates": [round(schedule.multiplier(g), 12) for g in range(r.start, r.stop)],
                "start": r.start,
                "plan": plans[i],
            }
        )
    return out


def _generate(model: torch.nn.Module, tokenizer: Any, prompts: list[str], device: torch.device) -> list[dict[str, str]]:
    model.eval()
    rows = []
    for prompt in prompts:
        ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).input_ids.to(device)
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=32, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        rows.append({"prompt": prompt, "completion": tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)})
    model.train()
    return rows


@artifact_step(
    "pretrained",
    code=(
        _HERE / "loop.py", _HERE / "data.py", _HERE / "schedule.py", _HERE / "checkpoint.py",
        _MODELS / "architecture.py", _MODELS / "masking.py", _MODELS / "mtp.py", _MODELS / "optim.py",
    ),
    tags=["gpu"],
    retries=1,
)
def pretrain_stage(
    out: Path,
    corpus: ArtifactRef,
    previous: ArtifactRef | None,
    stage_index: int,
    config: PretrainSection,
    rates: list[float],
    start: int,
    runtime: Runtime,
    workdir: Path,
) -> dict[str, Any]:
    """Train one stage from the previous stage's weights and optimizer state (or from scratch)."""
    started = time.perf_counter()
    sources = CorpusSources.from_corpus_json(corpus.path / "corpus.json")
    plan = plan_stages(config, sources)[stage_index]
    tokenizer = load_tokenizer(sources.tokenizer)
    device = pick_device(config.device)
    model = build_model(
        config.model, vocab_size=len(tokenizer), bos_id=tokenizer.bos_token_id, eos_id=tokenizer.eos_token_id,
        pad_id=tokenizer.pad_token_id, seed=config.seed,
    ).to(device)
    check_vocab(model.config, tokenizer)
    mtp = MTPHeads(model.config, config.mtp).to(device) if config.mtp.heads else None
    optimizer = build_optimizer(model, config.optimizer, extra_modules=[mtp] if mtp else [])

    checkpoints = workdir / "checkpoints"
    resume = ckpt.latest(checkpoints)
    if resume is not None:  # this stage was interrupted: continue it
        state = ckpt.load(resume, model, optimizer, mtp)
    elif previous is not None:  # continue from the previous stage's final state
        state = ckpt.load(ckpt.latest(previous.path / "state"), model, optimizer, mtp)
        state.stage, state.stage_step, state.data_step = plan.name, 0, 0
    else:
        state = ckpt.TrainState(stage=plan.name, seed=config.seed)

    seq_len = plan.seq_len
    stage_config = config.stages[stage_index]
    with tracking.run(f"pretrain-{plan.name}", runtime.experiment, runtime.parent_run_id) as active:
        import mlflow

        tracking.log_params(
            {
                "stage": stage_config.model_dump(),
                "model": config.model.resolve().model_dump(),
                "parameters": count_parameters(model),
                "optimizer": config.optimizer.model_dump(),
                "mtp": config.mtp.model_dump(),
                "batch_size": config.batch_size,
                "grad_accum": config.grad_accum,
            }
        )
        mlflow.log_dict(plan.summary(), "plan.json")
        run = StageRun(
            model=model,
            optimizer=optimizer,
            schedule=_StageRates((StageRange(plan.name, start, start + plan.steps),), start, rates),
            config=config,
            checkpoints=checkpoints,
            device=device,
            val=val_batches(sources, seq_len, config.eval_batches, config.seed),
            mtp=mtp,
            qk_clip_threshold=config.optimizer.qk_clip,
            flops_per_token=flops_per_token(model.config, seq_len),
            peak_flops=measure_peak_flops(device),
            autocast_dtype=autocast_dtype(device, config.dtype),
            log=lambda metrics, step: mlflow.log_metrics(metrics, step=step),
        )
        state = train_stage(run, plan, state)
        final = evaluate(run)
        samples = _generate(model, tokenizer, config.sample_prompts, device)
        mlflow.log_table({"prompt": [s["prompt"] for s in samples], "completion": [s["completion"] for s in samples]}, "samples.json")
        mlflow.log_dict({"events": run.events}, "instability_events.json")
        mlflow.log_metrics({f"final_{k}": v for k, v in final.items()}, step=state.step)

        model.save_pretrained(out / "model")
        tokenizer.save_pretrained(out / "model")
        ckpt.save(out / "state", state, model, optimizer, mtp)
        (out / "samples.json").write_text(json.dumps(samples, indent=2), encoding="utf-8")
        (out / "events.json").write_text(json.dumps(run.events, indent=2, default=str), encoding="utf-8")
        return {
            "stage": plan.name,
            "steps": state.step,
            "tokens": state.tokens,
            "rollbacks": state.rollbacks,
            "seconds": round(time.perf_counter() - started, 1),
            "mlflow_run_id": active.info.run_id,
            **final,
        }
