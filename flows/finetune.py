"""Fine-tuning (LoRA, QLoRA, full, prefix, prompt or (IA)³) on instruction and chat data, registered
as a chat candidate.

Everything that can be refused is refused first, before a weight is loaded: the data files (each
must exist and hold usable records), the base's whereabouts, and the settings against the base
(target modules, rank, bitsandbytes for qlora). Then, for qlora, the cached quantisation of the
base (once per base and quantisation settings), the cached fine-tuning task, and the registration
as `smolforge-chat@candidate`, tagged with the base's key and how it is served (`smolforge.serving`):
the merged or fully trained model with MLflow's transformers flavor, or, for prefix and prompt
tuning, the base and its adapter together (`tasks/serve/adapters.py`).

With `finetune.adapters`, each named adapter is fine-tuned on its own data (one cached task each,
keyed by its own data and the shared settings) and all of them are registered as one model: the
base once, the adapters beside it, a request picking one.
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
from smolforge.model_source import DEFAULT_ADAPTER, resolve
from smolforge.tasks.curate.prefect_tasks import sample_corpus_task
from smolforge.tasks.finetune.adapters import check_against_model
from smolforge.tasks.finetune.data import DatasetError, check_files, resolve_files
from smolforge.tasks.finetune.prefect_tasks import finetune_stage, quantize_stage
from smolforge.tasks.registry.register import register_model
from smolforge.tasks.serve.adapters import FULL, MERGED, SERVING_TAG, register_adapters


def data_files(config: PipelineConfig, home: Path, patterns: list[str] | None = None, setting: str = "finetune.data") -> list[Path]:
    """The JSONL files `finetune.data` (or `patterns`, which `setting` names in errors) names, each
    checked; relative paths resolve against `finetune.data_dir`, else the curate data folder (built
    first when it is the sample corpus)."""
    cfg = config.finetune
    if cfg.data_dir is not None:
        root = Path(cfg.data_dir).expanduser().resolve()
    else:
        root = config.curate.data_folder(home)
        if config.curate.data_dir is None and config.curate.sample_corpus is not None:
            sample_corpus_task(str(root), config.curate.sample_corpus.scale)
    try:
        files = resolve_files(cfg.data if patterns is None else patterns, root)
        check_files(files)
    except DatasetError as exc:
        raise ConfigError(f"{setting}: {exc}") from None
    return files


def finetune_inputs(config: PipelineConfig, upstream: PipelineResult | None, parent_run_id: str | None) -> FinetuneInputs:
    """The data files, the base (`finetune.base`, else the pipeline's pretrained model, pretrained
    here when run alone) checked against the settings, and for qlora its cached 4-bit copy."""
    cfg = config.finetune
    if cfg is None:
        raise ConfigError("the finetune flow needs a `finetune` section in the config")
    home = project_home()
    files = data_files(config, home)
    per_adapter = {
        a.name: {str(f): file_hash(f) for f in data_files(config, home, a.data, f"finetune.adapters.{a.name}.data")}
        for a in cfg.adapters
    }
    pretrained = pretrained_model(config, upstream, parent_run_id) if cfg.base is None else None
    runtime = config.runtime(parent_run_id)
    base = resolve(cfg.base, pretrained, runtime, "finetune.base")
    targets = check_against_model(cfg, base.path)
    trained = {
        "full": "every weight", "prefix": f"a {cfg.prefix.num_virtual_tokens}-position prefix in every layer",
        "prompt": f"a {cfg.prompt.num_virtual_tokens}-token soft prompt", "ia3": f"(IA)³ scales on {len(targets)} layers",
    }.get(cfg.method, f"rank {cfg.lora.r} adapters on {len(targets)} layers")
    several = f", adapters {', '.join(per_adapter)}" if per_adapter else ""
    print(f"finetune ({cfg.method}): {trained} of base {base.kind}:{base.key[:12]}, {len(files)} data files{several}")
    quantized = quantize_stage(base, cfg.qlora, runtime) if cfg.method == "qlora" else None
    return FinetuneInputs(base=base, quantized=quantized, data={str(f): file_hash(f) for f in files}, adapter_data=per_adapter)


@flow(name="finetune", log_prints=True)
def finetune(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None) -> FinetuneResult:
    """Fine-tune `finetune.base` (or, when that is unset, the pipeline's pretrained model) and
    register the result."""
    inputs = finetune_inputs(config, upstream, parent_run_id)
    cfg = config.finetune
    runtime = config.runtime(parent_run_id)
    if cfg.adapters:
        return several_adapters(config, inputs, parent_run_id)
    cached = finetune_stage.existing(inputs.base, inputs.data, cfg, runtime, inputs.quantized) is not None
    with gpu_slot():
        tuned = finetune_stage(inputs.base, inputs.data, cfg, runtime, inputs.quantized)
    metrics = tuned.manifest()["metrics"]
    lineage = {
        "smolforge.base_key": inputs.base.key,
        "smolforge.finetune_method": cfg.method,
        "smolforge.config_key": stable_hash(cfg.model_dump(mode="json")),
    }
    if cfg.mergeable():
        lineage[SERVING_TAG] = FULL if cfg.method == "full" else MERGED
        registered = register_model(tuned, cfg.register_as, lineage, chat=True)
    else:  # the artifact's model/ is the base with the adapter in it: logged whole, never a hub id
        registered = register_adapters(
            tuned.path / "model", {DEFAULT_ADAPTER: tuned.path / "adapter"}, cfg.register_as,
            {DEFAULT_ADAPTER: tuned.key}, lineage, runtime, metrics["mlflow_run_id"],
        )
    return FinetuneResult(
        model=tuned, inputs=inputs, metrics=metrics, registered=Registered(**registered),
        mlflow_run_id=metrics.get("mlflow_run_id"), seconds=metrics.get("seconds", 0.0), cached=cached,
    )


def several_adapters(config: PipelineConfig, inputs: FinetuneInputs, parent_run_id: str | None) -> FinetuneResult:
    """`finetune.adapters`: one cached fine-tune per adapter (its own data, the shared settings),
    then the base and every adapter registered as one model (`register_adapters`)."""
    cfg = config.finetune
    runtime = config.runtime(parent_run_id)
    tuned, cached = {}, True
    for adapter in cfg.adapters:
        one = cfg.model_copy(update={"data": adapter.data, "adapters": []})
        data = inputs.adapter_data[adapter.name]
        cached = cached and finetune_stage.existing(inputs.base, data, one, runtime, inputs.quantized) is not None
        with gpu_slot():
            tuned[adapter.name] = finetune_stage(inputs.base, data, one, runtime, inputs.quantized)
    lineage = {
        "smolforge.base_key": inputs.base.key,
        "smolforge.finetune_method": cfg.method,
        "smolforge.config_key": stable_hash(cfg.model_dump(mode="json")),
    }
    registered = register_adapters(
        inputs.base.path, {name: ref.path / "adapter" for name, ref in tuned.items()}, cfg.register_as,
        {name: ref.key for name, ref in tuned.items()}, lineage, runtime,
    )
    first = next(iter(tuned.values()))
    metrics = first.manifest()["metrics"]
    return FinetuneResult(
        model=first, inputs=inputs, metrics=metrics, registered=Registered(**registered), adapters=tuned,
        mlflow_run_id=metrics.get("mlflow_run_id"),
        seconds=sum(ref.manifest()["metrics"].get("seconds", 0.0) for ref in tuned.values()), cached=cached,
    )
