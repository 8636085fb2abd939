"""The quality rules read data computed once per document (words, lines); each must give the verdict
(and C4 the text) of the datatrove filter it follows, on crafted cases and on the sample corpus."""

from __future__ import annotations

import pickle
import random

import pytest
from datatrove.data import Document
from datatrove.pipeline.filters import (
    C4QualityFilter,
    FineWebQualityFilter,
    GopherQualityFilter,
    GopherRepetitionFilter,
)
from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate, find_top_duplicate, get_n_grams
from datatrove.utils.text import split_into_words
from pydantic import BaseModel
from test_quality import CLEAN, FRENCH  # the crafted documents of the rule tests

from smolforge.tasks.curate import config as curate_config
from smolforge.tasks.curate.config import QualityConfig
from smolforge.tasks.curate.documents import Doc
from smolforge.tasks.curate.quality import (
    STOP_WORDS,
    DocFeatures,
    NGrams,
    QualityStep,
)
from smolforge.tasks.curate.words import splitter

FAMILIES = {
    "gopher_repetition": GopherRepetitionFilter,
    "gopher_quality": GopherQualityFilter,
    "c4": C4QualityFilter,
    "fineweb": FineWebQualityFilter,
}

CRAFTED = [
    CLEAN,
    FRENCH,
    "",
    "   \n\n  \t ",
    "Don't stop: it's 3.5km (2.2mi) away -- see https://example.org/a?b=c&d=e, e-mail me@x.org!\n" * 3 + CLEAN,
    "Tabs\tand\u00a0no-break\u2003spaces, \u201cquotes\u201d, l'été, ¿qué?, «guillemets», Straße... done…\n" + CLEAN,
    "This exact line is repeated over and over again in the page.\n" * 12 + CLEAN,
    "market square " * 120,
    " ".join(["a an to of is it by on the we"] * 10) + ".",
    CLEAN + " ".join(["#tag"] * 30),
    "\n".join(f"• item number {i} of the list with the river and the town" for i in range(40)),
    "\n".join(f"The story of the river and the town goes on and on {i}..." for i in range(30)),
    " ".join(f"river{i} mountain valley" for i in range(40)) + ".",
    " ".join(["the river and the town were calm that day"] * 8),
    CLEAN + "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor.\n",
    CLEAN + "function go() { return the river; }\n",
    "\n".join(f"The river and the town and the bridge number {i} of many" for i in range(30)),
    CLEAN + "Click here\nPlease enable javascript in your browser to see this page.\nSee our privacy policy and terms of use today.\n",
    CLEAN + "A citation[1] here and [edit] there, [citation needed] in this line of text.\n" + "w" * 1200 + " long word line\n",
    "Short.\n\n\nShort.\n\n\nShort.\n\n\n" + CLEAN + "\n\n" + CLEAN,
    "ab c ab c ab c " * 40 + "a bc a bc a bc " * 40,
]


def _only(family: str) -> QualityConfig:
    return QualityConfig(**{f: (getattr(QualityConfig(), f) if f == family else None) for f in FAMILIES})


def _datatrove(family: str, text: str, language: str) -> tuple[str | None, str]:
    settings = getattr(QualityConfig(), family).model_dump()
    if family == "gopher_quality":
        settings["stop_words"] = STOP_WORDS.get(language)
    doc = Document(text=text, id="d")
    verdict = FAMILIES[family](language=language, **settings).filter(doc)
    return (None if verdict is True else verdict[1]), doc.text


def _ours(family: str, text: str, language: str) -> tuple[str | None, str]:
    result = QualityStep(_only(family)).run([Doc(id="d", source="s", text=text, language=language)])
    if result.dropped:
        return result.dropped[0].reason.split("/", 1)[1], text
    return None, result.kept[0].text


def _assert_same(texts: list[tuple[str, str]]) -> None:
    differences = []
    for text, language in texts:
        if splitter(language)(text) != split_into_words(text, language):
            differences.append(("words", language, text[:60]))
        for family in FAMILIES:
            if not text and family == "gopher_quality":
                continue  # datatrove divides by zero on an empty text; extraction never lets one through
            ours, theirs = _ours(family, text, language), _datatrove(family, text, language)
            # a dropped document's text is not compared: only a kept one's goes on
            if ours[0] != theirs[0] or (ours[0] is None and ours[1] != theirs[1]):
                differences.append((family, language, ours[0], theirs[0], text[:60]))
    assert not differences


@pytest.mark.parametrize("language", ["en", "fr", "de"])
def test_each_rule_gives_datatrove_verdict_on_crafted_documents(language):
    _assert_same([(text, language) for text in CRAFTED])


def test_each_rule_gives_datatrove_verdict_on_the_sample_corpus(sample_corpus):
    """Every text, HTML and JSONL document of the scale-1 corpus in a kept language (the planted
    boilerplate pages included), cut at 20,000 characters so datatrove's side stays quick."""
    from smolforge.tasks.curate.extract import extract_files
    from smolforge.tasks.curate.langid import identify

    texts, planted = [], 0
    for kind, folder in (("html", "html"), ("text", "text"), ("jsonl", "jsonl")):
        files = sorted(p for p in (sample_corpus / folder).rglob("*") if p.is_file())
        result = extract_files([(str(p), p.name) for p in files], kind, kind, max_chars=1_000_000, min_chars=20)
        for doc in result.kept:
            language, _ = identify(doc.text)
            if language in STOP_WORDS:
                texts.append((doc.text[:20_000], language))
                planted += "boilerplate" in doc.id
    assert len(texts) > 40 and planted >= 2
    _assert_same(texts)


def test_derived_data_is_computed_once_and_follows_the_text():
    calls = []
    words = splitter("en")

    def counting(text):
        calls.append(text)
        return words(text)

    features = DocFeatures(CLEAN, counting)
    assert features.words == split_into_words(CLEAN, "en") and features.words is features.words
    assert features.lines == CLEAN.splitlines() and len(calls) == 1
    features.replace_text("New text here.")
    assert features.words == ["New", "text", "here", "."] and len(calls) == 2


def test_step_is_sent_to_workers_as_its_config():
    step = QualityStep(QualityConfig(c4=None))
    step.run([Doc(id="d", source="s", text=CLEAN, language="en")])  # builds its rules
    copy = pickle.loads(pickle.dumps(step))
    assert copy == step and copy._rules == {}


def test_every_curation_setting_has_a_description():
    missing = [
        f"{name}.{field}"
        for name, model in vars(curate_config).items()
        if isinstance(model, type) and issubclass(model, BaseModel) and model.__module__ == curate_config.__name__
        for field, info in model.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert not missing


def test_n_gram_counts_match_datatrove_including_joins_that_collide():
    """`find_all_duplicate` joins an n-gram's words with nothing between them, so ("ab", "c") and
    ("a", "bc") are the same string: the hashed walk must see them as datatrove does."""
    rng = random.Random(0)
    vocab = ["a", "b", "ab", "c", "bc", "abc", "é", "e\u0301", "€", "𝔸", "the", "river"]
    cases = [[rng.choice(vocab) for _ in range(rng.randint(0, 80))] for _ in range(300)]
    cases += [splitter("en")(CLEAN * 3), splitter("en")("market square " * 50)]
    for words in cases:
        grams = NGrams(words)
        for n in (2, 3, 4):
            if len(words) >= n:
                assert grams.top_duplicate_chars(n) == find_top_duplicate(get_n_grams(words, n))
        for n in range(5, 11):
            assert grams.all_duplicate_chars(n) == find_all_duplicate(words, n)
