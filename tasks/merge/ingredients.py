"""Where an ingredient comes from and what it was fine-tuned from.

An ingredient is an artifact holding `model/` (or, for a LoRA adapter, `adapter/`). Its base is
read from its lineage: the `base` a fine-tuning step was configured with, else the first input of
its manifest that holds a model of another kind (a sweep trial's upstream base; pretraining's
previous stage is the same training, not a base), else the `smolforge.base_key`
tag of the registry version it came from. A model pretrained from scratch has a corpus there, not
a model: it shares no base with anything, and soups of such models are refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from smolforge.artifacts import ArtifactRef, ArtifactStore
from smolforge.tasks.merge.check import MergeError

QUANTIZED = "model-4bit"  # a 4-bit copy of a base is an input of qlora runs, never their base


def holds_model(folder: Path) -> bool:
    return (folder / "model" / "config.json").is_file() or (folder / "config.json").is_file()


def adapter_only(folder: Path) -> bool:
    """A LoRA adapter folder (or an artifact holding one) without a merged model beside it."""
    return not holds_model(folder) and any((f / "adapter_config.json").is_file() for f in (folder, folder / "adapter"))


def in_store(store: ArtifactStore, folder: Path) -> ArtifactRef | None:
    """The artifact `folder` is (or is inside of), when it lives in `store`."""
    try:
        kind, key, *_ = folder.resolve().relative_to(store.root.resolve()).parts
    except ValueError:
        return None
    return store.get(kind, key)


def base_key(ref: ArtifactRef, store: ArtifactStore) -> str | None:
    """The key of the model `ref` was fine-tuned from, by its manifest, or None."""
    manifest: dict[str, Any] = ref.manifest()
    config = manifest.get("config") or {}
    base = config.get("base") if isinstance(config, dict) else None
    if isinstance(base, dict) and base.get("key"):
        return str(base["key"])
    for entry in manifest.get("inputs", []):
        # an input of its own kind continues the same training (pretraining's previous stage)
        kind = entry["kind"]
        if kind not in (QUANTIZED, ref.kind) and store.has(kind, entry["key"]) and holds_model(store.ref(kind, entry["key"]).path):
            return str(entry["key"])
    return None


def require(ref: ArtifactRef | None, spec: str, setting: str, store: ArtifactStore) -> ArtifactRef:
    if ref is None:
        raise MergeError(f"{setting}={spec!r}: no such model: not a folder, a registry URI or an artifact in {store.location}")
    return ref
