"""Fine-tuning as cached Prefect tasks that log to MLflow: `quantize_stage` (qlora only: the base
saved in 4-bit, once) and `finetune_stage`.

The fine-tuning key covers the base (its artifact key), the 4-bit base for qlora (its key), the
data (each file's content hash) and the settings: re-running with the same does no work; changing
the rank, the data or the base re-trains. The 4-bit base's key covers only the base and the
quantisation settings, so every qlora run on one base (another rank, a sweep trial, a second
adapter) reuses it.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from smolforge import tracking
from smolforge.artifacts import ArtifactRef
from smolforge.model_source import model_folder
from smolforge.runtime import Runtime
from smolforge.steps import artifact_step
from smolforge.tasks.curate.tokenizer import load_tokenizer
from smolforge.tasks.finetune.adapters import check_bitsandbytes
from smolforge.tasks.finetune.config import FinetuneConfig, QuantSettings
from smolforge.tasks.finetune.data import load_data
from smolforge.tasks.finetune.quantize import quantize_base
from smolforge.tasks.finetune.train import finetune_model

_HERE = Path(__file__).parent


class BufferedMetrics:
    """Collects per-step metrics and writes them in one `log_batch` call per evaluation: one
    tracking-store round trip per step would cost more than a small model's training step."""

    def __init__(self, run_id: str):
        self.run_id = run_id
        self.pending: list[Any] = []

    def __call__(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.pending += [Metric(key, float(value), now, step) for key, value in metrics.items()]
        if "val_loss" in metrics:
            self.flush()

    def flush(self) -> None:
        import mlflow

        if self.pending:
            mlflow.MlflowClient().log_batch(self.run_id, metrics=self.pending)
            self.pending = []


@artifact_step("model-4bit", code=(_HERE / "quantize.py",))
def quantize_stage(out: Path, base: ArtifactRef, settings: QuantSettings, runtime: Runtime) -> dict[str, Any]:
    """`base` loaded as 4-bit blocks with `settings` and saved, with its tokenizer, into `model/`.

    Its own step, so that the one-time cost of quantising (reading the whole full-precision
    checkpoint) is paid once per base and settings, not in every fine-tuning run."""
    import mlflow

    check_bitsandbytes()
    with tracking.run("quantize", runtime.experiment, runtime.parent_run_id, tags={"smolforge.base_key": base.key}) as active:
        tracking.log_params({"qlora": settings.model_dump(mode="json"), "base_key": base.key})
        started = time.perf_counter()
        result = quantize_base(base.path, settings, out / "model")
        result["seconds"] = round(time.perf_counter() - started, 2)
        mlflow.log_metrics(result)
        return {**result, "mlflow_run_id": active.info.run_id}


@artifact_step(
    "finetuned",
    code=(_HERE / "train.py", _HERE / "data.py", _HERE / "adapters.py", _HERE / "quantize.py"),
    tags=["gpu"],
)
def finetune_stage(
    out: Path, base: ArtifactRef, data: dict[str, str], config: FinetuneConfig, runtime: Runtime,
    quantized: ArtifactRef | None = None,
) -> dict[str, Any]:
    """Fine-tune `base` on the JSONL files `data` (path -> content hash) as `config` says; for
    qlora, `quantized` is `quantize_stage`'s 4-bit copy of `base`, which training loads (the merged
    model is still made on `base`, in full precision).

    Writes `adapter/` (every method but full) and `model/` (merged or fully trained, with the
    tokenizer; for prefix and prompt tuning the base with the adapter beside it), `samples.json` and
    `data.json` (records read, kept, held out, dropped by reason). Events such as `oom_recovered`
    go to the run as metrics at their step and as `events.json`."""
    import mlflow

    tokenizer = load_tokenizer(str(model_folder(base.path)))
    loaded = load_data(
        [Path(p) for p in data], tokenizer, **config.split_settings(),
    )
    summary = {**loaded.summary(), "files": data}
    with tracking.run("finetune", runtime.experiment, runtime.parent_run_id, tags={"smolforge.base_key": base.key}) as active:
        tracking.log_params({"finetune": config.model_dump(mode="json"), "base_key": base.key})
        from smolforge.tasks.curate import dataset_mlflow

        # The chat data is logged as data.json; the corpus the base learnt from is this run's input too.
        corpus = dataset_mlflow.corpus_behind(base, runtime.store)
        if corpus is not None:
            dataset_mlflow.log_dataset(corpus, context="base-training")
        mlflow.log_dict(summary, "data.json")
        mlflow.log_metrics({f"data.dropped.{reason}": float(n) for reason, n in loaded.dropped.items()}, step=0)
        mlflow.log_metrics(
            {"data.records_read": float(loaded.read), "data.train_records": float(len(loaded.train)),
             "data.val_records": float(len(loaded.val)), "data.dropped": float(sum(loaded.dropped.values()))},
            step=0,
        )
        log = BufferedMetrics(active.info.run_id)
        events: list[dict[str, Any]] = []

        def on_event(name: str, details: dict[str, Any]) -> None:
            """An event is a metric at its step (so the UI shows when) and a line of `events.json`."""
            events.append({"event": name, **details})
            print(f"finetune: {name} {json.dumps(details)}")
            if name == "oom_recovered":
                log({"oom_recovered": float(details["micro_batch_size"])}, int(details["step"]))

        try:
            result = finetune_model(
                config, base.path, loaded, out, log=log, quantized=None if quantized is None else quantized.path / "model",
                on_event=on_event,
            )
        finally:
            log.flush()
            if events:
                mlflow.log_dict(events, "events.json")
        samples = json.loads((out / "samples.json").read_text(encoding="utf-8"))
        if samples:
            mlflow.log_table({k: [s[k] for s in samples] for k in ("prompt", "reference", "completion")}, "samples.json")
        if (out / "adapter").is_dir():
            mlflow.log_artifacts(str(out / "adapter"), "adapter")
        mlflow.log_metrics({f"final_{k}": v for k, v in result.items() if not k.startswith("dropped")})
        (out / "data.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
        return {**result, "mlflow_run_id": active.info.run_id}
