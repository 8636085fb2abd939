"""A corpus's dataset as an MLflow dataset (`mlflow.data`): logged by the curate run that made it
and, as their input, by every run that trains on it, so the UI shows which dataset a run consumed.

MLflow's own dataset types would load the rows into memory (`from_pandas`) or convert them
(`from_huggingface`) only to compute a digest and a row count; the Parquet files' hashes are in the
artifact's manifest and the counts in `profile.json`, so this small subclass of `Dataset` reads
those (MLflow's documented way to add a dataset type).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mlflow.data.dataset import Dataset
from mlflow.data.dataset_source_registry import get_registered_sources, resolve_dataset_source
from mlflow.types.schema import ColSpec, DataType, Schema

from smolforge.artifacts import MANIFEST, ArtifactRef, ArtifactStore, stable_hash
from smolforge.tasks.curate import dataset

_TYPES = {"string": DataType.string, "large_string": DataType.string, "double": DataType.double, "int64": DataType.long}
NAMES = {"corpus": "curated-corpus", "retrain-data": "retrain-corpus"}


def _source(folder: Path):
    # A local folder matches MLflow's local-artifact source twice (it is registered twice), which
    # warns on every resolve: name the one candidate.
    local = [s for s in get_registered_sources() if s.__name__ == "LocalArtifactDatasetSource"][:1]
    return resolve_dataset_source(folder.resolve().as_uri(), candidate_sources=local)


class CorpusDataset(Dataset):
    """The `dataset/` folder of a corpus artifact: digest from its files' hashes, profile from its counts."""

    def __init__(self, ref: ArtifactRef):
        self.folder = ref.path / dataset.FOLDER
        files = json.loads((ref.path / MANIFEST).read_text(encoding="utf-8"))["files"]
        self._hashes = {name: meta["xxh3"] for name, meta in files.items() if name.startswith(f"{dataset.FOLDER}/")}
        self._profile = dataset.read_profile(self.folder)
        super().__init__(_source(self.folder), name=NAMES.get(ref.kind, ref.kind), digest=None)

    def _compute_digest(self) -> str:
        return stable_hash(self._hashes)[:16]

    @property
    def profile(self) -> dict[str, Any]:
        p = self._profile
        return {"num_rows": p["rows"], "chars": p["chars"], "tokens": p["tokens"], "files": p["files"], "languages": p["languages"],
                "sources": {s: v["rows"] for s, v in p["sources"].items()}}

    @property
    def schema(self) -> Schema:
        return Schema([ColSpec(_TYPES[str(field.type)], field.name) for field in dataset.SCHEMA])

    def to_dict(self) -> dict[str, str]:
        return {**super().to_dict(), "schema": json.dumps({"mlflow_colspec": self.schema.to_dict()}), "profile": json.dumps(self.profile)}


def log_dataset(ref: ArtifactRef, context: str) -> bool:
    """Log the dataset of the corpus `ref` as an input of the active run; False when the artifact
    has none (a corpus assembled by hand, as some tests do, carries token shards only)."""
    import mlflow

    if not (ref.path / dataset.FOLDER / dataset.PROFILE).is_file():
        return False
    mlflow.log_input(CorpusDataset(ref), context=context)
    return True


def corpus_behind(ref: ArtifactRef, store: ArtifactStore, depth: int = 8) -> ArtifactRef | None:
    """The corpus a model artifact was trained on: the nearest `corpus` or `retrain-data` among the
    inputs of its manifest, their inputs, and so on (a fine-tune's base was pretrained or
    distilled on it). None for a model from outside the store."""
    frontier, seen = [ref], set()
    for _ in range(depth):
        found = []
        for node in frontier:
            if node.kind in NAMES:
                return node
            if (node.kind, node.key) in seen or not (node.path / MANIFEST).is_file():
                continue
            seen.add((node.kind, node.key))
            found += [store.ref(i["kind"], i["key"]) for i in node.manifest().get("inputs", [])]
        frontier = found
    return None
