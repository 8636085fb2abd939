"""The base of every config model: unknown keys are errors and assignments are validated.

In its own module so stage configs (`models/config.py`, `tasks/train/config.py`) and the pipeline
config (`config.py`) that composes them can all import it without importing each other.
"""

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def require_unique(names: list[str], what: str) -> None:
    """Raise a ValueError naming the repeated entries (source names, stage names, ...)."""
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"{what} must be unique, repeated: {', '.join(dupes)}")
