"""A pipeline run that would change nothing, answered from the record of the run that made it.

A second `smolforge run pipeline` with the same config, code and raw data only finds every
artifact cached, yet starting Prefect's temporary server and importing the training stack costs
most of a minute. So every successful pipeline run leaves a record keyed by a fingerprint of all
that its artifacts depend on: the config, the package's source and every raw input file's content.
A run whose fingerprint has a record, whose artifacts (and everything they were made from) still
match their manifests, and whose registered versions still exist, is answered from that record
without Prefect. It still shows in the MLflow UI: a `pipeline` run tagged `smolforge.replayed_from`
(the recorded pipeline run) and `smolforge.reused.<stage>` (the stage runs that hold the results).

Configs that name something whose content is not hashed here (a registry alias or hub id, an
earlier dedup index, a sweep's study) always run the flow.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from smolforge import tracking
from smolforge.artifacts import ArtifactRef, ArtifactStore, file_hash, stable_hash
from smolforge.environment import project_home
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.results import PipelineResult
from smolforge.tasks.curate.sources import discover
from smolforge.tasks.finetune.data import DatasetError, resolve_files

_PACKAGE_DIRS = [Path(__file__).parent.parent / name for name in ("core", "flows", "tasks", "models")]


def _records(home: Path) -> Path:
    return home / "runs"


def _code_version() -> str:
    """Every source file and preset of the package: an edit anywhere may change an artifact."""
    files = sorted(p for d in _PACKAGE_DIRS for p in d.rglob("*") if p.suffix in (".py", ".yaml") and p.is_file())
    return stable_hash({str(p.relative_to(p.parents[1])): file_hash(p) for p in files})


def fingerprint(config: PipelineConfig, home: Path) -> str | None:
    """Hash of the config, the code and every raw input; None when the config depends on something
    outside the project that can change without this hash seeing it, or an input is missing."""
    external = (
        config.sweep is not None
        or config.curate.dedup.against
        or config.curate.tokenizer.pretrained is not None
        or (config.distill is not None and config.distill.teacher is not None)
        or (config.finetune is not None and config.finetune.base is not None)
    )
    if external:
        return None
    data_dir = config.curate.data_folder(home)
    inputs: dict[str, Any] = {}
    try:
        for source in config.curate.sources:
            inputs[source.name] = [(f.rel, f.xxh3) for f in discover(source, data_dir)]
        if config.finetune is not None:
            root = Path(config.finetune.data_dir).expanduser() if config.finetune.data_dir else data_dir
            inputs["finetune"] = [(str(f), file_hash(f)) for f in resolve_files(config.finetune.data, root)]
    except (ConfigError, DatasetError):
        return None  # the flow itself will report it
    return stable_hash({"config": config.model_dump(mode="json"), "code": _code_version(), "inputs": inputs})


def record(fingerprint_: str | None, result: PipelineResult, home: Path) -> None:
    """Keep the result of a pipeline run that completed, under its fingerprint (written atomically)."""
    if fingerprint_ is None:
        return
    folder = _records(home)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{fingerprint_}.{os.getpid()}.tmp"
    tmp.write_text(result.model_dump_json(indent=1), encoding="utf-8")
    os.replace(tmp, folder / f"{fingerprint_}.json")


def _refs(value: Any) -> list[ArtifactRef]:
    if isinstance(value, dict):
        if set(value) == {"kind", "key", "uri"}:
            return [ArtifactRef(**value)]
        return [r for v in value.values() for r in _refs(v)]
    if isinstance(value, list):
        return [r for v in value for r in _refs(v)]
    return []


def _intact(refs: list[ArtifactRef], store: ArtifactStore) -> bool:
    """Every artifact, and every artifact it was made from, still matches its manifest."""
    seen: set[tuple[str, str]] = set()
    todo = [(r.kind, r.key) for r in refs]
    while todo:
        kind, key = todo.pop()
        if (kind, key) in seen:
            continue
        seen.add((kind, key))
        if store.problem(kind, key) is not None:
            return False
        todo.extend((i["kind"], i["key"]) for i in store.ref(kind, key).manifest().get("inputs", []))
    return True


def replay(config: PipelineConfig) -> PipelineResult | None:
    """The recorded result of this exact pipeline run, logged as a new `pipeline` run; None when
    the flow has to run (no record, a changed input, a missing artifact or model version)."""
    home = project_home()
    key = fingerprint(config, home)
    file = _records(home) / f"{key}.json" if key else None
    if file is None or not file.is_file():
        return None
    recorded = PipelineResult.model_validate_json(file.read_text(encoding="utf-8"))
    if not _intact(_refs(recorded.model_dump(mode="json")), config.runtime().store):
        return None
    client = tracking.client()
    registered = [r.registered for r in recorded.stages.values() if getattr(r, "registered", None) is not None]
    try:
        for version in registered:
            client.get_model_version(version.name, version.version)
    except Exception:  # noqa: BLE001 - MLflow raises its own error types for a missing version
        return None
    for version in registered:  # as a real re-run does: the candidate is this run's model again
        client.set_registered_model_alias(version.name, "candidate", version.version)
    reused = {f"smolforge.reused.{name}": r.mlflow_run_id for name, r in recorded.stages.items() if r.mlflow_run_id}
    tags = {"smolforge.preset": config.preset or "", "smolforge.replayed_from": recorded.mlflow_run_id or "", **reused}
    with tracking.run("pipeline", config.tracking.experiment, tags=tags) as parent:
        tracking.log_params({"preset": config.preset, "execution": config.execution.model_dump()})
    stages = {name: r.model_copy(update={"cached": True}) for name, r in recorded.stages.items()}
    return recorded.model_copy(update={"mlflow_run_id": parent.info.run_id, "seconds": 0.0, **stages})

