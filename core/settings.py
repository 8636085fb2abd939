"""Reading settings: YAML files, dotted `--set` overrides, validation errors as one line per problem,
and whether a dotted path names a setting (with the closest valid name when it does not).

Generic on purpose: the composition (`smolforge.flows.config`) and the sweep's trial settings both
read and override the same way, whatever model they validate against.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Union

import yaml
from pydantic import BaseModel, ValidationError

from smolforge.errors import ConfigError


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping at the top level, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply one `dotted.path=value` in place; the value is parsed as YAML (`0.8`, `null`, `[en, fr]`)."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like section.field=value")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {assignment!r}: cannot parse value {raw!r}: {exc}") from None
    node: Any = data
    for i, key in enumerate(keys[:-1]):
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            if not key.isdigit() or int(key) >= len(node):
                raise ConfigError(f"override {dotted}: {where} is not an index of a list of {len(node)} items")
            node = node[int(key)]
        else:
            if node.get(key) is None:
                node[key] = {}
            node = node[key]
    last = keys[-1]
    if isinstance(node, list):
        if not last.isdigit() or int(last) >= len(node):
            raise ConfigError(f"override {dotted}: {last} is not an index of a list of {len(node)} items")
        node[int(last)] = value
    else:
        node[last] = value


def _models_in(annotation: Any) -> list[Any]:
    """The types a field may hold, with Optional/Union/Annotated unwrapped."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _models_in(typing.get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return [t for arg in typing.get_args(annotation) for t in _models_in(arg) if t is not type(None)]
    return [annotation]


def _step(candidates: list[Any], key: str) -> tuple[list[Any], set[str]]:
    """The types `key` leads to from `candidates` (models, lists, mappings), and the setting names
    the candidate models have (empty when none of them is a model)."""
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
    return nxt, names


def _suggestion(key: str, names: set[str]) -> str:
    """' (did you mean 'x'?); its settings: a, b, c' for a key that is none of `names`."""
    close = difflib.get_close_matches(key, sorted(names), n=1) or sorted(
        n for n in names if key.startswith(n) or n.startswith(key)
    )
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"{hint}; its settings: {', '.join(sorted(names))}"


def field_path_problem(model: type[BaseModel], keys: list[str], *, whole_sections: bool = False) -> str | None:
    """Why `keys` names no setting of `model` (walking nested models, lists and mappings), or None.
    A section (a nested model) counts as a setting only with `whole_sections`."""
    candidates: list[Any] = [model]
    for i, key in enumerate(keys):
        where = ".".join(keys[:i]) or "the config"
        nxt, names = _step(candidates, key)
        if not nxt:
            if names:
                return f"{where} has no setting {key!r}{_suggestion(key, names)}"
            return f"{where} is a single value, it has no setting {key!r}"
        candidates = nxt
    if not whole_sections and any(isinstance(c, type) and issubclass(c, BaseModel) for c in candidates):
        return f"{'.'.join(keys)} is a section, not a setting; name one of its fields"
    return None


def _unknown_setting(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str:
    """The closest valid name and the valid names beside an unknown key, when its parent is a
    section of `model`; empty when there is no model, or the location runs through a union's tag
    (pydantic adds the member's name to the path), which names no setting."""
    if model is None:
        return ""
    candidates: list[Any] = [model]
    for key in loc[:-1]:
        candidates, _ = _step(candidates, str(key))
    _, names = _step(candidates, str(loc[-1]))
    return _suggestion(str(loc[-1]), names) if names else ""


def describe_errors(error: ValidationError, model: type[BaseModel] | None = None) -> str:
    """A validation error as one line per problem, each naming the setting, the value and what was
    expected; an unknown setting of `model` also gets the closest valid name and the valid names."""
    lines = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if not err["loc"] or err["type"] == "value_error" and isinstance(err["input"], dict):
            # a rule across several fields: the message itself names them
            prefix = f"{where}: " if err["loc"] else ""
            lines.append(prefix + err["msg"].removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown setting (value {err['input']!r}){_unknown_setting(model, err['loc'])}")
        elif err["type"] == "missing":
            lines.append(f"{where}: required setting is missing")
        else:
            lines.append(f"{where}: got {err['input']!r}, expected: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)
