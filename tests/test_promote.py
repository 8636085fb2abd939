"""The promotion gate: its decision on two metric sets, then the whole promotion against the real
MLflow registry of the test session. Gate tests register their own small versions under names of
their own (an evaluation run holding metrics, a version tagged with it, as the evaluate stage tags
them), so they need no training; the pipeline's own first promotion is read from `tiny_pipeline`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from smolforge import tracking
from smolforge.flows.config import load_config
from smolforge.flows.promote import reevaluator
from smolforge.tasks.promote.config import Gate, Guard
from smolforge.tasks.promote.decisions import decide, roll_back, version_of
from smolforge.tasks.promote.gate import PromotionError
from smolforge.tasks.promote.gate import decide as gate_decision
from smolforge.tasks.promote.registry import LOCK_SUFFIX, aliases

SMOLFORGE = Path(sys.executable).parent / "smolforge"
TEXT_GATE = {"metric": "bits_per_byte", "floor": 8.0}


# --- the decision alone -------------------------------------------------------------------------

CHAT = Gate(metric="chat_loss", min_delta=0.01, guards=[Guard(metric="rouge_l", higher_is_better=True, tolerance=0.05)])


def test_a_lower_loss_by_more_than_min_delta_passes_and_a_smaller_gain_does_not():
    assert gate_decision(CHAT, {"chat_loss": 2.0, "rouge_l": 0.3}, {"chat_loss": 2.5, "rouge_l": 0.3}).passed
    small = gate_decision(CHAT, {"chat_loss": 2.495, "rouge_l": 0.3}, {"chat_loss": 2.5, "rouge_l": 0.3})
    assert not small.passed and "chat_loss is not better" in small.reason and "0.01" in small.reason


def test_a_guard_worse_than_its_tolerance_fails_even_with_a_better_primary():
    worse = gate_decision(CHAT, {"chat_loss": 2.0, "rouge_l": 0.2}, {"chat_loss": 2.5, "rouge_l": 0.3})
    assert not worse.passed and "guard rouge_l is worse by 0.1" in worse.reason
    assert gate_decision(CHAT, {"chat_loss": 2.0, "rouge_l": 0.26}, {"chat_loss": 2.5, "rouge_l": 0.3}).passed


def test_without_a_champion_the_floors_decide():
    gate = Gate(metric="bits_per_byte", floor=3.0, guards=[Guard(metric="cloze_acc", higher_is_better=True, floor=0.3)])
    assert gate_decision(gate, {"bits_per_byte": 2.9, "cloze_acc": 0.4}, None).passed
    refused = gate_decision(gate, {"bits_per_byte": 2.9, "cloze_acc": 0.2}, None)
    assert not refused.passed and "cloze_acc 0.2 misses the floor 0.3" in refused.reason


def test_force_passes_without_comparing_and_says_so():
    forced = gate_decision(CHAT, {"chat_loss": 9.0, "rouge_l": 0.0}, {"chat_loss": 1.0, "rouge_l": 0.9}, force=True)
    assert forced.passed and forced.forced and "forced" in forced.reason


def test_a_run_that_nulls_evaluate_must_null_promote_too():
    from smolforge.errors import ConfigError

    with pytest.raises(ConfigError, match="evaluate is null \\(set promote=null too\\)"):
        load_config("tiny", overrides=["evaluate=null"])
    assert load_config("tiny", overrides=["evaluate=null", "promote=null"]).promote is None


# --- against the registry ------------------------------------------------------------------------

def new_model() -> str:
    return f"gate-test-{uuid.uuid4().hex[:8]}"


def add_version(name: str, metrics: dict[str, float] | None, data_key: str = "data-1") -> str:
    """A version of `name` whose evaluation run holds `metrics`, tagged the way the evaluate stage
    tags versions (`metrics=None`: a version nobody evaluated)."""
    import mlflow

    client = tracking.client()
    if not [m for m in client.search_registered_models(f"name='{name}'")]:
        client.create_registered_model(name)
    with tracking.run("evaluate-model", "gate-tests", tags={"smolforge.eval_data_key": data_key}) as run:
        if metrics:
            mlflow.log_metrics({**metrics, "seconds.perplexity": 1.0})
    version = client.create_model_version(name, source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
    if metrics is not None:
        client.set_model_version_tag(name, version.version, "eval.model_run_id", run.info.run_id)
        client.set_model_version_tag(name, version.version, "eval.data_key", data_key)
    return str(version.version)


def gate_config(name: str, gate: dict | None = None, *more: str):
    return load_config("tiny", overrides=[f"promote.gates={{{name}: {json.dumps(gate or TEXT_GATE)}}}", "promote.settle_seconds=0.2", *more])


def tags(name: str, version: str) -> dict[str, str]:
    return dict(tracking.client().get_model_version(name, version).tags)


def run_gate(name: str, version: str, **options):
    """The gate on one version, as `smolforge promote` runs it: (its outcome, the promote run id)."""
    config = gate_config(name)
    outcomes, run_id = decide(
        config.promote, config.tracking.experiment, [(name, version)], reevaluate=reevaluator(config), **options
    )
    return outcomes[0], run_id


def promote_one(name: str, version: str, **options):
    return run_gate(name, version, **options)[0]


def test_a_better_challenger_becomes_champion_and_the_old_one_previous_champion():
    name = new_model()
    first = add_version(name, {"bits_per_byte": 3.0})
    assert promote_one(name, first, note="first").decision == "promoted"
    assert "first promotion" in tags(name, first)["promotion.reason"]
    better = add_version(name, {"bits_per_byte": 2.5})
    outcome, run_id = run_gate(name, better, note="weekly")
    assert outcome.decision == "promoted"
    assert aliases(name) == {"champion": better, "previous-champion": first}
    recorded = tags(name, better)
    assert recorded["promotion"] == "promoted" and recorded["promotion.forced"] == "false" and recorded["promotion.note"] == "weekly"
    assert json.loads(recorded["promotion.challenger_metrics"]) == {"bits_per_byte": 2.5}
    assert json.loads(recorded["promotion.champion_metrics"]) == {"bits_per_byte": 3.0}
    assert recorded["promotion.champion_version"] == first and recorded["promotion.run_id"] == run_id
    run = tracking.client().get_run(run_id)
    assert run.data.tags["promotion." + name] == f"promoted version {better}"
    table = json.loads(Path(tracking.client().download_artifacts(run_id, "comparison.json")).read_text())
    rows = [dict(zip(table["columns"], r)) for r in table["data"]]
    assert [(r["role"], r["version"], r["bits_per_byte"]) for r in rows] == [("challenger", better, 2.5), ("champion", first, 3.0)]


def test_a_worse_challenger_is_rejected_with_its_reason_and_the_champion_stays():
    name = new_model()
    champion = add_version(name, {"bits_per_byte": 2.0})
    promote_one(name, champion)
    worse = add_version(name, {"bits_per_byte": 2.2})
    decision = promote_one(name, worse, note="weekly")
    assert decision.decision == "rejected"
    assert aliases(name) == {"champion": champion}
    recorded = tags(name, worse)
    assert recorded["promotion"] == "rejected"
    assert "bits_per_byte is not better than the champion's" in recorded["promotion.reason"]
    assert tags(name, champion)["promotion"] == "promoted"  # the champion's own record is untouched


def test_a_first_candidate_that_misses_the_floor_is_rejected():
    name = new_model()
    version = add_version(name, {"bits_per_byte": 8.5})
    assert promote_one(name, version).decision == "rejected"
    assert aliases(name) == {} and "misses the floor 8" in tags(name, version)["promotion.reason"]


def test_a_forced_promotion_is_recorded_as_forced_and_never_skips_the_evaluation():
    name = new_model()
    champion = add_version(name, {"bits_per_byte": 2.0})
    promote_one(name, champion)
    worse = add_version(name, {"bits_per_byte": 4.0})
    decision = promote_one(name, worse, force=True, note="hotfix")
    assert decision.decision == "promoted" and decision.forced
    assert aliases(name) == {"champion": worse, "previous-champion": champion}
    assert tags(name, worse)["promotion.forced"] == "true" and tags(name, worse)["promotion.note"] == "hotfix"
    unevaluated = add_version(name, None)
    with pytest.raises(PromotionError, match=f"version {unevaluated} has no evaluation"):
        promote_one(name, unevaluated, force=True)
    assert aliases(name) == {"champion": worse, "previous-champion": champion}


def test_rollback_restores_the_earlier_champion_and_walks_back_the_chain():
    name = new_model()
    versions = [add_version(name, {"bits_per_byte": bpb}) for bpb in (3.0, 2.5, 2.0)]
    for version in versions:
        promote_one(name, version)
    assert aliases(name) == {"champion": versions[2], "previous-champion": versions[1]}
    roll_back("gate-tests", name, "regression in production")
    assert aliases(name) == {"champion": versions[1], "previous-champion": versions[0]}
    assert tags(name, versions[2])["promotion"] == "rolled back"
    assert "regression in production" in tags(name, versions[1])["promotion.reason"]
    roll_back("gate-tests", name)
    assert aliases(name) == {"champion": versions[0]}
    with pytest.raises(PromotionError, match="no alias 'previous-champion'"):
        roll_back("gate-tests", name)


def registry_state(name: str) -> tuple:
    client = tracking.client()
    versions = client.search_model_versions(f"name='{name}'")
    return aliases(name), sorted((v.version, sorted(v.tags.items())) for v in versions)


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(SMOLFORGE), *args], capture_output=True, text=True, timeout=300, env={**os.environ, "COLUMNS": "200"})


def test_bad_input_is_refused_naming_the_value_and_nothing_changes():
    name = new_model()
    champion = add_version(name, {"bits_per_byte": 2.0, "loss": 1.4})
    promote_one(name, champion)
    challenger = add_version(name, {"bits_per_byte": 1.9, "loss": 1.3})
    before = registry_state(name)
    config = gate_config(name)

    def gate(version_name: str, version: str):
        return decide(config.promote, "gate-tests", [(version_name, version)], reevaluate=reevaluator(config))

    for call, message in [
        (lambda: gate("no-such-model", "1"), "no registered model 'no-such-model'"),
        (lambda: gate(name, "99"), f"{name} has no version '99'; its versions: 1, 2"),
        (lambda: version_of(name, "candidate"), f"{name} has no alias 'candidate'; its aliases: champion -> 1"),
        (lambda: roll_back("gate-tests", name), f"{name} has no alias 'previous-champion'"),
    ]:
        with pytest.raises(PromotionError, match=re.escape(message)):
            call()
    # the command line exits 2 and names the metrics the evaluation does have
    metrics = cli("promote", name, challenger, "--reason", "x", "--set", f"promote.gates={{{name}: {{metric: rouge_l}}}}")
    assert metrics.returncode == 2, metrics.stdout + metrics.stderr
    said = " ".join(metrics.stdout.split())
    assert "the gate reads rouge_l, which the evaluation of" in said and "its metrics are: bits_per_byte, loss" in said
    assert registry_state(name) == before


def test_the_cli_promotes_shows_the_decision_and_lists_the_models():
    name = new_model()
    version = add_version(name, {"bits_per_byte": 2.0})
    gates = f"promote.gates={{{name}: {json.dumps(TEXT_GATE)}}}"
    done = cli("promote", name, version, "--reason", "first one", "--set", gates)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "promoted" in done.stdout and "first promotion" in done.stdout
    worse = add_version(name, {"bits_per_byte": 2.5})
    rejected = cli("promote", name, worse, "--reason", "try", "--set", gates)
    assert rejected.returncode == 1 and "rejected" in rejected.stdout
    listed = cli("models")
    assert listed.returncode == 0
    line = next(line for line in listed.stdout.splitlines() if name in line)
    assert "champion" in line and "promoted" in line


RACER = """
import json, sys, time
from smolforge.environment import configure
configure()
from smolforge.tasks.promote.config import Gate, PromoteConfig
from smolforge.tasks.promote.decisions import decide
rounds = json.loads(sys.argv[1])  # [name, version, seconds after the go signal], one per round
config = PromoteConfig(gates={name: Gate(metric="bits_per_byte") for name, _, _ in rounds})
def never(*args):
    raise AssertionError("both versions were scored on the same data")
print("ready", flush=True)
go = float(sys.stdin.readline())  # both start from the same instant, once both have imported everything
for name, version, at in rounds:
    time.sleep(max(0.0, go + at - time.time()))
    print(decide(config, "gate-tests", [(name, version)], reevaluate=never, note="race")[0][0].decision, flush=True)
"""
ROUND_SECONDS = 1.5  # a decision (checks, the lock, the promote run) fits in it
WORSE_STARTS_LATER_BY = (0.0, 0.01, 0.02, 0.03, 0.05, 0.08)  # a few ms separate reading the champion from moving it


def test_two_promotions_racing_in_two_processes_end_on_the_better_model():
    """In each round both processes start from the same champion and both beat it; the worse one
    starts a little later, so it often writes `champion` last, having decided against the old
    champion. Whichever writes last, the better model must end as champion every time."""
    names = [new_model() for _ in WORSE_STARTS_LATER_BY]
    best_rounds, good_rounds, best = [], [], {}
    for i, (name, delay) in enumerate(zip(names, WORSE_STARTS_LATER_BY)):
        promote_one(name, add_version(name, {"bits_per_byte": 3.0}))
        good, best[name] = add_version(name, {"bits_per_byte": 2.5}), add_version(name, {"bits_per_byte": 2.0})
        best_rounds.append([name, best[name], i * ROUND_SECONDS])
        good_rounds.append([name, good, i * ROUND_SECONDS + delay])
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, json.dumps(rounds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True,
        )
        for rounds in (best_rounds, good_rounds)
    ]
    assert [r.stdout.readline().strip() for r in racers] == ["ready", "ready"]
    go = time.time() + 0.5
    for r in racers:
        r.stdin.write(f"{go}\n")
        r.stdin.flush()
    outputs = [(out.split(), err[-2000:]) for out, err in (r.communicate(timeout=180) for r in racers)]
    assert all(r.returncode == 0 for r in racers), outputs
    assert [aliases(name)["champion"] for name in names] == [best[name] for name in names], outputs
    assert all(tags(name, best[name])["promotion"] == "promoted" for name in names)
    assert not [m.name for m in tracking.client().search_registered_models() if m.name.endswith(LOCK_SUFFIX)]


def test_a_lock_left_by_a_promotion_that_died_is_broken_once_stale():
    name = new_model()
    first = add_version(name, {"bits_per_byte": 3.0})
    tracking.client().create_registered_model(f"{name}{LOCK_SUFFIX}", tags={"smolforge.lock.since": str(time.time() - 3600)})
    assert promote_one(name, first).decision == "promoted"
    assert not tracking.client().search_registered_models(f"name='{name}{LOCK_SUFFIX}'")


# --- in the pipeline -----------------------------------------------------------------------------

@pytest.mark.slow
def test_the_pipeline_ends_with_a_decision_for_each_model_it_registered(tiny_pipeline):
    decisions = {d["name"]: d for d in tiny_pipeline.promote.decisions}
    assert set(decisions) == {"smolforge-base", "smolforge-student", "smolforge-chat", "smolforge-merged"}
    registered = {r.name: r.version for r in (tiny_pipeline.pretrain.registered, tiny_pipeline.distill.registered,
                                               tiny_pipeline.finetune.registered, tiny_pipeline.merge.registered)}
    assert {name: d["version"] for name, d in decisions.items()} == registered  # each stage's own candidate
    for name, d in decisions.items():
        assert d["decision"] in ("promoted", "already champion"), d
        assert aliases(name)["champion"] == d["version"]  # `candidate` may have moved on: later tests register more
        recorded = tags(name, d["version"])
        assert recorded["promotion.pipeline_run_id"] == tiny_pipeline.mlflow_run_id
        assert recorded["promotion.data_key"] == tiny_pipeline.evaluate.data.key
    assert tracking.client().get_run(tiny_pipeline.promote.mlflow_run_id).data.tags["mlflow.parentRunId"] == tiny_pipeline.mlflow_run_id


@pytest.mark.slow
def test_a_champion_scored_on_other_data_is_evaluated_again_before_the_gate_decides(tiny_pipeline):
    """Never across data: the student's version under a name of its own, its champion tagged as
    scored on older data, is evaluated again on the challenger's held-out set, then compared."""
    client = tracking.client()
    student = client.get_model_version("smolforge-student", tiny_pipeline.distill.registered.version)
    name = new_model()
    client.create_registered_model(name)
    for _ in range(2):
        version = client.create_model_version(name, source=student.source, run_id=student.run_id, tags=student.tags)
    champion, challenger = "1", str(version.version)
    client.set_registered_model_alias(name, "champion", champion)
    client.set_model_version_tag(name, champion, "eval.data_key", "older-data")
    decision = promote_one(name, challenger)
    current = tiny_pipeline.evaluate.data.key
    assert tags(name, champion)["eval.data_key"] == current  # scored again, on the challenger's data
    assert tags(name, champion)["eval.model_run_id"] != student.tags["eval.model_run_id"]
    # the same weights scored on the same data: no better, so rejected, and the champion stays
    assert decision.decision == "rejected" and aliases(name)["champion"] == champion
    assert decision.champion_metrics == pytest.approx(decision.challenger_metrics, rel=1e-6)
