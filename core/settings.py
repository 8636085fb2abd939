"""Reading settings: YAML files, dotted `--set` overrides, and validation errors as one line per problem.

Generic on purpose: the composition (`smolforge.flows.config`) and the sweep's trial settings both
read and override the same way, whatever model they validate against.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

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


def describe_errors(error: ValidationError) -> str:
    """A validation error as one line per problem, each naming the setting, the value and what was expected."""
    lines = []
    for err in error.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if not err["loc"] or err["type"] == "value_error" and isinstance(err["input"], dict):
            # a rule across several fields: the message itself names them
            prefix = f"{where}: " if err["loc"] else ""
            lines.append(prefix + err["msg"].removeprefix("Value error, "))
        elif err["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown setting (value {err['input']!r})")
        elif err["type"] == "missing":
            lines.append(f"{where}: required setting is missing")
        else:
            lines.append(f"{where}: got {err['input']!r}, expected: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


