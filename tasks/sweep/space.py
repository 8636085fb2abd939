"""The search space of a sweep: a small text grammar, its typed form, and the checks against the
pipeline config that refuse a bad space before any trial runs.

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

import difflib
import json
import re
import types
import typing
from typing import Annotated, Any, Literal, Union

import yaml
from pydantic import BaseModel, Field, model_validator

from smolforge.strict import Strict

GRAMMAR = (
    "'int LOW..HIGH [log | step N]', 'float LOW..HIGH [log | step X]' or 'choice V1 V2 ...' "
    "(e.g. 'int 4..64 log', 'float 1e-5..1e-3 log', 'choice adamw muon')"
)


class IntRange(Strict):
    kind: Literal["int"] = "int"
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
    kind: Literal["float"] = "float"
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
    kind: Literal["choice"] = "choice"
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


# --- checks against the pipeline config --------------------------------------------------------------


def _models_in(annotation: Any) -> list[Any]:
    """The types a field may hold, with Optional/Union/Annotated unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in typing.get_args(annotation) for t in _models_in(arg) if t is not type(None)]
    return [annotation]


def field_path_problem(model: type[BaseModel], keys: list[str], *, whole_sections: bool = False) -> str | None:
    """Why `keys` names no setting of `model` (walking nested models, lists and mappings), or None.
    A section (a nested model) counts as a setting only with `whole_sections`."""
    candidates: list[Any] = [model]
    for i, key in enumerate(keys):
        where = ".".join(keys[:i]) or "the config"
        nxt: list[Any] = []
        names: set[str] = set()
        for cand in candidates:
            origin = typing.get_origin(cand)
            if isinstance(cand, type) and issubclass(cand, BaseModel):
                names |= set(cand.model_fields)
                if key in cand.model_fields:
                    nxt += _models_in(cand.model_fields[key].annotation)
            elif origin in (list, tuple) and key.isdigit():
                args = [a for a in typing.get_args(cand) if a is not Ellipsis]
                nxt += [t for a in args for t in _models_in(a)]
            elif origin is dict:
                nxt += _models_in(typing.get_args(cand)[1])
        if not nxt:
            if names:
                close = difflib.get_close_matches(key, sorted(names), n=1) or sorted(
                    n for n in names if key.startswith(n) or n.startswith(key)
                )
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                return f"{where} has no setting {key!r}{hint}; its settings: {', '.join(sorted(names))}"
            return f"{where} is a single value, it has no setting {key!r}"
        candidates = nxt
    if not whole_sections and any(isinstance(c, type) and issubclass(c, BaseModel) for c in candidates):
        return f"{'.'.join(keys)} is a section, not a setting; name one of its fields"
    return None
