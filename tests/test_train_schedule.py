"""One warmup-stable-decay schedule over all stages: its shape, where the decay starts, and the
mapping between global and stage-local steps."""

from __future__ import annotations

import math

import pytest
from pydantic import ValidationError

from smolforge.tasks.train.config import ScheduleConfig
from smolforge.tasks.train.schedule import (
    StageSchedule,
    schedule_points,
    stage_ranges,
    wsd_lr_multiplier,
)

STAGES = [("stable", 60), ("mix", 25), ("decay", 15)]


def test_warmup_stable_decay_values():
    lr = [wsd_lr_multiplier(s, 100, warmup=10, decay_start=80, min_ratio=0.1) for s in range(100)]
    assert lr[0] == pytest.approx(0.1) and lr[9] == 1.0  # no update at rate 0
    assert all(v == 1.0 for v in lr[10:81])  # the decay's first step is still at the peak
    assert lr[90] == pytest.approx(0.1 + 0.9 * 0.5)
    assert lr[99] == pytest.approx(0.1 + 0.9 / 20)  # min_ratio is reached at step 100, after the last
    assert all(a >= b for a, b in zip(lr[10:], lr[11:]))


@pytest.mark.parametrize(
    "shape, half",
    [("linear", 0.5), ("sqrt", 1 - math.sqrt(0.5)), ("cosine", 0.5)],
)
def test_decay_shapes(shape, half):
    at = lambda s: wsd_lr_multiplier(s, 100, 0, 60, 0.0, shape)  # noqa: E731
    assert at(60) == 1.0 and at(80) == pytest.approx(half)
    values = [at(s) for s in range(60, 100)]
    assert all(a > b for a, b in zip(values, values[1:]))
    if shape == "cosine":  # slower than linear early on, faster late
        assert at(65) > 1 - 5 / 40 and at(95) < 1 - 35 / 40


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="warmup <= decay_start"):
        wsd_lr_multiplier(0, 100, warmup=50, decay_start=40)
    with pytest.raises(ValueError, match=r"step must be in \[0, 100\)"):
        wsd_lr_multiplier(100, 100, 0, 50)
    with pytest.raises(ValueError, match="shape"):
        wsd_lr_multiplier(90, 100, 0, 50, shape="exp")
    with pytest.raises(ValidationError, match="decay_shape"):
        ScheduleConfig(decay_shape="exp")
    with pytest.raises(ValidationError, match="less than or equal to 1"):
        ScheduleConfig(decay_fraction=1.5)


def test_one_schedule_spans_the_stages_and_decays_over_the_last():
    sched = StageSchedule.from_plans(STAGES, ScheduleConfig(warmup_steps=10))
    assert [(r.name, r.start, r.stop) for r in sched.ranges] == [("stable", 0, 60), ("mix", 60, 85), ("decay", 85, 100)]
    assert sched.total_steps == 100 and sched.decay_start == 85
    # no jump where a stage changes before the decay: the optimizer's course is not reset
    assert sched.multiplier(59) == sched.multiplier(60) == 1.0
    assert sched.multiplier(84) == sched.multiplier(85) == 1.0 > sched.multiplier(86)
    assert sched.stage_at(0)[0].name == "stable" and sched.stage_at(60) == (sched.ranges[1], 0)
    assert sched.stage_at(99) == (sched.ranges[2], 14)
    assert sched.to_global("mix", 3) == 63
    with pytest.raises(ValueError, match="no stage 'x'"):
        sched.to_global("x", 0)
    with pytest.raises(ValueError, match=r"\[0, 25\)"):
        sched.to_global("mix", 25)


def test_decay_fraction_and_warmup_conflicts():
    sched = StageSchedule.from_plans(STAGES, ScheduleConfig(warmup_steps=5, decay_fraction=0.3, min_lr_ratio=0.2))
    assert sched.decay_start == 70 and sched.min_ratio == 0.2
    assert StageSchedule.from_plans(STAGES, ScheduleConfig(decay_fraction=0)).multiplier(99) == 1.0
    with pytest.raises(ValueError, match=r"warmup_steps=90 runs past the decay start at step 85 \(the start of the last stage 'decay'"):
        StageSchedule.from_plans(STAGES, ScheduleConfig(warmup_steps=90))
    with pytest.raises(ValueError, match="unique"):
        stage_ranges([("a", 3), ("a", 4)])
    with pytest.raises(ValueError, match="at least 1"):
        stage_ranges([("a", 0)])


def test_plans_are_accepted_directly():
    class Plan:
        def __init__(self, name, steps):
            self.name, self.steps = name, steps

    assert stage_ranges([Plan("a", 3), Plan("b", 4)])[1].start == 3


def test_schedule_points_for_plotting():
    sched = StageSchedule.from_plans(STAGES, ScheduleConfig(warmup_steps=10))
    pts = schedule_points(sched, every=7)
    assert pts["step"][0] == 0 and pts["step"][-1] == 99 and len(pts["step"]) == len(pts["lr_multiplier"]) == len(pts["stage"])
    assert pts["stage"][0] == "stable" and pts["stage"][-1] == "decay"
    full = schedule_points(sched)
    assert full["step"] == list(range(100)) and max(full["lr_multiplier"]) == 1.0
    assert full["lr_multiplier"][-1] == pytest.approx(1 / 15)


def test_default_config_gives_a_valid_schedule():
    from smolforge.tasks.train.config import PretrainConfig

    cfg = PretrainConfig()
    steps = [(s.name, math.ceil(s.tokens / (cfg.sequences_per_step * s.seq_len))) for s in cfg.stages]
    sched = StageSchedule.from_plans(steps, cfg.schedule)
    assert sched.warmup < sched.decay_start == sched.ranges[-1].start
    assert 50 < sched.total_steps < 200  # minutes, not hours, on a 2-core CPU
