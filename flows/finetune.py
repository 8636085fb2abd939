"""Fine-tuning (LoRA, QLoRA or full) on instruction and chat data, registered as a chat candidate.

Everything that can be refused is refused first, before a weight is loaded: the data files (each
must exist and hold usable records), the base's whereabouts, and the settings against the base
(target modules, rank, bitsandbytes for qlora). Then, for qlora, the cached quantisation of the
base (once per base and quantisation settings), the cached fine-tuning task, and the registration
of the merged model as `smolforge-chat@candidate`, tagged with the base's key.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from smolforge.artifacts import file_hash, stable_hash
from smolforge.environment import project_home
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.pretrain import pretrained_model
from smolforge.flows.results import FinetuneInputs, FinetuneResult, PipelineResult, Registered
from smolforge.flows.routing import gpu_slot
from smolforge.model_source import resolve
from smolforge.tasks.curate.prefect_tasks import sample_corpus_task
from smolforge.tasks.finetune.adapters import check_against_model
from smolforge.tasks.finetune.data import DatasetError, check_files, resolve_files
from smolforge.tasks.finetune.prefect_tasks import finetune_stage, quantize_stage
from smolforge.tasks.registry.register import register_model


def data_files(config: PipelineConfig, home: Path) -> list[Path]:
    """The JSONL files `finetune.data` names, each checked; relative paths resolve against
    `finetune.data_dir`, else the curate data folder (built first when it is the sample corpus)."""
    cfg = config.finetune
    if cfg.data_dir is not None:
        root = Path(cfg.data_dir).expanduser().resolve()
    else:
        root = config.curate.data_folder(home)
        if config.curate.data_dir is None and config.curate.sample_corpus is not None:
            sample_corpus_task(str(root), config.curate.sample_corpus.scale)
    try:
        files = resolve_files(cfg.data, root)
        check_files(files)
    except DatasetError as exc:
        raise ConfigError(f"finetune.data: {exc}") from None
    return files


def finetune_inputs(config: PipelineConfig, upstream: PipelineResult | None, parent_run_id: str | None) -> FinetuneInputs:
    """The data files, the base (`finetune.base`, else the pipeline's pretrained model, pretrained
    here when run alone) checked against the settings, and for qlora its cached 4-bit copy."""
    cfg = config.finetune
    if cfg is None:
        raise ConfigError("the finetune flow needs a `finetune` section in the config")
    files = data_files(config, project_home())
    pretrained = pretrained_model(config, upstream, parent_run_id) if cfg.base is None else None
    runtime = config.runtime(parent_run_id)
    base = resolve(cfg.base, pretrained, runtime, "finetune.base")
    targets = check_against_model(cfg, base.path)
    adapters = f"rank {cfg.lora.r} adapters on {len(targets)} layers" if cfg.method != "full" else "every weight"
    print(f"finetune ({cfg.method}): {adapters} of base {base.kind}:{base.key[:12]}, {len(files)} data files")
    quantized = quantize_stage(base, cfg.qlora, runtime) if cfg.method == "qlora" else None
    return FinetuneInputs(base=base, quantized=quantized, data={str(f): file_hash(f) for f in files})


@flow(name="finetune", log_prints=True)
def finetune(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None) -> FinetuneResult:
    """Fine-tune `finetune.base` (or, when that is unset, the pipeline's pretrained model) and
    register the result."""
    inputs = finetune_inputs(config, upstream, parent_run_id)
    cfg = config.finetune
    runtime = config.runtime(parent_run_id)
    cached = finetune_stage.existing(inputs.base, inputs.data, cfg, runtime, inputs.quantized) is not None
    with gpu_slot():
        tuned = finetune_stage(inputs.base, inputs.data, cfg, runtime, inputs.quantized)
    metrics = tuned.manifest()["metrics"]
    lineage = {
        "smolforge.base_key": inputs.base.key,
        "smolforge.finetune_method": cfg.method,
        "smolforge.config_key": stable_hash(cfg.model_dump(mode="json")),
    }
    registered = register_model(tuned, cfg.register_as, lineage, chat=True)
    return FinetuneResult(
        model=tuned, inputs=inputs, metrics=metrics, registered=Registered(**registered),
        mlflow_run_id=metrics.get("mlflow_run_id"), seconds=metrics.get("seconds", 0.0), cached=cached,
    )
