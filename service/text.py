"""Words for the lexical parts of answering: lower-cased, truncated word tokens (indexer.text, shared with
the indexer, which counts them when it writes a version), stopwords, idf."""

from __future__ import annotations

import re
from collections.abc import Iterable

from indexer.text import STEM, WORD, word_frequencies, words

__all__ = ["STEM", "STOPWORDS", "WORD", "asks_why", "content_words", "inverse_document_frequency", "words"]

STOPWORDS = frozenset(
    "a an and are as at be been but by can could did do does for from had has have how i if in into is it "
    "its me my of on or our she he so than that the their them then there these they this those to was we "
    "were what when where which who whom whose why will with would you your about after also any more most "
    "other such only own same some very just over under again further once here all both each few nor "
    "not".split()
)


def content_words(text: str) -> list[str]:
    return [w[:STEM] for w in WORD.findall(text.lower()) if w not in STOPWORDS]


def asks_why(question: str) -> bool:
    """A question after a reason: its answer is often the sentence after the one that restates it."""
    return bool(
        re.match(r"\W*(and\s+)?(why|what\s+(caused|led\s+to|made|is\s+the\s+reason))\b", question.lower())
    )


def inverse_document_frequency(texts: Iterable[str]) -> dict[str, float]:
    """Smoothed idf, log(1 + N / df), of every word in the texts (what a version's stored word
    frequencies give without reading the texts again)."""
    return word_frequencies(texts).idf()
