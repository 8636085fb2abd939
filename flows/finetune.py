"""Fine-tuning (LoRA, QLoRA or full) on instruction and chat data, registered as a chat candidate.

Everything that can be refused is refused first, before a weight is loaded: the data files (each
must exist and hold usable records), the base's whereabouts, and the settings against the base
(target modules, rank, bitsandbytes for qlora). Then, for qlora, the cached quantisation of the
base (once per base and quantisation settings), the cached fine-tuning task, and the registration
of the merged model as `smolforge-chat@candidate`, tagged with the base's key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from smolforge.artifacts import ArtifactRef, file_hash, stable_hash
from smolforge.config import ConfigError, PipelineConfig
from smolforge.environment import project_home
from smolforge.flows.curate import data_dir_of, sample_corpus_task, stage_runtime
from smolforge.registry import register_model


def data_files(config: PipelineConfig, home: Path) -> list[Path]:
    """The JSONL files `finetune.data` names, each checked; relative paths resolve against
    `finetune.data_dir`, else the curate data folder (built first when it is the sample corpus)."""
    from smolforge.tasks.finetune.data import DatasetError, check_files, resolve_files

    cfg = config.finetune
    assert cfg is not None
    if cfg.data_dir is not None:
        root = Path(cfg.data_dir).expanduser().resolve()
    else:
        root = data_dir_of(config.curate, home)
        if config.curate.data_dir is None and config.curate.sample_corpus is not None:
            sample_corpus_task(str(root), config.curate.sample_corpus.scale)
    try:
        files = resolve_files(cfg.data, root)
        check_files(files)
    except DatasetError as exc:
        raise ConfigError(f"finetune.data: {exc}") from None
    return files


@flow(name="finetune", log_prints=True)
def finetune(config: PipelineConfig, base: ArtifactRef | None = None, parent_run_id: str | None = None) -> dict[str, Any]:
    """Fine-tune `config.finetune.base` (or, when that is unset, `base`, the pipeline's pretrained
    model) and register the result."""
    from smolforge.model_source import resolve
    from smolforge.tasks.finetune.adapters import check_against_model
    from smolforge.tasks.finetune.prefect_tasks import finetune_stage, quantize_stage

    cfg = config.finetune
    if cfg is None:
        raise ConfigError("the finetune flow needs a `finetune` section in the config")
    home = project_home()
    runtime = stage_runtime(config, parent_run_id)
    files = data_files(config, home)
    base_ref = resolve(cfg.base, base, runtime, "finetune.base")
    targets = check_against_model(cfg, base_ref.path)
    adapters = f"rank {cfg.lora.r} adapters on {len(targets)} layers" if cfg.method != "full" else "every weight"
    print(f"finetune ({cfg.method}): {adapters} of base {base_ref.kind}:{base_ref.key[:12]}, {len(files)} data files")

    quantized = quantize_stage(base_ref, cfg.qlora, runtime) if cfg.method == "qlora" else None
    tuned = finetune_stage(base_ref, {str(f): file_hash(f) for f in files}, cfg, runtime, quantized)
    metrics = tuned.manifest()["metrics"]
    lineage = {
        "smolforge.base_key": base_ref.key,
        "smolforge.finetune_method": cfg.method,
        "smolforge.config_key": stable_hash(cfg.model_dump(mode="json")),
    }
    registered = register_model(tuned, cfg.register_as, lineage, runtime.experiment, parent_run_id)
    return {"model": tuned.model_dump(), "base": base_ref.model_dump(), "metrics": metrics, "registered": registered,
            "mlflow_run_id": metrics.get("mlflow_run_id"), "quantized": quantized.model_dump() if quantized else None}
