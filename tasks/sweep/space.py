"""The search space of a sweep: a small text grammar and its typed form. Whether a path names a
setting of the pipeline config is `smolforge.settings.field_path_problem`, shared with `--set`.

One line per setting, keyed by the setting's dotted path in the pipeline config:

    finetune.lora.r:          int 4..64 log          integers, log-uniform
    pretrain.batch_size:      int 4..16 step 4       4, 8, 12, 16
    finetune.lr:              float 1e-5..1e-3 log   reals, log-uniform
    finetune.lora.dropout:    float 0..0.2           reals, uniform
    pretrain.optimizer.name:  choice adamw muon      one of the values (each read as YAML: 1, 0.5, true, null, text)

`log` and `step` exclude each other (Optuna samples one or the other). Torch-free: configs are
validated in processes that never train.
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import Field, model_validator

from smolforge.strict import Strict

GRAMMAR = (
    "'int LOW..HIGH [log | step N]', 'float LOW..HIGH [log | step X]' or 'choice V1 V2 ...' "
    "(e.g. 'int 4..64 log', 'float 1e-5..1e-3 log', 'choice adamw muon')"
)


class IntRange(Strict):
    kind: Literal["int"] = Field("int", description="An integer range (the first word of 'int LOW..HIGH').")
    low: int = Field(description="Smallest value (inclusive).")
    high: int = Field(description="Largest value (inclusive).")
    log: bool = Field(False, description="Sample log-uniformly (low must be > 0).")
    step: int = Field(1, ge=1, description="Spacing of the values from low.")

    @model_validator(mode="after")
    def _bounds(self) -> IntRange:
        _check_bounds(self.low, self.high, self.log, self.step != 1)
        return self

    def values_to_check(self) -> list[Any]:
        return [self.low, self.high]

    def describe(self) -> str:
        return f"int {self.low}..{self.high}" + (" log" if self.log else "") + (f" step {self.step}" if self.step != 1 else "")


class FloatRange(Strict):
    kind: Literal["float"] = Field("float", description="A real range (the first word of 'float LOW..HIGH').")
    low: float = Field(description="Smallest value (inclusive).")
    high: float = Field(description="Largest value (inclusive).")
    log: bool = Field(False, description="Sample log-uniformly (low must be > 0).")
    step: float | None = Field(None, gt=0, description="Spacing of the values from low; null: continuous.")

    @model_validator(mode="after")
    def _bounds(self) -> FloatRange:
        _check_bounds(self.low, self.high, self.log, self.step is not None)
        return self

    def values_to_check(self) -> list[Any]:
        return [self.low, self.high]

    def describe(self) -> str:
        return f"float {self.low:g}..{self.high:g}" + (" log" if self.log else "") + (f" step {self.step:g}" if self.step else "")


Scalar = Union[bool, int, float, str, None]


class Choice(Strict):
    kind: Literal["choice"] = Field("choice", description="A set of values (the first word of 'choice V1 V2 ...').")
    values: list[Scalar] = Field(min_length=2, description="The candidate values (at least two, all different).")

    @model_validator(mode="after")
    def _distinct(self) -> Choice:
        seen = [json.dumps(v) for v in self.values]
        if len(set(seen)) != len(seen):
            raise ValueError(f"choice values must be different from each other; got {self.values}")
        return self

    def values_to_check(self) -> list[Any]:
        return list(self.values)

    def describe(self) -> str:
        return "choice " + " ".join(json.dumps(v) if not isinstance(v, str) else v for v in self.values)


Param = Annotated[Union[IntRange, FloatRange, Choice], Field(discriminator="kind")]


def _check_bounds(low: float, high: float, log: bool, stepped: bool) -> None:
    if low >= high:
        raise ValueError(f"low must be below high; got {low}..{high}")
    if log and low <= 0:
        raise ValueError(f"a log range needs low > 0; got {low}..{high}")
    if log and stepped:
        raise ValueError("a range is either `log` or `step N`, not both")


_RANGE = re.compile(r"^(?P<kind>int|float)\s+(?P<low>\S+?)\s*\.\.\s*(?P<high>\S+)(?P<rest>(\s+\S+)*)\s*$")


def _number(text: str, kind: str, where: str) -> int | float:
    try:
        return int(text) if kind == "int" else float(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an {kind}") from None


def parse_param(text: str) -> dict[str, Any]:
    """One line of the grammar to the fields of IntRange, FloatRange or Choice (validated there)."""
    text = text.strip()
    if text.startswith("choice"):
        words = text.split()[1:]
        if words == [] or text.split()[0] != "choice":
            raise ValueError(f"{text!r} is not a choice; expected {GRAMMAR}")
        return {"kind": "choice", "values": [yaml.safe_load(w) for w in words]}
    match = _RANGE.match(text)
    if not match:
        raise ValueError(f"cannot read {text!r}; expected {GRAMMAR}")
    kind = match["kind"]
    out: dict[str, Any] = {"kind": kind, "low": _number(match["low"], kind, "low"), "high": _number(match["high"], kind, "high")}
    rest = match["rest"].split()
    while rest:
        word = rest.pop(0)
        if word == "log":
            out["log"] = True
        elif word == "step" and rest:
            out["step"] = _number(rest.pop(0), kind, "step")
        else:
            raise ValueError(f"{text!r}: unexpected {word!r} after the range; expected {GRAMMAR}")
    return out


def parse_space(raw: Any) -> Any:
    """Text lines become typed params; mappings (a config read back from JSON) are left to pydantic."""
    if not isinstance(raw, dict):
        return raw
    out = {}
    for path, spec in raw.items():
        if isinstance(spec, str):
            try:
                spec = parse_param(spec)
            except ValueError as exc:
                raise ValueError(f"{path!r}: {exc}") from None
        out[path] = spec
    return out


def render(value: Any) -> str:
    """A value as YAML text that `apply_override` reads back as the same value and type (PyYAML's
    own writer: it gives floats like 1e-05 the `1.0e-05` form its reader needs to see a float)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 30)
    return text.removesuffix("\n...\n").strip()
