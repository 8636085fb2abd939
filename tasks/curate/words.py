"""datatrove's word tokenizer for a language, memoised per whitespace-separated word.

Both the quality rules (`quality.py`) and MinHash (`dedup.py`) need the words datatrove's
`split_into_words(text, language)` gives: spaCy's blank tokenizer for the language, run through
datatrove's pipeline with a sentencizer, tokens stripped and empty ones dropped
(`datatrove/utils/word_tokenizers.py`, `SpaCyTokenizer.word_tokenize`). spaCy's tokenizer cuts
the text at runs of whitespace (`str.isspace`, as `str.split` does) and tokenises each
non-space chunk on its own (prefix/suffix/infix/special cases such as "cannot" -> "can not"),
so tokenising each distinct chunk once and concatenating gives exactly the tokens of the whole
text (checked against datatrove in tests/test_quality.py and tests/test_dedup.py) while skipping
the sentencizer, the per-document spaCy Doc and one Python string per token, which are >90% of
its cost. A new chunk on which none of spaCy's special cases, prefix, suffix or infix patterns
match is one token (spaCy splits only where one of them matches); only the others go through spaCy.
"""

from __future__ import annotations

from itertools import accumulate

from datatrove.utils.word_tokenizers import SpaCyTokenizer, load_word_tokenizer, strip_strings

# Languages whose datatrove tokenizer segments by context rather than whitespace-separated words
# (jieba, the Japanese tokenizer, pyvi, Thai, Korean...): tokenised whole, never word by word.
_CONTEXT_TOKENIZED = {"zh", "ja", "vi", "th", "ko", "my", "km", "lo", "bo"}


class WordSplitter:
    """`splitter(text)` == datatrove's `split_into_words(text, language)`."""

    _MAX_CACHE = 300_000  # distinct chunks; ~60 MB per worker process

    def __init__(self, language: str):
        self.tokenizer = load_word_tokenizer(language)
        self.per_word = isinstance(self.tokenizer, SpaCyTokenizer) and language not in _CONTEXT_TOKENIZED
        self.cache: dict[str, tuple[str, ...]] = {}
        if self.per_word:
            spacy_tokenizer = self.tokenizer.tokenizer.tokenizer  # nlp.tokenizer of datatrove's blank pipeline
            self._specials = set(spacy_tokenizer.rules or {})
            self._affix_checks = [
                f for f in (spacy_tokenizer.prefix_search, spacy_tokenizer.suffix_search) if f is not None
            ]
            self._infix_finditer = spacy_tokenizer.infix_finditer

    def _maybe_split(self, word: str) -> bool:
        if word in self._specials or any(f(word) is not None for f in self._affix_checks):
            return True
        return self._infix_finditer is not None and next(self._infix_finditer(word), None) is not None

    def learn(self, texts: list[str]) -> None:
        """Tokenise, in one spaCy batch, every chunk of `texts` not seen yet."""
        if not self.per_word:
            return
        cache = self.cache
        new = {w for t in texts for w in t.split() if w not in cache}
        if len(cache) + len(new) > self._MAX_CACHE:
            cache.clear()
            new = {w for t in texts for w in t.split()}
        hard = sorted(w for w in new if self._maybe_split(w))
        cache.update((w, (w,)) for w in new)
        if hard:
            # One spaCy call for all of them, a newline between two chunks: the newline is a token of
            # its own, so no special case can match across it, and each chunk is tokenised as in its text.
            ends = list(accumulate(len(w) + 1 for w in hard))
            tokens: list[list[str]] = [[] for _ in hard]
            nlp = self.tokenizer.tokenizer  # the blank spaCy pipeline datatrove builds
            with nlp.memory_zone():  # datatrove's guard against spaCy's string-store growth
                k = 0
                for tok in nlp.tokenizer("\n".join(hard)):
                    while tok.idx >= ends[k]:
                        k += 1
                    tokens[k].append(tok.text)
            for word, toks in zip(hard, tokens):
                cache[word] = tuple(strip_strings(toks))

    def __call__(self, text: str) -> list[str]:
        if not self.per_word:
            return self.tokenizer.word_tokenize(text)
        cache = self.cache
        chunks = text.split()
        try:
            return [tok for chunk in chunks for tok in cache[chunk]]
        except KeyError:  # chunks not learned yet: learn this text's, then read them
            self.learn([text])
            return [tok for chunk in chunks for tok in cache[chunk]]


_SPLITTERS: dict[str, WordSplitter] = {}


def splitter(language: str) -> WordSplitter:
    """One memo per language and process; raises datatrove's error for a language it cannot split."""
    if language not in _SPLITTERS:
        _SPLITTERS[language] = WordSplitter(language)
    return _SPLITTERS[language]
