"""Quality filters with FineWeb's published defaults, run through datatrove's own implementations.

Order as in FineWeb: Gopher repetition, Gopher quality, C4 (which also removes bad lines, so it can
change the text), FineWeb's own rules. Each filter is built per document language, because the
word and sentence splitters are language specific (spaCy blank models, offline).

Gopher's stop-word rule ships only the English list ("the, be, to, of, and, that, have, with"); the
lists for the other SmolLM3 languages below are ours: the same kind of very frequent function words,
so a normal document in that language passes the `min_stop_words` rule as an English one does.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from smolforge.tasks.curate.documents import Doc, StepResult

STEP = "quality"

STOP_WORDS = {
    "en": ["the", "be", "to", "of", "and", "that", "have", "with"],
    "fr": ["le", "la", "les", "de", "et", "un", "une", "que"],
    "es": ["el", "la", "de", "que", "y", "en", "los", "un"],
    "de": ["der", "die", "und", "das", "ist", "nicht", "ein", "zu"],
    "it": ["il", "di", "che", "e", "la", "un", "per", "non"],
    "pt": ["o", "a", "de", "que", "e", "do", "da", "um"],
}


def _build(family: str, settings: dict[str, Any], language: str):
    from datatrove.pipeline.filters import (
        C4QualityFilter,
        FineWebQualityFilter,
        GopherQualityFilter,
        GopherRepetitionFilter,
    )

    if family == "gopher_repetition":
        return GopherRepetitionFilter(language=language, **settings)
    if family == "gopher_quality":
        return GopherQualityFilter(language=language, stop_words=STOP_WORDS.get(language), **settings)
    if family == "c4":
        return C4QualityFilter(language=language, **settings)
    if family == "fineweb":
        return FineWebQualityFilter(language=language, **settings)
    raise ValueError(f"unknown quality rule set {family!r}")


@lru_cache(maxsize=64)
def _filters(rules_key: tuple, language: str) -> list[tuple[str, Any]]:
    try:
        return [(family, _build(family, dict(settings), language)) for family, settings in rules_key]
    except ValueError as exc:
        raise ValueError(f"quality filters have no word tokenizer for language {language!r}: {exc}") from None


def _rules_key(rules: dict[str, dict[str, Any] | None]) -> tuple:
    """Hashable form of the enabled rule sets, in FineWeb's order."""
    order = ("gopher_repetition", "gopher_quality", "c4", "fineweb")
    unknown = set(rules) - set(order)
    if unknown:
        raise ValueError(f"unknown quality rule sets {sorted(unknown)}; known: {list(order)}")
    return tuple((f, tuple(sorted(rules[f].items()))) for f in order if rules.get(f) is not None)


def filter_quality(docs: list[Doc], rules: dict[str, dict[str, Any] | None]) -> StepResult:
    """Apply the enabled rule sets (a `None` entry is off); the reason is `<rule set>/<datatrove reason>`."""
    from datatrove.data import Document

    result = StepResult()
    key = _rules_key(rules)
    for doc in docs:
        dt_doc = Document(text=doc.text, id=doc.id, metadata={"language": doc.language})
        for family, rule in _filters(key, doc.language or "en"):
            verdict = rule.filter(dt_doc)
            keep, reason = verdict if isinstance(verdict, tuple) else (verdict, None)
            if not keep:
                result.drop(doc, STEP, f"{family}/{reason or 'rejected'}")
                break
        else:
            doc.text = dt_doc.text  # C4's line rules may have removed lines
            result.kept.append(doc)
    return result
