"""Merging fine-tunes of one base (mergekit's methods and a greedy soup), compared with them.

Refused before any merge: an ingredient that names nothing, ingredients that are not the same
network with the same tokenizer, ingredients of different bases (unless `allow_unrelated`),
a method the ingredients cannot satisfy (slerp of other than two, task vectors without a base,
weights that do not count the ingredients). Then the held-out records (cached), each ingredient's
score, each configured merge and its score, the greedy soup (each candidate soup a cached merge),
the comparison (the `merge` MLflow run), and the registration of the best or the configured merge
as `smolforge-merged@candidate`, tagged with its ingredients.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path
from typing import Any

from prefect import flow

from smolforge.artifacts import ARTIFACT_SPEC, ArtifactRef, ArtifactStore, find_artifact
from smolforge.errors import ConfigError
from smolforge.flows.config import PipelineConfig
from smolforge.flows.finetune import finetune
from smolforge.flows.results import MergeInputs, MergeResult, PipelineResult, Registered
from smolforge.flows.sweep import sweep
from smolforge.model_source import REGISTRY_SCHEMES, import_model, locate, model_folder, registry_version, resolve
from smolforge.runtime import Runtime
from smolforge.tasks.finetune.prefect_tasks import finetune_stage
from smolforge.tasks.merge.check import Ingredient, MergeError, check_merge, check_related
from smolforge.tasks.merge.config import GREEDY_SOUP, METHODS, MergeConfig, MergeMethod
from smolforge.tasks.merge.ingredients import adapter_only, base_key, in_store, require
from smolforge.tasks.merge.mergekit_run import mergekit_version
from smolforge.tasks.merge.prefect_tasks import heldout_data, merge_report, merge_step, score_step, unload_lora
from smolforge.tasks.merge.soup import greedy_soup
from smolforge.tasks.registry.register import register_model


def _model_artifact(spec: str, runtime: Runtime, setting: str) -> ArtifactRef:
    """A base as an artifact: a folder of this project's store is that artifact (its key is the
    lineage the fine-tunes carry), anything else is imported by content."""
    folder = Path(spec).expanduser()
    stored = in_store(runtime.store, folder) if folder.exists() else None
    return stored or resolve(spec, None, runtime, setting)


def _one_ingredient(spec: str, setting: str, base: ArtifactRef | None, runtime: Runtime) -> tuple[ArtifactRef, str | None]:
    """(artifact holding model/, its base key) for a registry URI, an artifact key or a folder; a
    LoRA adapter is folded into `base` (merge.base, else the base its adapter_config names)."""
    store = runtime.store
    if spec.startswith(REGISTRY_SCHEMES):
        version = registry_version(spec)  # its smolforge.base_key tag, set by fine-tuning, is the lineage
        return resolve(spec, None, runtime, setting), None if version is None else version.tags.get("smolforge.base_key")
    folder = Path(spec).expanduser()
    if not folder.exists() and ARTIFACT_SPEC.match(spec):
        ref = require(find_artifact(store, spec), spec, setting, store)
        return ref, base_key(ref, store)
    stored = in_store(store, folder) if folder.exists() else None
    if stored is not None:
        return stored, base_key(stored, store)
    if folder.exists() and adapter_only(folder):
        adapter = next(f for f in (folder, folder / "adapter") if (f / "adapter_config.json").is_file())
        if base is None:
            named = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("base_model_name_or_path")
            if not named or not Path(named).is_dir():
                raise MergeError(
                    f"{setting}={spec!r} is a LoRA adapter whose base ({named!r}) is not a folder here: set merge.base "
                    "to the model it was trained on"
                )
            base = _model_artifact(named, runtime, f"{setting} (its adapter's base)")
        imported = import_model(adapter, runtime, spec)
        return unload_lora(base, imported, runtime), base.key
    with tempfile.TemporaryDirectory(prefix="smolforge-model-") as scratch:
        return import_model(locate(spec, Path(scratch), setting), runtime, spec), None


def merge_inputs(config: PipelineConfig, upstream: PipelineResult | None, parent_run_id: str | None) -> MergeInputs:
    """The ingredients by label (the fine-tunes, one per seed, trained here or from the cache; the
    sweep's kept models; the references given), their bases, the base of the task vectors, and
    fine-tuning's records; everything checked before any merge."""
    cfg: MergeConfig | None = config.merge
    if cfg is None:
        raise ConfigError("the merge flow needs a `merge` section in the config")
    done = upstream.model_copy() if upstream is not None else PipelineResult()
    runtime = config.runtime(parent_run_id)
    explicit_base = _model_artifact(cfg.base, runtime, "merge.base") if cfg.base is not None else None
    ingredients: dict[str, ArtifactRef] = {}
    bases: dict[str, str | None] = {}
    # the references first (cheap, and the likeliest to be wrong), then what has to be trained
    named = {
        spec: _one_ingredient(spec, f"merge.ingredients.{i}", explicit_base, runtime)
        for i, spec in enumerate(cfg.ingredients) if spec not in ("finetune", "sweep")
    }
    tuned = done.finetune or finetune(config, done, parent_run_id)
    done.finetune = tuned
    for spec in cfg.ingredients:
        if spec == "finetune":
            ft = config.finetune
            for seed in cfg.seeds or [ft.seed]:
                ingredients[f"finetune-seed{seed}"] = tuned.model if seed == ft.seed else finetune_stage(
                    tuned.inputs.base, tuned.inputs.data, ft.model_copy(update={"seed": seed}), runtime, tuned.inputs.quantized
                )
                bases[f"finetune-seed{seed}"] = tuned.inputs.base.key
        elif spec == "sweep":
            swept = done.sweep or sweep(config, done, parent_run_id)
            done.sweep = swept
            for kept in swept.kept:
                ref = ArtifactRef(**kept["model"])
                ingredients[f"sweep-trial{kept['trial']}"] = ref
                bases[f"sweep-trial{kept['trial']}"] = base_key(ref, runtime.store)
        else:
            ingredients[spec], bases[spec] = named[spec]
    listed = [Ingredient(label, model_folder(ref.path), bases[label]) for label, ref in ingredients.items()]
    if len(listed) < 2:
        raise MergeError(f"a merge needs at least two ingredients, merge.ingredients gives {list(ingredients)}")
    shared = check_related(listed, cfg.allow_unrelated)
    base = explicit_base or (_shared_base(runtime.store, shared) if shared else None)
    check_merge(cfg.methods, listed, None if base is None else model_folder(base.path), cfg.allow_unrelated)
    print(f"merge: {len(listed)} ingredients ({', '.join(ingredients)}), base "
          f"{f'{base.kind}:{base.key[:12]}' if base else 'none'}; merges {', '.join(m.label for m in cfg.methods)}"
          f"{' and a greedy soup' if cfg.greedy_soup else ''}")
    return MergeInputs(
        ingredients=ingredients, base_keys=bases, base=base, files=tuned.inputs.data, split=config.finetune.split_settings()
    )


def _shared_base(store: ArtifactStore, key: str) -> ArtifactRef | None:
    found = find_artifact(store, key)
    return found if found is not None and (found.path / "model" / "config.json").is_file() else None


class _Steps:
    """Calls the merge stage's cached steps, noting whether each was already done."""

    def __init__(self, cfg: MergeConfig, data: ArtifactRef | None, base: ArtifactRef | None, runtime: Runtime):
        self.cfg, self.data, self.base, self.runtime = cfg, data, base, runtime
        self.version = mergekit_version()
        self.cached: list[bool] = []

    def call(self, step: Any, *args: Any) -> ArtifactRef:
        self.cached.append(step.existing(*args) is not None)
        return step(*args)

    def merge(self, ingredients: list[ArtifactRef], method: MergeMethod) -> ArtifactRef:
        base = self.base if METHODS[method.method].needs_base else None
        return self.call(merge_step, ingredients, method, base, self.cfg.dtype, self.version, self.runtime)

    def score(self, model: ArtifactRef) -> dict[str, float]:
        ref = self.call(score_step, model, self.data, self.cfg.batch_size, self.cfg.device, self.runtime)
        return json.loads((ref.path / "scores.json").read_text(encoding="utf-8"))


@flow(name="merge", log_prints=True)
def merge(config: PipelineConfig, upstream: PipelineResult | None = None, parent_run_id: str | None = None) -> MergeResult:
    """Merge the configured ingredients every configured way (and greedily), compare every merge
    with the ingredients on the same held-out records, register the best (or configured) one."""
    started = time.perf_counter()
    inputs = merge_inputs(config, upstream, parent_run_id)
    cfg, runtime = config.merge, config.runtime(parent_run_id)
    steps = _Steps(cfg, None, inputs.base, runtime)
    first = next(iter(inputs.ingredients.values()))
    steps.data = steps.call(heldout_data, inputs.files, inputs.split, first, runtime)
    scores = {label: steps.score(ref) for label, ref in inputs.ingredients.items()}
    models = dict(inputs.ingredients)
    refs = list(inputs.ingredients.values())
    merges: dict[str, ArtifactRef] = {}
    for method in cfg.methods:
        merges[method.label] = steps.merge(refs, method)
        scores[method.label] = steps.score(merges[method.label])
    soup_steps: list[dict[str, Any]] = []
    soup_members: list[str] = []
    if cfg.greedy_soup:
        uniform = MergeMethod(method="linear")

        def make_soup(labels: list[str]) -> ArtifactRef:
            if len(labels) == 1:
                return inputs.ingredients[labels[0]]
            return steps.merge([inputs.ingredients[label] for label in labels], uniform)

        soup = greedy_soup(
            [(label, scores[label]["selection_loss"]) for label in inputs.ingredients],
            make_soup, lambda ref: steps.score(ref)["selection_loss"],
        )
        merges[GREEDY_SOUP] = soup.soup
        scores[GREEDY_SOUP] = steps.score(soup.soup)
        soup_steps, soup_members = soup.steps, soup.ingredients
    models.update(merges)
    rows = [
        {"model": label, "kind": "ingredient" if label in inputs.ingredients else "merge",
         "selection_loss": scores[label]["selection_loss"], "test_loss": scores[label]["test_loss"]}
        for label in models
    ]
    report = steps.call(merge_report, rows, soup_steps, models, runtime)
    run_id = report.manifest()["metrics"]["mlflow_run_id"]
    chosen = min(merges, key=lambda label: scores[label]["selection_loss"]) if cfg.choose == "best" else cfg.choose
    members = soup_members if chosen == GREEDY_SOUP else list(inputs.ingredients)
    lineage = {
        "smolforge.merge": chosen,
        "smolforge.ingredients": ", ".join(f"{label}={inputs.ingredients[label].key}" for label in members),
        "smolforge.base_key": inputs.base.key if inputs.base else "",
        "smolforge.selection_loss": f"{scores[chosen]['selection_loss']:.4f}",
        "smolforge.test_loss": f"{scores[chosen]['test_loss']:.4f}",
    }
    registered = register_model(merges[chosen], cfg.register_as, lineage, run_id=run_id, chat=True)
    print(f"merge: registered {chosen} (selection loss {scores[chosen]['selection_loss']:.4f}, "
          f"test loss {scores[chosen]['test_loss']:.4f}) as {registered['uri']}")
    return MergeResult(
        data=steps.data, merges=merges, report=report, rows=rows, soup=soup_steps, soup_ingredients=soup_members,
        chosen=chosen, registered=Registered(**registered), inputs=inputs, mlflow_run_id=run_id,
        # the stage's wall time, the extra seeds' fine-tuning included: what merging adds to a run
        cached=all(steps.cached), seconds=round(time.perf_counter() - started, 1),
    )
