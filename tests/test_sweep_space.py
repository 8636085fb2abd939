"""The sweep's search-space grammar and every refusal that must come before any trial runs."""

import pytest

from smolforge.errors import ConfigError
from smolforge.flows.config import load_config
from smolforge.flows.sweep_objectives import OBJECTIVES, check_sweep, trial_config
from smolforge.settings import apply_override
from smolforge.tasks.sweep.space import Choice, FloatRange, IntRange, render


def tiny_with(sweep: str, *more: str):
    return load_config("tiny", overrides=[*more, f"sweep={sweep}"])


def test_grammar_reads_into_typed_ranges_and_choices():
    cfg = tiny_with(
        "{stage: pretrain, space: {pretrain.batch_size: int 4..16 step 4, pretrain.optimizer.lr: float 1e-5..1e-3 log, "
        "pretrain.model.num_layers: int 2..8 log, pretrain.optimizer.name: choice adamw muon, "
        "pretrain.mtp.weight: float 0..0.5 step 0.1, pretrain.optimizer.qk_clip: choice null 50 100}}"
    ).sweep
    assert cfg.space["pretrain.batch_size"] == IntRange(low=4, high=16, step=4)
    assert cfg.space["pretrain.optimizer.lr"] == FloatRange(low=1e-5, high=1e-3, log=True)
    assert cfg.space["pretrain.model.num_layers"] == IntRange(low=2, high=8, log=True)
    assert cfg.space["pretrain.optimizer.name"] == Choice(values=["adamw", "muon"])
    assert cfg.space["pretrain.mtp.weight"] == FloatRange(low=0, high=0.5, step=0.1)
    assert cfg.space["pretrain.optimizer.qk_clip"] == Choice(values=[None, 50, 100])
    assert (cfg.sampler, cfg.pruner) == ("tpe", "median")
    # a config read back from JSON (Prefect parameters) keeps the same space
    assert type(cfg).model_validate(cfg.model_dump(mode="json")) == cfg


@pytest.mark.parametrize("value", [1e-05, 0.001, 3e20, 7, True, None, "adamw", [{"a": 1e-5}]])
def test_values_go_through_apply_override_with_their_type(value):
    data = {"x": {"y": 0}}
    apply_override(data, f"x.y={render(value)}")
    assert data["x"]["y"] == value and type(data["x"]["y"]) is type(value)


def test_a_trial_config_gets_the_fixed_settings_and_its_values():
    config = tiny_with(
        "{stage: pretrain, fixed: {pretrain.stages: [{name: short, steps: 12, seq_len: 64, mixture: {books: 1}}]}, "
        "space: {pretrain.optimizer.lr: float 1e-4..1e-2 log}}"
    )
    trial = trial_config(config, {"pretrain.optimizer.lr": 1.5e-05})
    assert trial.pretrain.optimizer.lr == 1.5e-05
    assert [s.name for s in trial.pretrain.stages] == ["short"]
    assert trial.sweep is None and config.pretrain.stages[0].name == "stable"


def test_a_trial_leaves_out_the_stages_after_the_sweep_that_merge_its_kept_models():
    config = tiny_with(
        "{stage: finetune, keep: 2, space: {finetune.lr: float 1e-3..4e-3 log}}",
        "merge.ingredients=[sweep]", "merge.seeds=[]",
    )
    check_sweep(config)  # a merge of the sweep's models is no reason to refuse the trials' settings
    trial = trial_config(config, {"finetune.lr": 2e-3})
    assert (trial.sweep, trial.merge, trial.evaluate) == (None, None, None) and trial.finetune.lr == 2e-3


@pytest.mark.parametrize(
    ("sweep", "expected"),
    [
        # a typo in a setting's name, anywhere in the path
        ("{stage: pretrain, space: {pretrain.optimizer.rate: float 1e-4..1e-2 log}}", "has no setting 'rate'"),
        ("{stage: finetune, space: {finetune.lora.rank: int 4..64 log}}", "did you mean 'r'?"),
        ("{stage: pretrain, space: {pretrain.optimizer: choice a b}}", "is a section, not a setting"),
        ("{stage: pretrain, space: {pretrain.stages.7.steps: int 5..9}}", "not an index of a list of 3 items"),
        # the grammar and the ranges
        ("{stage: pretrain, space: {pretrain.optimizer.lr: flot 1e-4..1e-2}}", "cannot read 'flot 1e-4..1e-2'"),
        ("{stage: pretrain, space: {pretrain.batch_size: int 4..x}}", "'x' is not an int"),
        ("{stage: pretrain, space: {pretrain.batch_size: int 16..4}}", "low must be below high"),
        ("{stage: pretrain, space: {pretrain.batch_size: int 4..4}}", "low must be below high"),
        ("{stage: pretrain, space: {pretrain.optimizer.lr: float 0..0.1 log}}", "a log range needs low > 0"),
        ("{stage: pretrain, space: {pretrain.optimizer.lr: float 0.1..1 log step 0.1}}", "either `log` or `step N`"),
        ("{stage: pretrain, space: {pretrain.optimizer.name: choice adamw}}", "at least 2 items"),
        # values the setting itself refuses, at either bound
        ("{stage: pretrain, space: {pretrain.optimizer.lr: float -0.1..0.1}}", "-0.1 is refused"),
        ("{stage: pretrain, space: {pretrain.optimizer.betas: choice 0.9 0.95}}", "is refused"),
        ("{stage: pretrain, space: {pretrain.optimizer.name: choice adamw sgd}}", "'sgd' is refused"),
        # settings a trial would not read, stages that are not there
        ("{stage: pretrain, space: {curate.pack.seed: int 0..3}}", "does not read curate.* settings"),
        ("{stage: pretrain, space: {finetune.lr: float 1e-4..1e-2}}", "sweep stage 'finetune' to vary them"),
        ("{stage: merge, space: {pretrain.seed: int 0..3}}", "no sweep objective 'merge'"),
        ("{stage: distill, space: {distill.alpha: float 0..1}}", "no `distill` section"),
        # the study's own settings
        ("{stage: pretrain, trials: 2, keep: 3, space: {pretrain.seed: int 0..3}}", "keep=3 models cannot come from trials=2"),
        ("{stage: pretrain, parallel: 0, space: {pretrain.seed: int 0..3}}", "sweep.parallel: got 0"),
        ("{stage: pretrain, sampler: grid, space: {pretrain.seed: int 0..3}}", "sweep.sampler: got 'grid'"),
        ("{stage: pretrain, pruner: asha, space: {pretrain.seed: int 0..3}}", "sweep.pruner: got 'asha'"),
        ("{stage: pretrain, space: {}}", "sweep.space"),
        ("{stage: pretrain, fixed: {pretrain.seed: 1}, space: {pretrain.seed: int 0..3}}", "both fixed and searched"),
        ("{stage: pretrain, fixed: {pretrain.stages: []}, space: {pretrain.seed: int 0..3}}", "sweep.fixed['pretrain.stages']"),
        ("{stage: pretrain, heartbeat_seconds: 5, grace_seconds: 5, space: {pretrain.seed: int 0..3}}", "must exceed"),
    ],
)
def test_bad_sweeps_are_refused_with_the_reason(sweep, expected):
    with pytest.raises(ConfigError) as err:
        check_sweep(tiny_with(sweep, "distill=null"))
    assert expected in str(err.value)


def test_every_objective_says_what_it_optimises_and_reads_its_own_section():
    assert {"pretrain", "distill", "finetune"} <= set(OBJECTIVES)
    for name, objective in OBJECTIVES.items():
        assert objective.name == name and objective.pretty_name and objective.optimises
        assert objective.reference.startswith("https://")
        assert objective.reads == (name,)


def test_the_flows_refuse_a_bad_space_before_any_work(monkeypatch):
    from smolforge.flows import curate as curate_module
    from smolforge.flows import pipeline as pipeline_module
    from smolforge.flows import sweep as sweep_module

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the sweep was checked")

    monkeypatch.setattr(curate_module, "curate", no_work)
    monkeypatch.setattr(sweep_module, "open_study", no_work)
    bad = tiny_with("{stage: pretrain, space: {pretrain.optimizer.lrr: float 1e-4..1e-2 log}}")
    for flow in (pipeline_module.pipeline, sweep_module.sweep):
        with pytest.raises(ConfigError, match="did you mean 'lr'"):
            flow.fn(bad)


def test_fixed_settings_may_replace_whole_sections_and_the_example_is_valid():
    from pathlib import Path

    check_sweep(tiny_with("{stage: pretrain, fixed: {pretrain.optimizer: {name: muon}}, space: {pretrain.seed: int 0..3}}"))
    example = Path(__file__).parent.parent / "examples" / "sweep-tiny.yaml"
    config = load_config("tiny", example)
    check_sweep(config)
    assert config.sweep.stage == "pretrain" and config.sweep.trials > config.sweep.parallel


def test_settings_valid_at_both_bounds_can_still_fail_one_trial():
    config = tiny_with("{stage: pretrain, space: {pretrain.model.num_heads: int 2..4}}")
    check_sweep(config)  # 2 and 4 divide the width
    with pytest.raises(ConfigError, match="not divisible by num_heads=3"):
        trial_config(config, {"pretrain.model.num_heads": 3})  # the trial is failed, the sweep goes on


def test_what_counts_towards_the_number_of_trials():
    from optuna.distributions import FloatDistribution
    from optuna.trial import TrialState, create_trial

    from smolforge.tasks.sweep.study import counts_as_finished

    def trial(state, **attrs):
        return create_trial(
            state=state, params={"x": 0.5}, distributions={"x": FloatDistribution(0, 1)}, user_attrs=attrs,
            value=1.0 if state == TrialState.COMPLETE else None,
        )

    counted = [trial(TrialState.COMPLETE), trial(TrialState.PRUNED), trial(TrialState.FAIL, failure="diverged")]
    not_counted = [trial(TrialState.FAIL), trial(TrialState.RUNNING), trial(TrialState.WAITING)]
    assert [counts_as_finished(t) for t in counted] == [True] * 3
    assert [counts_as_finished(t) for t in not_counted] == [False] * 3  # died or broke: run again
