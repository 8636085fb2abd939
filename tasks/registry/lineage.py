"""The chain behind a model, from a registry version back to the raw data.

Every artifact's manifest names the artifacts it was made from (`inputs`) and the MLflow run of
the stage that made it; each run carries the Prefect flow run it ran in. Walking the inputs from a
version's artifact gives: version -> the stage run that trained it -> its artifacts by key -> the
model it started from, its teacher or its ingredients -> the corpus. The walk stops at a corpus
and summarises it from `corpus.json` (documents in and out of each curation step, documents per
source): the curation's own artifacts below it are listed by `smolforge artifacts`. A retrain's
data stops the walk the same way: its sources (new documents and replay), then the corpora they
came from.

`smolforge lineage` prints the chain; registration logs it as `lineage.json` in the version's run,
so the MLflow UI shows the same chain.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from smolforge import tracking
from smolforge.artifacts import MANIFEST, ArtifactRef, ArtifactStore, find_artifact
from smolforge.errors import ConfigError
from smolforge.model_source import registry_version


class LineageError(ConfigError):
    """A reference whose lineage cannot be read: names the reference and what was expected."""


def run_summary(run_id: str) -> dict[str, Any]:
    """The stage run behind an artifact: its stage, experiment and Prefect flow run."""
    from mlflow.exceptions import MlflowException

    try:
        run = tracking.client().get_run(run_id)
    except MlflowException:
        return {"run_id": run_id, "missing": "not in this MLflow tracking store"}
    tags = run.data.tags
    summary = {"run_id": run_id, "stage": tags.get("smolforge.stage", run.info.run_name), "experiment_id": run.info.experiment_id}
    if "prefect.flow_run_id" in tags:
        summary["prefect_flow_run"] = tags.get("prefect.flow_run_url") or tags["prefect.flow_run_id"]
    return summary


def corpus_summary(folder: Path) -> dict[str, Any]:
    """Documents in and out of each curation step, and the documents and tokens of each source."""
    corpus = json.loads((folder / "corpus.json").read_text(encoding="utf-8"))
    sources = {
        name: {"documents": s["train"]["n_docs"] + s["val"]["n_docs"], "tokens": s["train"]["n_tokens"] + s["val"]["n_tokens"]}
        for name, s in corpus["sources"].items()
    }
    funnel = [
        {k: row.get(k) for k in ("step", "docs_in", "docs_out", "top_reasons")} for row in corpus["funnel"]
    ]
    return {"tokens": corpus["tokens"], "funnel": funnel, "sources": sources}


def artifact_lineage(store: ArtifactStore, ref: ArtifactRef, seen: set[str] | None = None) -> dict[str, Any]:
    """`ref`'s node: kind, key, step, when, its stage run, and the nodes of what it was made from
    (an artifact reached twice, e.g. the base of a merge and of its ingredients, is expanded once)."""
    seen = set() if seen is None else seen
    seen.add(ref.key)
    manifest = ref.manifest()
    node: dict[str, Any] = {"kind": ref.kind, "key": ref.key, "step": manifest.get("step"), "created": manifest.get("created")}
    run_id = (manifest.get("metrics") or {}).get("mlflow_run_id")
    if run_id:
        node["run"] = run_summary(run_id)
    source = (manifest.get("config") or {}).get("source") if isinstance(manifest.get("config"), dict) else None
    if source:
        node["source"] = source  # an imported model: the registry URI, folder or hub id it came from
    if ref.kind == "corpus":
        node["corpus"] = corpus_summary(ref.path)
        return node
    if ref.kind == "retrain-data":  # the new documents and the replay: its sources, then the corpora they came from
        record = json.loads((ref.path / "corpus.json").read_text(encoding="utf-8"))
        node["retrain_data"] = {
            name: {"documents": s["train"]["n_docs"] + s["val"]["n_docs"], "tokens": s["train"]["n_tokens"] + s["val"]["n_tokens"]}
            for name, s in record["sources"].items()
        }
        if record.get("repacked"):  # earlier corpora packed again with the champion's tokenizer
            node["repacked"] = record["repacked"]
        corpora = [store.get("corpus", key) for key in record.get("corpora", [])]
        node["inputs"] = [
            artifact_lineage(store, c, seen) if c is not None else {"kind": "corpus", "key": key, "missing": f"not in {store.location}"}
            for c, key in zip(corpora, record.get("corpora", []))
        ]
        return node
    node["inputs"] = []
    for item in manifest.get("inputs", []):
        if item["key"] in seen:
            node["inputs"].append({**item, "shown": "above"})
        elif store.has(item["kind"], item["key"]):
            node["inputs"].append(artifact_lineage(store, store.ref(item["kind"], item["key"]), seen))
        else:
            node["inputs"].append({**item, "missing": f"not in {store.location}"})
    return node


def version_lineage(store: ArtifactStore, name: str, version: Any) -> dict[str, Any]:
    """A registry version's node: its aliases, lineage tags and run, then its artifact's chain."""
    client = tracking.client()
    registered = client.get_registered_model(name)
    aliases = sorted(a for a, v in registered.aliases.items() if str(v) == str(version.version))
    node: dict[str, Any] = {
        "registered": f"models:/{name}/{version.version}", "aliases": aliases,
        "tags": {k: v for k, v in version.tags.items() if k.startswith("smolforge.")}, "run": run_summary(version.run_id),
    }
    key = version.tags.get("smolforge.artifact_key")
    ref = find_artifact(store, key) if key else None
    if ref is not None:
        node["artifact"] = artifact_lineage(store, ref)
    else:
        node["artifact"] = {"key": key, "missing": f"not in {store.location}" if key else "the version has no smolforge.artifact_key tag"}
    return node


def lineage(spec: str, store: ArtifactStore) -> dict[str, Any]:
    """The chain behind `spec`: `models:/name@alias`, `models:/name/version`, an artifact key
    (`kind:key` or bare) or an artifact folder."""
    version = registry_version(spec)
    if version is not None:
        return version_lineage(store, version.name, version)
    folder = Path(spec).expanduser()
    if (folder / MANIFEST).is_file():
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        return artifact_lineage(store, ArtifactRef(kind=manifest["kind"], key=manifest["key"], uri=str(folder.resolve())))
    ref = find_artifact(store, spec)
    if ref is None:
        raise LineageError(
            f"{spec!r} names no registry version (models:/name@alias or models:/name/version), no artifact in "
            f"{store.location} and no artifact folder (one holding {MANIFEST})"
        )
    return artifact_lineage(store, ref)
