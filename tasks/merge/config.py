"""Merge settings: the ingredients, the merges (each one mergekit method with its parameters), the
greedy soup, and which merge is registered.

Torch-free like the other stage configs, so a bad value fails at validation with the field named.
What needs the ingredients themselves (how many there are, their shapes, tokenizers and lineage)
is checked by `check.check_merge` before anything is merged.

Units: `weights` are relative (mergekit normalises them for `linear`; task-vector methods scale
each task vector by its weight), `t` is the fraction of the way from the first model to the second,
`density` the fraction of each task vector's entries kept.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import ConfigDict, Field, field_validator, model_validator

from smolforge.strict import Strict, require_unique


class MethodRule(NamedTuple):
    """What a mergekit method needs: a base model (task-vector methods), exactly two models
    (`slerp`), and which of our parameters it reads."""

    pretty_name: str
    reference_url: str
    needs_base: bool
    params: frozenset[str]
    two_models: bool = False


_TASK_VECTOR = frozenset({"weights", "lambda_"})
_SPARSE = _TASK_VECTOR | {"density"}

# The methods of mergekit 0.1.5 that run on our models with no extra code, keyed by mergekit's
# names (pretty names and references are mergekit's own). One table: the config validates against
# it, the check refuses against it, the merge step builds mergekit's config from it.
METHODS: dict[str, MethodRule] = {
    "linear": MethodRule("Linear (model soup)", "https://arxiv.org/abs/2203.05482", False, frozenset({"weights"})),
    "slerp": MethodRule("SLERP", "https://en.wikipedia.org/wiki/Slerp", False, frozenset({"t"}), two_models=True),
    "task_arithmetic": MethodRule("Task Arithmetic", "https://arxiv.org/abs/2212.04089", True, _TASK_VECTOR),
    "ties": MethodRule("TIES", "https://arxiv.org/abs/2306.01708", True, _SPARSE),
    "dare_ties": MethodRule("DARE TIES", "https://arxiv.org/abs/2311.03099", True, _SPARSE),
    "dare_linear": MethodRule("Linear DARE", "https://arxiv.org/abs/2311.03099", True, _SPARSE),
    "breadcrumbs_ties": MethodRule(
        "Model Breadcrumbs with TIES", "https://arxiv.org/abs/2312.06795", True, _SPARSE | {"gamma"}
    ),
    "della": MethodRule("DELLA", "https://arxiv.org/abs/2406.11617", True, _SPARSE | {"epsilon"}),
    "model_stock": MethodRule("Model Stock", "https://arxiv.org/abs/2403.19522", True, frozenset()),
}
SPARSIFYING = frozenset(name for name, rule in METHODS.items() if "density" in rule.params)
GREEDY_SOUP = "greedy_soup"  # the merge the stage makes itself (mergekit has none)


class MergeMethod(Strict):
    """One merge of all the ingredients: a mergekit method and its parameters."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    method: Literal[tuple(METHODS)] = Field(  # type: ignore[valid-type]
        "linear", description=f"mergekit merge method: {', '.join(METHODS)}."
    )
    name: str | None = Field(
        None, min_length=1, description="Label in the comparison and the registry tags; default: the method's name."
    )
    weights: list[float] | None = Field(
        None,
        min_length=1,
        description="One relative weight per ingredient, in the order of `ingredients` (linear, task-vector "
        "methods); null: equal weights.",
    )
    t: float | None = Field(None, ge=0, le=1, description="slerp: 0 returns the first model, 1 the second.")
    density: float | None = Field(
        None, description="Fraction of each task vector's entries kept, in (0, 1] (ties, dare_*, della, breadcrumbs_ties)."
    )
    lambda_: float | None = Field(
        None, alias="lambda", gt=0, description="Task-vector methods: scale of the merged task vector (mergekit's lambda)."
    )
    epsilon: float | None = Field(None, gt=0, lt=1, description="della: spread of the keep probabilities around density.")
    gamma: float | None = Field(None, ge=0, lt=1, description="breadcrumbs_ties: fraction of the largest entries dropped.")

    @property
    def label(self) -> str:
        return self.name or self.method

    @model_validator(mode="after")
    def _parameters_fit_the_method(self) -> MergeMethod:
        rule = METHODS[self.method]
        given = {p for p in ("weights", "t", "density", "lambda_", "epsilon", "gamma") if getattr(self, p) is not None}
        foreign = sorted(given - rule.params)
        if foreign:
            names = ", ".join("lambda" if p == "lambda_" else p for p in foreign)
            accepted = ", ".join(sorted("lambda" if p == "lambda_" else p for p in rule.params)) or "none"
            raise ValueError(f"{self.method} takes no {names} (its parameters: {accepted})")
        if self.method == "slerp" and self.t is None:
            raise ValueError("slerp needs t (0 returns the first model, 1 the second)")
        if self.density is not None and not 0 < self.density <= 1:
            raise ValueError(f"density={self.density} is outside (0, 1]: it is the fraction of task-vector entries kept")
        if self.weights is not None and (any(w < 0 for w in self.weights) or not any(self.weights)):
            raise ValueError(f"weights {self.weights} must be >= 0 and not all zero")
        return self

    def parameters(self, ingredients: int) -> tuple[dict[str, float], list[dict[str, float]]]:
        """mergekit's parameters: (shared by the merge, one dict per ingredient)."""
        shared: dict[str, float] = {}
        if self.t is not None:
            shared["t"] = self.t
        if self.lambda_ is not None:
            shared["lambda"] = self.lambda_
        per: dict[str, float] = {}
        rule = METHODS[self.method]
        if "density" in rule.params:
            per["density"] = 1.0 if self.density is None else self.density
        if self.epsilon is not None:
            per["epsilon"] = self.epsilon
        if self.gamma is not None:
            per["gamma"] = self.gamma
        weights = self.weights or ([1.0] * ingredients if "weights" in rule.params else [])
        each = [dict(per, **({"weight": w} if weights else {})) for w in (weights or [None] * ingredients)]
        return shared, each


class MergeConfig(Strict):
    """Merges of several models of one base, compared with their ingredients on held-out records."""

    ingredients: list[str] = Field(
        default_factory=lambda: ["finetune"],
        min_length=1,
        description="Models to merge, in order: `finetune` (the fine-tunes, one per `seeds`), `sweep` (the sweep's "
        "kept trial models), registry URIs (models:/smolforge-chat/3, models:/smolforge-chat@candidate), "
        "artifact keys (finetuned:<key> or a bare key) or folders (a transformers model, or a LoRA adapter).",
    )
    seeds: list[int] = Field(
        default_factory=list,
        description="Fine-tuning seeds for the `finetune` ingredient: the finetune section trained once per seed on "
        "the same base and held-out split; empty: the finetune stage's one model.",
    )
    base: str | None = Field(
        None,
        min_length=1,
        description="Base of the task vectors (task-vector methods) and of LoRA adapter ingredients: a registry URI "
        "or a folder; null: the base the ingredients were fine-tuned from (their lineage).",
    )
    methods: list[MergeMethod] = Field(
        default_factory=lambda: [MergeMethod()], description="The merges to make, each of all the ingredients."
    )
    greedy_soup: bool = Field(
        True,
        description="Also make a greedy soup: ingredients ranked by selection loss, each added to the uniform soup "
        "only if its selection loss improves.",
    )
    allow_unrelated: bool = Field(
        False, description="Merge ingredients without a shared base in their lineage (normally refused)."
    )
    choose: str = Field(
        "best",
        min_length=1,
        description="Which merge is registered: `best` (lowest selection loss), `greedy_soup`, or a method's label.",
    )
    register_as: str = Field("smolforge-merged", min_length=1, description="Registered model name in MLflow.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Dtype mergekit computes and saves in.")
    batch_size: int = Field(8, ge=1, description="Held-out records per forward pass when scoring.")
    device: str = Field("auto", description="auto (CUDA, then MPS, then CPU), cpu, cuda or mps: where scoring runs.")

    @field_validator("ingredients", "seeds")
    @classmethod
    def _unique(cls, values: list) -> list:
        require_unique(values, "merge.ingredients / merge.seeds")
        return values

    @model_validator(mode="after")
    def _consistent(self) -> MergeConfig:
        labels = [m.label for m in self.methods]
        require_unique(labels, "merge.methods labels (set `name` to tell two merges of one method apart)")
        if GREEDY_SOUP in labels or "best" in labels:
            raise ValueError(f"merge.methods: {GREEDY_SOUP!r} and 'best' are reserved labels")
        if not self.methods and not self.greedy_soup:
            raise ValueError("merge has nothing to make: no methods and greedy_soup is false")
        allowed = {"best", *labels, *([GREEDY_SOUP] if self.greedy_soup else [])}
        if self.choose not in allowed:
            raise ValueError(f"merge.choose={self.choose!r} names no merge; choose one of {sorted(allowed)}")
        if self.seeds and "finetune" not in self.ingredients:
            raise ValueError("merge.seeds is set but merge.ingredients has no `finetune` entry to expand")
        return self

    def expected_labels(self, finetune_seed: int) -> list[str] | None:
        """The ingredients' labels as the stage will name them, known before anything is trained
        (None when the sweep's kept models, counted only after it, are among them)."""
        if "sweep" in self.ingredients:
            return None
        labels: list[str] = []
        for spec in self.ingredients:
            labels += [f"finetune-seed{s}" for s in self.seeds or [finetune_seed]] if spec == "finetune" else [spec]
        return labels
