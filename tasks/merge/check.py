"""Everything a merge can be refused for, checked before any weight is read into memory.

A merge averages tensors position by position, so its ingredients must be the same network: the
same architecture, the same shapes (every tensor, read from the safetensors headers), the same
vocabulary and the same tokenizer (token 17 must mean the same thing in each). Soups and task
vectors also only make sense between fine-tunes of one base: that is read from their lineage.
Each refusal names both sides.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from smolforge.artifacts import file_hash
from smolforge.errors import ConfigError
from smolforge.tasks.merge.config import METHODS, MergeMethod

# config.json fields that define the network's shape; any difference makes tensors incompatible
SHAPE_FIELDS = (
    "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
    "vocab_size", "tie_word_embeddings",
)


class MergeError(ConfigError):
    """A merge that cannot be made as configured; the message names the ingredients concerned."""


@dataclass(frozen=True)
class Ingredient:
    """A model to merge: how the config named it, its transformers folder, and the key of the base
    it was fine-tuned from (None when its lineage does not say)."""

    label: str
    folder: Path
    base_key: str | None = None


@dataclass(frozen=True)
class ModelFacts:
    """What must agree between ingredients, read from a folder without loading the weights."""

    architecture: str
    shape: dict[str, object]
    tensors: dict[str, tuple[int, ...]]
    tokenizer: str  # hash of tokenizer.json

    @classmethod
    def read(cls, folder: Path) -> ModelFacts:
        from safetensors import safe_open

        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        tensors: dict[str, tuple[int, ...]] = {}
        for file in sorted(folder.glob("*.safetensors")):
            with safe_open(str(file), "pt") as f:
                tensors.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})  # noqa: SIM118
        if not tensors:
            raise MergeError(f"{folder}: no safetensors weights to merge")
        tokenizer = folder / "tokenizer.json"
        return cls(
            architecture=",".join(config.get("architectures") or [config.get("model_type", "?")]),
            shape={k: config.get(k) for k in SHAPE_FIELDS},
            tensors=tensors,
            tokenizer=file_hash(tokenizer) if tokenizer.is_file() else "none",
        )


def _first_difference(a: ModelFacts, b: ModelFacts) -> str | None:
    """What differs between two ingredients, as `<what>: <a> vs <b>`, or None."""
    if a.architecture != b.architecture:
        return f"architecture {a.architecture} vs {b.architecture}"
    for name in SHAPE_FIELDS:
        if a.shape[name] != b.shape[name]:
            return f"{'vocabulary size' if name == 'vocab_size' else name} {a.shape[name]} vs {b.shape[name]}"
    missing = sorted(set(a.tensors) ^ set(b.tensors))
    if missing:
        return f"tensor {missing[0]} in {'the first' if missing[0] in a.tensors else 'the second'} only"
    for name, shape in a.tensors.items():
        if b.tensors[name] != shape:
            return f"tensor {name} of shape {list(shape)} vs {list(b.tensors[name])}"
    if a.tokenizer != b.tokenizer:
        return f"tokenizer (tokenizer.json {a.tokenizer[:12]} vs {b.tokenizer[:12]})"
    return None


def check_compatible(models: list[tuple[str, Path]]) -> None:
    """Refuse models (label, folder) that are not the same network with the same tokenizer."""
    facts = [(label, ModelFacts.read(folder)) for label, folder in models]
    first_label, first = facts[0]
    for label, other in facts[1:]:
        difference = _first_difference(first, other)
        if difference is not None:
            raise MergeError(f"cannot merge {first_label} with {label}: they differ in {difference}")


def check_related(ingredients: list[Ingredient], allow_unrelated: bool) -> str | None:
    """The base key the ingredients share; refuse ingredients fine-tuned from different bases (or
    of unknown lineage) unless `allow_unrelated`, in which case the shared key may be None."""
    first = ingredients[0]
    for other in ingredients[1:]:
        if other.base_key == first.base_key and first.base_key is not None:
            continue
        if allow_unrelated:
            return None
        def side(i: Ingredient) -> str:
            return f"{i.label} (base {i.base_key[:12]})" if i.base_key else f"{i.label} (no base in its lineage)"

        raise MergeError(
            f"{side(first)} and {side(other)} do not share a base: soups and task vectors need fine-tunes of one "
            "model; set merge.allow_unrelated: true to merge them anyway"
        )
    if first.base_key is None and not allow_unrelated:
        raise MergeError(f"{first.label} has no base in its lineage; set merge.allow_unrelated: true to merge it anyway")
    return first.base_key


def check_counts(methods: list[MergeMethod], labels: list[str]) -> None:
    """Refuse slerp with other than two models and weights whose count is not the ingredients'
    (`labels`): checked at validation when the labels are known from the config alone."""
    for m in methods:
        if METHODS[m.method].two_models and len(labels) != 2:
            raise MergeError(f"merge.methods {m.label}: slerp interpolates two models, got {len(labels)}: {labels}")
        if m.weights is not None and len(m.weights) != len(labels):
            raise MergeError(f"merge.methods {m.label}: {len(m.weights)} weights {m.weights} for {len(labels)} ingredients {labels}")


def check_methods(methods: list[MergeMethod], ingredients: list[Ingredient], base: Path | None) -> None:
    """Refuse a method the ingredients cannot satisfy: the counts above, and a task-vector method
    without a base."""
    labels = [i.label for i in ingredients]
    check_counts(methods, labels)
    for m in methods:
        if METHODS[m.method].needs_base and base is None:
            raise MergeError(
                f"merge.methods {m.label}: {m.method} adds task vectors to a base, and there is none: the ingredients "
                f"{labels} share no base in their lineage and merge.base is not set"
            )


def check_merge(
    methods: list[MergeMethod], ingredients: list[Ingredient], base: Path | None, allow_unrelated: bool
) -> None:
    """All of the above, base included in the compatibility check, before any work."""
    if len(ingredients) < 2:
        raise MergeError(f"a merge needs at least two ingredients, got {[i.label for i in ingredients]}")
    check_methods(methods, ingredients, base)
    models = [(i.label, i.folder) for i in ingredients]
    check_compatible(models + ([("the base", base)] if base is not None else []))
