"""Quality filters with FineWeb's published defaults: datatrove's rules, on data computed once per document.

Order as in FineWeb: Gopher repetition, Gopher quality, C4 (which also removes bad lines, so it can
change the text), FineWeb's own rules. Each of datatrove's filters re-tokenises the text with spaCy
(`split_into_words`, and C4 one `split_into_sentences` per kept line), which was ~80 % of
curation's time. Here a document's derived data (`DocFeatures`: its words, as datatrove's word
tokenizer for the document's language gives them, and its lines; `NGrams` for the repetition rules)
is computed once and every rule reads it; when C4 removes lines, the data follows the new text. Each
rule keeps the checks, their order and their arithmetic from the datatrove file it names, and uses
datatrove's own helpers and constants where it has them; tests/test_quality_shared.py checks that
every rule gives datatrove's verdict (and C4 its text) on the same documents, the sample corpus's
included.

Gopher's stop-word rule ships only the English list ("the, be, to, of, and, that, have, with"); the
lists for the other SmolLM3 languages below are ours: the same kind of very frequent function words,
so a normal document in that language passes the `min_stop_words` rule as an English one does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np
import pyarrow as pa
from datatrove.pipeline.filters.c4_filters import CITATION_REGEX, ELLIPSIS, END_PUNCTUATION, POLICY_SUBSTRINGS
from datatrove.pipeline.filters.gopher_repetition_filter import find_duplicates
from datatrove.utils.text import PUNCTUATION_SET, TERMINAL_PUNCTUATION, split_into_sentences

from smolforge.tasks.curate.config import (
    C4Config,
    FineWebRulesConfig,
    GopherQualityConfig,
    GopherRepetitionConfig,
    QualityConfig,
)
from smolforge.tasks.curate.documents import Doc, Step, StepResult
from smolforge.tasks.curate.words import WordSplitter, splitter

STEP = "quality"

STOP_WORDS = {
    "en": ["the", "be", "to", "of", "and", "that", "have", "with"],
    "fr": ["le", "la", "les", "de", "et", "un", "une", "que"],
    "es": ["el", "la", "de", "que", "y", "en", "los", "un"],
    "de": ["der", "die", "und", "das", "ist", "nicht", "ein", "zu"],
    "it": ["il", "di", "che", "e", "la", "un", "per", "non"],
    "pt": ["o", "a", "de", "que", "e", "do", "da", "um"],
}


class DocFeatures:
    """A document's text and what the rules derive from it, each computed on first use and then shared.

    `replace_text` (C4 removing lines) drops what was derived from the old text."""

    def __init__(self, text: str, words: WordSplitter):
        self.text = text
        self._split = words

    def replace_text(self, text: str) -> None:
        if text != self.text:
            self.text = text
            for name in ("words", "word_set", "lines"):
                self.__dict__.pop(name, None)

    @cached_property
    def words(self) -> list[str]:
        """datatrove's `split_into_words(text, language)` (Gopher repetition and quality, FineWeb)."""
        return self._split(self.text)

    @cached_property
    def word_set(self) -> set[str]:
        return set(self.words)

    @cached_property
    def lines(self) -> list[str]:
        """`text.splitlines()` (Gopher quality, C4)."""
        return self.text.splitlines()


_B = np.uint64(0x9E3779B97F4A7C15)  # odd, so it has an inverse modulo 2**64
_B_INV = np.uint64(pow(int(_B), -1, 2**64))


class NGrams:
    """The n-gram data of one document's words, for Gopher repetition's n-gram rules.

    * Each word gets an integer id, and each n-gram an id (the ids of its (n-1)-gram and of its last
      word, ranked), so equal ids mean equal word sequences.
    * The words joined with nothing between them (as datatrove's `find_all_duplicate` joins an
      n-gram), the offset of each word in that string, and a polynomial hash modulo 2**64 of every
      substring between word boundaries: it is a function of the characters alone, so two equal
      n-gram strings always have equal hashes (unequal ones almost never do, and are told apart by
      comparing the strings).
    """

    def __init__(self, words: list[str]):
        self.words = words
        vocabulary: dict[str, int] = {}
        self.ids = np.fromiter((vocabulary.setdefault(w, len(vocabulary)) for w in words), dtype=np.int64, count=len(words))
        self._vocabulary_size = max(len(vocabulary), 1)
        self._gram_ids: dict[int, np.ndarray] = {1: self.ids}
        self.offsets = np.zeros(len(words) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, words), dtype=np.int64, count=len(words)), out=self.offsets[1:])
        self.text = "".join(words)
        self._prefix: np.ndarray | None = None

    def _ids(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per n-gram position its id; per id its first position and its count."""
        below = self._gram_ids[n - 1] if n - 1 in self._gram_ids else self._ids(n - 1)[0]
        # n-gram ids are below len(words), word ids below the vocabulary size: the key fits in 63 bits
        key = below[:-1] * self._vocabulary_size + self.ids[n - 1 :]
        _, first, ids, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
        self._gram_ids[n] = ids
        return ids, first, counts

    def top_duplicate_chars(self, n: int) -> int:
        """datatrove's `find_top_duplicate(get_n_grams(words, n))` (gopher_repetition_filter.py): the
        characters of the " "-joined most frequent n-gram times its count. `Counter.most_common(1)`
        picks the first-seen n-gram among equally frequent ones; so does this."""
        _, first, counts = self._ids(n)
        top = counts.max()
        pos = int(first[counts == top].min())
        return int(self.offsets[pos + n] - self.offsets[pos] + n - 1) * int(top)

    def _hashes(self, n: int) -> np.ndarray:
        if self._prefix is None:
            codes = np.frombuffer(self.text.encode("utf-32-le"), dtype=np.uint32).astype(np.uint64)
            powers = np.ones(len(codes) + 1, dtype=np.uint64)
            self._inverse = np.ones(len(codes) + 1, dtype=np.uint64)
            self._prefix = np.zeros(len(codes) + 1, dtype=np.uint64)
            with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
                np.cumprod(np.full(len(codes), _B), out=powers[1:])
                np.cumprod(np.full(len(codes), _B_INV), out=self._inverse[1:])
                np.cumsum(codes * powers[:-1], out=self._prefix[1:])
        start, end = self.offsets[:-n], self.offsets[n:]
        with np.errstate(over="ignore"):
            return (self._prefix[end] - self._prefix[start]) * self._inverse[start]

    def all_duplicate_chars(self, n: int) -> int:
        """datatrove's `find_all_duplicate(words, n)` (gopher_repetition_filter.py): the same walk over
        the n-gram strings, visiting only the positions whose string may occur elsewhere in the text.

        datatrove walks every position: a string seen before (at a position it visited) counts its
        characters and moves n words on, a new one is remembered and moves one word on. A position
        whose hash occurs at no other position holds a string that occurs nowhere else: remembering
        it changes nothing and it is never counted, so the walk needs only the positions with a
        shared hash."""
        if len(self.words) < n:
            return 0
        _, inverse, counts = np.unique(self._hashes(n), return_inverse=True, return_counts=True)
        text, offsets = self.text, self.offsets
        seen: set[str] = set()
        repeated, idx = 0, 0
        for pos in np.flatnonzero(counts[inverse] > 1).tolist():
            if pos < idx:
                continue
            gram = text[offsets[pos] : offsets[pos + n]]
            if gram in seen:
                repeated += len(gram)
                idx = pos + n
            else:
                seen.add(gram)
                idx = pos + 1
        return repeated


class GopherRepetition:
    """datatrove `pipeline/filters/gopher_repetition_filter.py` (`GopherRepetitionFilter.filter`),
    with its default n-gram thresholds (FineWeb's)."""

    top_n_grams = ((2, 0.2), (3, 0.18), (4, 0.16))
    dup_n_grams = ((5, 0.15), (6, 0.14), (7, 0.13), (8, 0.12), (9, 0.11), (10, 0.10))
    _paragraphs = re.compile(r"\n{2,}")
    _lines = re.compile("\n+")

    def __init__(self, cfg: GopherRepetitionConfig, language: str):
        self.cfg = cfg

    def check(self, doc: DocFeatures) -> str | None:
        cfg, text = self.cfg, doc.text
        if not text:
            return "empty"
        paragraphs = self._paragraphs.split(text.strip())
        paragraphs_duplicates, char_duplicates = find_duplicates(paragraphs)
        if cfg.dup_para_frac and paragraphs_duplicates / len(paragraphs) > cfg.dup_para_frac:
            return "dup_para_frac"
        if cfg.dup_para_char_frac and char_duplicates / len(text) > cfg.dup_para_char_frac:
            return "dup_para_char_frac"
        lines = self._lines.split(text)
        line_duplicates, char_duplicates = find_duplicates(lines)
        if cfg.dup_line_frac and line_duplicates / len(lines) > cfg.dup_line_frac:
            return "dup_line_frac"
        if cfg.dup_line_char_frac and char_duplicates / len(text) > cfg.dup_line_char_frac:
            return "dup_line_char_frac"
        grams = NGrams(doc.words)
        for n, n_frac in self.top_n_grams:
            if len(grams.words) < n:  # datatrove: no n-grams, rule skipped
                continue
            if grams.top_duplicate_chars(n) / len(text) > n_frac:
                return f"top_{n}_gram"
        for n, n_frac in self.dup_n_grams:
            if grams.all_duplicate_chars(n) / len(text) > n_frac:
                return f"duplicated_{n}_n_grams"
        return None


class GopherQuality:
    """datatrove `pipeline/filters/gopher_quality_filter.py` (`GopherQualityFilter.filter`), with a
    stop-word list per language. Per-word tests (symbol-only, has a letter) run once per distinct word."""

    def __init__(self, cfg: GopherQualityConfig, language: str):
        self.cfg = cfg
        self.stop_words = set(STOP_WORDS.get(language, STOP_WORDS["en"]))

    def check(self, doc: DocFeatures) -> str | None:
        cfg, text, words = self.cfg, doc.text, doc.words
        n_words = len(words)
        has_non_symbol = {w: any(ch not in PUNCTUATION_SET for ch in w) for w in doc.word_set}
        non_symbol_words = [w for w in words if has_non_symbol[w]]
        n_non_symbol_words_words = len(non_symbol_words)
        if cfg.min_doc_words and n_non_symbol_words_words < cfg.min_doc_words:
            return "gopher_short_doc"
        if cfg.max_doc_words and n_non_symbol_words_words > cfg.max_doc_words:
            return "gopher_long_doc"
        avg_n_words = np.mean([len(w) for w in non_symbol_words])
        if cfg.min_avg_word_length and avg_n_words < cfg.min_avg_word_length:
            return "gopher_below_avg_threshold"
        if cfg.max_avg_word_length and avg_n_words > cfg.max_avg_word_length:
            return "gopher_above_avg_threshold"
        if cfg.max_symbol_word_ratio and text.count("#") / n_words > cfg.max_symbol_word_ratio:
            return "gopher_too_many_hashes"
        if cfg.max_symbol_word_ratio and (text.count("...") + text.count("…")) / n_words > cfg.max_symbol_word_ratio:
            return "gopher_too_many_ellipsis"
        lines = doc.lines
        if (
            cfg.max_bullet_lines_ratio
            and sum(s.lstrip().startswith("•") or s.lstrip().startswith("-") for s in lines) / len(lines)
            > cfg.max_bullet_lines_ratio
        ):
            return "gopher_too_many_bullets"
        if (
            cfg.max_ellipsis_lines_ratio
            and sum(s.rstrip().endswith("...") or s.rstrip().endswith("…") for s in lines) / len(lines)
            > cfg.max_ellipsis_lines_ratio
        ):
            return "gopher_too_many_end_ellipsis"
        if cfg.max_non_alpha_words_ratio:
            has_alpha = {w: any(c.isalpha() for c in w) for w in doc.word_set}
            if sum(has_alpha[w] for w in words) / n_words < cfg.max_non_alpha_words_ratio:
                return "gopher_below_alpha_threshold"
        if cfg.min_stop_words and len(self.stop_words.intersection(doc.word_set)) < cfg.min_stop_words:
            return "gopher_enough_stop_words"
        return None


class C4:
    """datatrove `pipeline/filters/c4_filters.py` (`C4QualityFilter.filter`, split on lines, citations
    removed), keeping the lines that pass. One change that leaves verdict and text as they were: the
    sentences of kept lines are counted only until `min_num_sentences` is reached (the count is used
    for nothing else), instead of running spaCy's sentencizer over every kept line."""

    def __init__(self, cfg: C4Config, language: str):
        self.cfg, self.language = cfg, language

    def check(self, doc: DocFeatures) -> str | None:
        cfg = self.cfg
        num_sentences, kept_lines = 0, []
        for line in doc.lines:
            line = line.strip()
            words = line.split()
            if cfg.max_word_length != -1 and any(len(word) > cfg.max_word_length for word in words):
                continue
            line = CITATION_REGEX.sub("", line)
            if cfg.filter_no_terminal_punct and (not line.endswith(END_PUNCTUATION) or line.endswith(ELLIPSIS)):
                continue
            if len(words) < cfg.min_words_per_line:
                continue
            line_l = line.lower()
            if cfg.filter_lorem_ipsum and "lorem ipsum" in line_l:
                return "lorem_ipsum"
            if cfg.filter_javascript and "javascript" in line_l:
                continue
            if cfg.filter_curly_bracket and "{" in line:
                return "curly_bracket"
            if cfg.filter_policy and any(p in line_l for p in POLICY_SUBSTRINGS):
                continue
            if num_sentences < cfg.min_num_sentences:
                num_sentences += len(split_into_sentences(line, self.language))
            kept_lines.append(line)
        if num_sentences < cfg.min_num_sentences:
            return "too_few_sentences"
        doc.replace_text("\n".join(kept_lines).strip())
        return None


class FineWeb:
    """datatrove `pipeline/filters/fineweb_quality_filter.py` (`FineWebQualityFilter.filter`), with its
    defaults for the settings the config does not expose (terminal punctuation, zero ratios counted)."""

    stop_chars = tuple(TERMINAL_PUNCTUATION)

    def __init__(self, cfg: FineWebRulesConfig, language: str):
        self.cfg = cfg

    def check(self, doc: DocFeatures) -> str | None:
        cfg, text = self.cfg, doc.text
        lines = [line for line in text.split("\n") if line.strip() != ""]
        if len(lines) == 0:
            return "empty"
        if sum(1 for line in lines if line.endswith(self.stop_chars)) / len(lines) < cfg.line_punct_thr:
            return "line_punct_ratio"
        if sum(1 for line in lines if len(line) <= cfg.short_line_length) / len(lines) > cfg.short_line_thr:
            return "short_line_ratio"
        if find_duplicates(lines)[1] / len(text.replace("\n", "")) > cfg.char_duplicates_ratio:
            return "char_dup_ratio"
        if text.count("\n") / len(doc.words) > cfg.new_line_ratio:
            return "list_ratio"
        return None


# What the rules test, measured on the text a kept document leaves the step with: its columns
# `quality_<name>` in the corpus's dataset, to filter it further without running the rules again.
SIGNALS: dict[str, pa.DataType] = {
    "words": pa.int64(),  # words that are not only punctuation (Gopher quality's count)
    "mean_word_length": pa.float64(),  # their mean length in characters
    "stop_words": pa.int64(),  # distinct stop words of the document's language present
    "line_punct_ratio": pa.float64(),  # non-empty lines ending in terminal punctuation (FineWeb)
    "short_line_ratio": pa.float64(),  # non-empty lines of at most `short_line_length` characters (FineWeb)
    "dup_line_char_ratio": pa.float64(),  # characters in lines repeating an earlier one (FineWeb)
    "newlines_per_word": pa.float64(),  # FineWeb's list rule
}


def measure(doc: DocFeatures, stop_words: set[str], short_line_length: int) -> dict[str, float]:
    """The `SIGNALS` of one document, reading the words and lines the rules derived already."""
    text, words = doc.text, doc.words
    non_symbol = [w for w in words if any(ch not in PUNCTUATION_SET for ch in w)]
    lines = [line for line in text.split("\n") if line.strip() != ""]
    share = (lambda n: n / len(lines)) if lines else (lambda n: 0.0)
    return {
        "words": len(non_symbol),
        "mean_word_length": float(np.mean([len(w) for w in non_symbol])) if non_symbol else 0.0,
        "stop_words": len(stop_words.intersection(doc.word_set)),
        "line_punct_ratio": share(sum(line.endswith(FineWeb.stop_chars) for line in lines)),
        "short_line_ratio": share(sum(len(line) <= short_line_length for line in lines)),
        "dup_line_char_ratio": find_duplicates(lines)[1] / max(len(text.replace("\n", "")), 1),
        "newlines_per_word": text.count("\n") / max(len(words), 1),
    }


RULE_SETS: dict[str, type] = {
    "gopher_repetition": GopherRepetition,
    "gopher_quality": GopherQuality,
    "c4": C4,
    "fineweb": FineWeb,
}  # FineWeb's order


@dataclass
class QualityStep(Step):
    """The enabled rule sets (a `None` section is off); a drop's reason is `<rule set>/<datatrove reason>`.
    Each kept document's `SIGNALS` are measured once its text is final."""

    cfg: QualityConfig
    name: ClassVar[str] = STEP
    _rules: dict[str, tuple[WordSplitter, list]] = field(default_factory=dict, init=False, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {"cfg": self.cfg, "_rules": {}}  # rules are rebuilt in the process that runs them

    def rules(self, language: str) -> tuple[WordSplitter, list]:
        """The language's word splitter and the enabled rule sets, built on first use in this process."""
        if language not in self._rules:
            try:
                words = splitter(language)
            except ValueError as exc:
                raise ValueError(f"quality filters have no word tokenizer for language {language!r}: {exc}") from None
            rules = [
                (family, rule(getattr(self.cfg, family), language))
                for family, rule in RULE_SETS.items()
                if getattr(self.cfg, family) is not None
            ]
            self._rules[language] = (words, rules)
        return self._rules[language]

    def run(self, docs: list[Doc]) -> StepResult:
        result = StepResult()
        for doc in docs:
            words, rules = self.rules(doc.language or "en")
            features = DocFeatures(doc.text, words)
            for family, rule in rules:
                reason = rule.check(features)
                if reason is not None:
                    result.drop(doc, STEP, f"{family}/{reason}")
                    break
            else:
                doc.text = features.text  # C4's line rules may have removed lines
                result.kept.append(doc)
                language = doc.language or "en"
                stop_words = set(STOP_WORDS.get(language, STOP_WORDS["en"]))
                result.signals[doc.id] = measure(features, stop_words, self._short_line_length)
        return result

    @property
    def _short_line_length(self) -> int:
        return (self.cfg.fineweb or FineWebRulesConfig()).short_line_length
