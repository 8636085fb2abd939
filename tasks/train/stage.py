"""One pretraining stage from start to saved artifact, in this process or in torchrun's processes.

The Prefect task (`prefect_tasks.pretrain_stage`) opens the stage's MLflow run and hands a
`StageSpec` to `run_stage`: directly when `nproc` is 1, through `torchrun` otherwise. Every process
builds the same model from the same seed and trains its share of each batch (see `distributed.py`);
rank 0 logs to the stage's run by its id and writes the artifact and a `result.json` the task
returns. Keeping the whole stage behind one serialisable spec is what lets the same code run
in-process on a laptop and as N processes on a GPU node.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash
from pydantic import BaseModel
from transformers import AutoModelForCausalLM

from smolforge.device import autocast_dtype, measure_peak_flops, pick_device
from smolforge.models.architecture import build_model, check_vocab, count_parameters, flops_per_token, tokenizer_ids
from smolforge.models.mtp import MTPHeads
from smolforge.models.optim import build_optimizer
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.train import checkpoint as ckpt
from smolforge.tasks.train.config import PretrainSection
from smolforge.tasks.train.data import CorpusSources, plan_stages, val_batches
from smolforge.tasks.train.distributed import SINGLE, World, barrier, init_from_env
from smolforge.tasks.train.loop import StageRun, evaluate, train_stage
from smolforge.tasks.train.schedule import StageRange
from smolforge.tracking import flatten

log = logging.getLogger(__name__)


class StageSpec(BaseModel):
    """Everything one stage needs, as plain values that survive a trip through a JSON file."""

    out: Path
    workdir: Path  # an existing folder kept across attempts (checkpoints, torchrun's spec and result)
    corpus: Path  # the corpus artifact folder (holds corpus.json)
    previous: Path | None  # the previous stage's artifact folder, or None for the first stage
    stage_index: int
    config: PretrainSection
    rates: list[float]
    start: int
    run_id: str | None = None  # MLflow run that rank 0 logs to


@dataclass
class _StageRates:
    """The slice of the run-wide schedule one stage needs (its key includes exactly these rates)."""

    ranges: tuple[StageRange, ...]
    start: int
    values: list[float]

    def multiplier(self, global_step: int) -> float:
        return self.values[global_step - self.start]


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


def _device(config: PretrainSection, world: World) -> torch.device:
    device = pick_device(config.device)
    if device.type == "cuda" and world.size > 1:  # one GPU per process
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _report_resume(stage: str, step: int, checkpoint: Path, run_id: str | None) -> None:
    """Say that this stage continues an interrupted attempt, on the console (a warning: the attempt
    before crashed or was killed) and as tags on the stage's MLflow run, so a resumed run is never
    mistaken for an uninterrupted one."""
    import mlflow

    log.warning("stage %r resumes at step %d from checkpoint %s (an earlier attempt stopped there)", stage, step, checkpoint)
    if run_id is not None:
        client = mlflow.MlflowClient()
        client.set_tag(run_id, "smolforge.resumed_at_step", str(step))
        client.set_tag(run_id, "smolforge.resumed_from", str(checkpoint))


def _weights_folder(previous: Path | None) -> Path | None:
    """The transformers folder to start from when `previous` is a model (a `model-import` or any
    artifact with `model/` and no training `state/`), else None."""
    if previous is None or (previous / "state").is_dir():
        return None
    return previous / "model"


def tensors_hash(model: torch.nn.Module) -> str:
    """One hash of every weight, by name: says which weights a run started from."""
    digest = xxhash.xxh3_128()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_stage(
    spec: StageSpec, world: World = SINGLE, on_eval: Callable[[int, float], None] | None = None
) -> dict[str, Any]:
    """Train one stage from the previous stage's weights and optimizer state (or from scratch, or
    from a model's weights with a fresh optimizer when `previous` is a model artifact: a retrain's
    continued pretraining), or from this stage's own last checkpoint when an earlier attempt was
    interrupted. `on_eval(step,
    val_loss)` is called after every evaluation (a sweep's pruner raises from it)."""
    import mlflow

    started = time.perf_counter()
    config = spec.config
    sources = CorpusSources.from_corpus_json(spec.corpus / "corpus.json")
    plan = plan_stages(config, sources)[spec.stage_index]
    tokenizer = load_tokenizer(sources.tokenizer)
    device = _device(config, world)
    weights = _weights_folder(spec.previous)
    if weights is not None:  # continued pretraining starts from a model's weights, not from a stage's state
        model = AutoModelForCausalLM.from_pretrained(weights, dtype=torch.float32, attn_implementation="sdpa").to(device)
    else:
        model = build_model(config.model, **tokenizer_ids(tokenizer), seed=config.seed).to(device)
    check_vocab(model.config, tokenizer)
    mtp = MTPHeads(model.config, config.mtp).to(device) if config.mtp.heads else None
    optimizer = build_optimizer(model, config.optimizer, extra_modules=[mtp] if mtp else [])

    checkpoints = spec.workdir / "checkpoints"
    resume = ckpt.latest(checkpoints)
    if resume is not None:  # this stage was interrupted: continue it
        state = ckpt.load(resume, model, optimizer, mtp)
        if world.is_main:
            _report_resume(plan.name, state.step, resume, spec.run_id)
    elif spec.previous is not None and weights is None:  # continue from the previous stage's final state
        state = ckpt.load(ckpt.latest(spec.previous / "state"), model, optimizer, mtp)
        state.stage, state.stage_step, state.data_step = plan.name, 0, 0
    else:  # from scratch, or from the loaded weights with a fresh optimizer (and fresh MTP heads)
        state = ckpt.TrainState(stage=plan.name, seed=config.seed)
    if weights is not None and resume is None:
        state.extra["init"] = {"from": f"{spec.previous.parent.name}:{spec.previous.name}", "tensors": tensors_hash(model)}

    main = world.is_main and spec.run_id is not None
    if main:
        params = {
            "stage": config.stages[spec.stage_index].model_dump(),
            "model": config.model.resolve().model_dump(),
            "parameters": count_parameters(model),
            "optimizer": config.optimizer.model_dump(),
            "mtp": config.mtp.model_dump(),
            "batch_size": config.batch_size,
            "grad_accum": config.grad_accum,
            "processes": world.size,
            **({"init_from": str(weights)} if weights is not None else {}),
        }
        mlflow.log_params(flatten(params), run_id=spec.run_id)
        mlflow.log_dict(plan.summary(), "plan.json", run_id=spec.run_id)

    def log(metrics: dict[str, float], step: int) -> None:
        if main:
            mlflow.log_metrics(metrics, step=step, run_id=spec.run_id)

    run = StageRun(
        model=model,
        optimizer=optimizer,
        schedule=_StageRates((StageRange(plan.name, spec.start, spec.start + plan.steps),), spec.start, spec.rates),
        config=config,
        checkpoints=checkpoints,
        device=device,
        val=val_batches(sources, plan.seq_len, config.eval_batches, config.seed),
        mtp=mtp,
        qk_clip_threshold=config.optimizer.qk_clip,
        flops_per_token=flops_per_token(model.config, plan.seq_len),
        peak_flops=measure_peak_flops(device),
        autocast_dtype=autocast_dtype(device, config.dtype),
        log=log,
        world=world,
        on_eval=on_eval,
    )
    state = train_stage(run, plan, state)
    if not world.is_main:
        barrier(world)  # rank 0 evaluates and writes the artifact
        return {}
    final = evaluate(run)
    samples = _generate(model, tokenizer, config.sample_prompts, device)
    out = spec.out
    model.save_pretrained(out / "model")
    tokenizer.save_pretrained(out / "model")
    ckpt.save(out / "state", state, model, optimizer, mtp)
    (out / "samples.json").write_text(json.dumps(samples, indent=2), encoding="utf-8")
    (out / "events.json").write_text(json.dumps(run.events, indent=2, default=str), encoding="utf-8")
    if spec.run_id is not None:
        columns = {"prompt": [s["prompt"] for s in samples], "completion": [s["completion"] for s in samples]}
        mlflow.log_table(columns, "samples.json", run_id=spec.run_id)
        mlflow.log_dict({"events": run.events}, "instability_events.json", run_id=spec.run_id)
        mlflow.log_metrics({f"final_{k}": v for k, v in final.items()}, step=state.step, run_id=spec.run_id)
    result = {
        "stage": plan.name,
        "steps": state.step,
        "tokens": state.tokens,
        "rollbacks": state.rollbacks,
        **({"init": state.extra["init"]} if "init" in state.extra else {}),
        "processes": world.size,
        "seconds": round(time.perf_counter() - started, 1),
        "mlflow_run_id": spec.run_id,
        **final,
    }
    barrier(world)
    return result


def launch(spec: StageSpec, nproc: int) -> dict[str, Any]:
    """Run the stage as `nproc` torchrun processes on this node; returns rank 0's result. torchrun's
    own output (and the workers' tracebacks) go to the task's log when a process fails."""
    spec_file = spec.workdir / "spec.json"
    result_file = spec.workdir / "result.json"
    result_file.unlink(missing_ok=True)
    spec_file.write_text(spec.model_dump_json(), encoding="utf-8")
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
        "-m", "smolforge.tasks.train.stage", str(spec_file),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or not result_file.exists():
        raise RuntimeError(
            f"torchrun with {nproc} processes failed (exit {done.returncode}) for stage "
            f"{spec.config.stages[spec.stage_index].name!r}:\n{done.stderr[-4000:]}"
        )
    return json.loads(result_file.read_text(encoding="utf-8"))


def _worker_main(spec_file: str) -> None:
    """Entry point of each torchrun process."""
    spec = StageSpec.model_validate_json(Path(spec_file).read_text(encoding="utf-8"))
    world = init_from_env(pick_device(spec.config.device))
    result = run_stage(spec, world)
    if world.is_main:
        tmp = spec.workdir / "result.json.tmp"
        tmp.write_text(json.dumps(result), encoding="utf-8")
        tmp.replace(spec.workdir / "result.json")
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    _worker_main(sys.argv[1])
