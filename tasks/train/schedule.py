"""One warmup-stable-decay learning-rate schedule across all training stages.

SmolLM3 keeps the rate constant across its stages and decays only at the end, so a stage changes the
data, not the optimizer's course. Here the stages' step counts (from their plans) are laid end to
end on one global step axis, and a single multiplier of the optimizer's peak rate is a function of
the global step alone: nothing to save or restore, and resuming at any step gives the same rate.

Conventions: a global step is the index of an optimizer update, 0 .. total_steps - 1. The warmup
rate of step s is (s + 1) / warmup, so the first update is not wasted at rate 0; the decay reaches
`min_ratio` at total_steps (just after the last update), so the last update is not wasted either
when min_ratio is 0.

Torch-free, so plans can be checked and plotted without it.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

from smolforge.tasks.train.config import ScheduleConfig

DecayShape = Literal["linear", "sqrt", "cosine"]


def _decay_curve(progress: float, shape: str) -> float:
    """1 at progress 0 down to 0 at progress 1."""
    if shape == "linear":
        return 1.0 - progress
    if shape == "sqrt":  # "1 - sqrt": drops fast early, flat at the end (Hägele et al. 2024)
        return 1.0 - math.sqrt(progress)
    if shape == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"decay shape must be one of linear, sqrt, cosine; got {shape!r}")


def wsd_lr_multiplier(
    step: int, total_steps: int, warmup: int, decay_start: int, min_ratio: float = 0.0, shape: DecayShape = "linear"
) -> float:
    """Learning rate of global step `step` as a fraction of the peak.

    Linear warmup over steps [0, warmup), the peak over [warmup, decay_start), then a decay of the
    given shape over [decay_start, total_steps) towards `min_ratio`, which it reaches at
    total_steps. Requires 0 <= warmup <= decay_start <= total_steps.
    """
    if total_steps < 1:
        raise ValueError(f"total_steps must be at least 1; got {total_steps}")
    if not 0 <= warmup <= decay_start <= total_steps:
        raise ValueError(
            f"need 0 <= warmup <= decay_start <= total_steps; got warmup={warmup}, decay_start={decay_start}, "
            f"total_steps={total_steps}"
        )
    if not 0 <= min_ratio <= 1:
        raise ValueError(f"min_ratio must be in [0, 1]; got {min_ratio}")
    if not 0 <= step < total_steps:
        raise ValueError(f"step must be in [0, {total_steps}); got {step}")
    if step < warmup:
        return (step + 1) / warmup
    if step < decay_start:
        return 1.0
    progress = (step - decay_start) / (total_steps - decay_start)
    return min_ratio + (1.0 - min_ratio) * _decay_curve(progress, shape)


@dataclass(frozen=True)
class StageRange:
    """A stage's global steps: [start, stop)."""

    name: str
    start: int
    stop: int

    @property
    def steps(self) -> int:
        return self.stop - self.start


def _name_and_steps(plan: Any) -> tuple[str, int]:
    if isinstance(plan, tuple):
        return str(plan[0]), int(plan[1])
    return str(getattr(plan, "name", None) or plan.stage), int(plan.steps)


def stage_ranges(plans: Sequence[Any]) -> list[StageRange]:
    """Global step ranges of consecutive stages. `plans`: StagePlans, or anything with `name` and
    `steps`, or (name, steps) pairs."""
    ranges: list[StageRange] = []
    start = 0
    for plan in plans:
        name, steps = _name_and_steps(plan)
        if steps < 1:
            raise ValueError(f"stage {name!r} has {steps} steps; every stage needs at least 1")
        ranges.append(StageRange(name, start, start + steps))
        start += steps
    if not ranges:
        raise ValueError("no stages to schedule")
    names = [r.name for r in ranges]
    if len(set(names)) != len(names):
        raise ValueError(f"stage names must be unique; got {names}")
    return ranges


@dataclass(frozen=True)
class StageSchedule:
    """The stages on one global step axis and the learning-rate multiplier over it."""

    ranges: tuple[StageRange, ...]
    warmup: int
    decay_start: int
    min_ratio: float = 0.0
    shape: DecayShape = "linear"

    @classmethod
    def from_plans(cls, plans: Sequence[Any], config: ScheduleConfig) -> StageSchedule:
        """Resolve the schedule settings against the stages' step counts.

        The decay starts at the last stage's first step (`decay_fraction` None, as in SmolLM3) or
        covers round(decay_fraction * total) steps at the end. Warmup must end before the decay
        starts; a clear error says so otherwise.
        """
        ranges = tuple(stage_ranges(plans))
        total = ranges[-1].stop
        if config.decay_fraction is None:
            decay_start = ranges[-1].start
            where = f"the start of the last stage {ranges[-1].name!r}"
        else:
            decay_start = total - round(config.decay_fraction * total)
            where = f"decay_fraction={config.decay_fraction:g} of the steps"
        if config.warmup_steps > decay_start:
            raise ValueError(
                f"schedule.warmup_steps={config.warmup_steps} runs past the decay start at step {decay_start} "
                f"({where}, of {total} steps); shorten the warmup or the decay, or lengthen the stages"
            )
        return cls(ranges, config.warmup_steps, decay_start, config.min_lr_ratio, config.decay_shape)

    @property
    def total_steps(self) -> int:
        return self.ranges[-1].stop

    def multiplier(self, global_step: int) -> float:
        return wsd_lr_multiplier(
            global_step, self.total_steps, self.warmup, self.decay_start, self.min_ratio, self.shape
        )

    def stage_at(self, global_step: int) -> tuple[StageRange, int]:
        """The stage a global step belongs to, and the step's index within it."""
        if not 0 <= global_step < self.total_steps:
            raise ValueError(f"global step must be in [0, {self.total_steps}); got {global_step}")
        i = bisect.bisect_right([r.start for r in self.ranges], global_step) - 1
        return self.ranges[i], global_step - self.ranges[i].start

    def to_global(self, stage: str, local_step: int) -> int:
        for r in self.ranges:
            if r.name == stage:
                if not 0 <= local_step < r.steps:
                    raise ValueError(f"stage {stage!r} has steps [0, {r.steps}); got {local_step}")
                return r.start + local_step
        raise ValueError(f"no stage {stage!r}; stages: {', '.join(r.name for r in self.ranges)}")


def schedule_points(schedule: StageSchedule, every: int = 1) -> dict[str, list]:
    """Columns for a plot or a test: global step, multiplier and stage name, every `every` steps
    (the last step always included)."""
    if every < 1:
        raise ValueError(f"every must be at least 1; got {every}")
    steps = list(range(0, schedule.total_steps, every))
    if steps[-1] != schedule.total_steps - 1:
        steps.append(schedule.total_steps - 1)
    return {
        "step": steps,
        "lr_multiplier": [schedule.multiplier(s) for s in steps],
        "stage": [schedule.stage_at(s)[0].name for s in steps],
    }
