"""The merge stage on the tiny pipeline's fine-tunes (the session's `tiny_pipeline` merges three
seeds once): the comparison in MLflow, the registered merge and its tags, caching (nothing re-runs
unchanged; a changed method re-makes only its merge), and refusals before any merge."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import mlflow
import pytest

from smolforge.errors import ConfigError
from smolforge.flows.config import load_config
from smolforge.flows.merge import merge

pytestmark = pytest.mark.slow
KINDS = ("merged", "merge-score", "merge-report", "merge-data")


def artifacts(home: Path) -> dict[str, set[str]]:
    return {kind: {p.name for p in (home / "artifacts" / kind).glob("*") if not p.name.startswith(".")} for kind in KINDS}


def test_three_seeds_are_merged_and_compared_with_their_ingredients(tiny_pipeline):
    result = tiny_pipeline.merge
    assert list(result.inputs.ingredients) == ["finetune-seed0", "finetune-seed1", "finetune-seed2"]
    assert result.inputs.ingredients["finetune-seed0"] == tiny_pipeline.finetune.model
    assert len({ref.key for ref in result.inputs.ingredients.values()}) == 3  # three distinct fine-tunes
    assert set(result.inputs.base_keys.values()) == {tiny_pipeline.pretrain.model.key} == {result.inputs.base.key}
    assert [r["model"] for r in result.rows] == [*result.inputs.ingredients, "ties", "greedy_soup"]
    for row in result.rows:
        assert 0 < row["selection_loss"] < 20 and 0 < row["test_loss"] < 20
    ties = result.merges["ties"].manifest()
    assert ties["config"]["mergekit"] == "0.1.5" and ties["config"]["base"]["key"] == tiny_pipeline.pretrain.model.key
    assert [i["key"] for i in ties["inputs"]] == [*(r.key for r in result.inputs.ingredients.values()), result.inputs.base.key]
    assert result.soup_ingredients and result.soup[0]["kept"]
    scores = {r["model"]: r["selection_loss"] for r in result.rows}
    assert result.chosen == min(("ties", "greedy_soup"), key=scores.get)


def test_mlflow_holds_one_table_and_one_chart_and_the_registered_merge(tiny_pipeline):
    result = tiny_pipeline.merge
    client = mlflow.MlflowClient()
    run = client.get_run(result.mlflow_run_id)
    assert run.info.run_name == "merge" and run.data.tags["mlflow.parentRunId"] == tiny_pipeline.mlflow_run_id
    assert {"comparison.json", "comparison.png"} <= {a.path for a in client.list_artifacts(run.info.run_id)}
    table = json.loads(Path(mlflow.artifacts.download_artifacts(run_id=run.info.run_id, artifact_path="comparison.json")).read_text())
    assert table["columns"] == ["model", "kind", "selection_loss", "test_loss"] and len(table["data"]) == 5
    version = client.get_model_version_by_alias("smolforge-merged", "candidate")
    assert version.run_id == run.info.run_id and version.tags["smolforge.merge"] == result.chosen
    members = result.soup_ingredients if result.chosen == "greedy_soup" else list(result.inputs.ingredients)
    assert version.tags["smolforge.ingredients"] == ", ".join(f"{m}={result.inputs.ingredients[m].key}" for m in members)


def test_rerunning_unchanged_runs_nothing_and_a_changed_method_remakes_only_its_merge(tiny_pipeline, session_home):
    before = artifacts(session_home)
    again = merge(load_config("tiny"), tiny_pipeline, tiny_pipeline.mlflow_run_id)
    assert again.cached and again.report == tiny_pipeline.merge.report and artifacts(session_home) == before
    changed = merge(load_config("tiny", overrides=["merge.methods.0.density=0.7"]), tiny_pipeline, tiny_pipeline.mlflow_run_id)
    after = artifacts(session_home)
    assert not changed.cached
    assert len(after["merged"] - before["merged"]) == 1 and changed.merges["ties"].key in after["merged"] - before["merged"]
    assert len(after["merge-score"] - before["merge-score"]) == 1  # the new merge's score; the rest from the cache
    assert after["merge-data"] == before["merge-data"]
    assert changed.merges["greedy_soup"] == tiny_pipeline.merge.merges["greedy_soup"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["merge.ingredients=[finetune, /no/such/model]"], r"merge.ingredients.1='/no/such/model': no such folder"),
        (["merge.ingredients=[finetune, 0123456789abcdef0123]"], r"merge.ingredients.1='0123456789abcdef0123': no such model"),
        (["merge.methods=[{method: slerp, t: 0.5}]"], r"slerp interpolates two models, got 3"),
        (["merge.methods=[{method: linear, weights: [1, 2]}]"], r"2 weights \[1.0, 2.0\] for 3 ingredients"),
    ],
)
def test_bad_ingredients_and_methods_are_refused_before_any_merge(tiny_pipeline, session_home, overrides, message):
    before = artifacts(session_home)
    with pytest.raises(ConfigError, match=message):
        merge(load_config("tiny", overrides=overrides), tiny_pipeline)
    assert artifacts(session_home) == before


def test_a_model_pretrained_from_scratch_shares_no_base_with_the_fine_tunes(tiny_pipeline, session_home):
    pretrained = tiny_pipeline.pretrain.model.path
    before = artifacts(session_home)
    config = load_config("tiny", overrides=[f"merge.ingredients=[finetune, {pretrained}]", "merge.seeds=[]"])
    with pytest.raises(ConfigError, match=rf"finetune-seed0 \(base \w{{12}}\) and {re.escape(str(pretrained))} \(no base in its lineage\) do not share a base"):
        merge(config, tiny_pipeline)
    assert artifacts(session_home) == before


def test_registry_versions_and_artifact_keys_are_ingredients_with_their_lineage(tiny_pipeline):
    ingredients = tiny_pipeline.merge.inputs.ingredients
    version = tiny_pipeline.finetune.registered.version
    specs = [f"models:/smolforge-chat/{version}", f"finetuned:{ingredients['finetune-seed1'].key}", ingredients["finetune-seed2"].key]
    config = load_config("tiny", overrides=[
        f"merge.ingredients=[{', '.join(specs)}]", "merge.seeds=[]", "merge.greedy_soup=false",
        "merge.methods=[{method: linear}]", "merge.choose=linear",
    ])
    result = merge(config, tiny_pipeline)
    assert list(result.inputs.ingredients) == specs
    assert result.inputs.ingredients[specs[0]].kind == "model-import"
    assert [result.inputs.ingredients[s] for s in specs[1:]] == [ingredients["finetune-seed1"], ingredients["finetune-seed2"]]
    assert set(result.inputs.base_keys.values()) == {tiny_pipeline.pretrain.model.key}  # the registry tag, the manifests
    assert [r["model"] for r in result.rows] == [*specs, "linear"]


def test_a_lora_adapter_folder_is_folded_into_its_base_first(tiny_pipeline, tmp_path):
    from safetensors.torch import load_file

    adapter = tmp_path / "adapter"
    shutil.copytree(tiny_pipeline.finetune.model.path / "adapter", adapter)
    config = load_config("tiny", overrides=[
        f"merge.ingredients=[finetune, {adapter}]", "merge.seeds=[1]", "merge.greedy_soup=false",
        "merge.methods=[{method: linear}]",
    ])
    result = merge(config, tiny_pipeline)
    folded = result.inputs.ingredients[str(adapter)]
    assert folded.kind == "lora-merged" and result.inputs.base_keys[str(adapter)] == tiny_pipeline.pretrain.model.key
    ours = load_file(str(folded.path / "model" / "model.safetensors"))
    stage = load_file(str(tiny_pipeline.finetune.model.path / "model" / "model.safetensors"))
    assert max(float((ours[k] - stage[k]).abs().max()) for k in stage) < 1e-5  # the same fold as fine-tuning's own


def test_a_fine_tuning_sweeps_kept_models_are_soup_ingredients(tiny_pipeline):
    """Two short trials of a fine-tuning sweep, both kept, share the pretrained base: a uniform soup."""
    config = load_config("tiny", overrides=[
        "sweep={stage: finetune, trials: 2, parallel: 1, keep: 2, pruner: none, "
        "space: {finetune.lr: float 1e-3..4e-3 log}, fixed: {finetune.steps: 15, finetune.eval_every: 5}}",
        "merge.ingredients=[sweep]", "merge.seeds=[]", "merge.greedy_soup=false", "merge.methods=[{method: linear}]", "merge.choose=linear",
    ])
    result = merge(config, tiny_pipeline)
    labels = list(result.inputs.ingredients)
    assert len(labels) == 2 and all(re.fullmatch(r"sweep-trial\d+", label) for label in labels)
    refs = list(result.inputs.ingredients.values())
    assert {ref.kind for ref in refs} == {"sweep-trial"} and refs[0].key != refs[1].key
    assert set(result.inputs.base_keys.values()) == {tiny_pipeline.pretrain.model.key}
    assert [r["model"] for r in result.rows] == [*labels, "linear"]
