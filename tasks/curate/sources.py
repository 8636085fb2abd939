"""The raw files of a source, each keyed by its content.

Free of Prefect on purpose: a pipeline run that would change nothing is recognised from these
hashes before any orchestration starts.
"""

from __future__ import annotations

import glob
from pathlib import Path

from pydantic import BaseModel, Field

from smolforge.artifacts import file_hash
from smolforge.errors import ConfigError
from smolforge.tasks.curate.config import SourceConfig


class InputFile(BaseModel):
    """A raw input file, keyed by its content so an edited file re-runs its shard."""

    rel: str = Field(description="Path relative to the source's base folder; part of document ids.")
    xxh3: str
    root: str = Field(exclude=True, description="The source's base folder (not part of the cache key).")


def _glob_base(pattern: str) -> str:
    """The folder part of a glob before its first wildcard."""
    parts = Path(pattern).parts
    fixed = [p for p in parts[: next((i for i, p in enumerate(parts) if glob.has_magic(p)), len(parts))]]
    return str(Path(*fixed)) if fixed else "."


def discover(source: SourceConfig, data_dir: Path) -> list[InputFile]:
    """The files of a source, sorted; a path or glob that matches nothing is a configuration error."""
    pattern = source.path if Path(source.path).is_absolute() else str(data_dir / source.path)
    if Path(pattern).is_dir():
        base, matches = Path(pattern), [p for p in Path(pattern).rglob("*") if p.is_file()]
    else:
        base = Path(_glob_base(pattern))
        if Path(pattern).is_file():
            base = Path(pattern).parent
        matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
    if not matches:
        raise ConfigError(f"source {source.name!r}: path {source.path!r} matched no files (looked for {pattern})")
    return [InputFile(rel=str(p.relative_to(base)), xxh3=file_hash(p), root=str(base)) for p in sorted(matches)]
