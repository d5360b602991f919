"""Words for the lexical parts of answering: lower-cased, truncated word tokens (indexer.text, shared with
the indexer, which counts them when it writes a version), stopwords, idf."""

from __future__ import annotations

import re
from collections.abc import Iterable

from indexer.text import STEM, WORD, word_frequencies, words

__all__ = [
    "STEM",
    "STOPWORDS",
    "WORD",
    "answer_kind",
    "asks_why",
    "content_words",
    "inverse_document_frequency",
    "states_kind",
    "words",
]

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


# What kind of answer a question asks for, by its question words (the first that matches): a year
# for when-questions, a number for how-many-questions, a name for who- and where-questions.
ANSWER_KINDS: list[tuple[str, re.Pattern[str]]] = [
    ("year", re.compile(r"\b(when|what year|which year|what date)\b")),
    (
        "number",
        re.compile(
            r"\bhow (many|much|long|old|far|big|large|tall|high|fast|deep)\b"
            r"|\bwhat (percentage|number|amount|proportion)\b"
        ),
    ),
    ("name", re.compile(r"\b(who|whom|whose|where)\b")),
]
YEAR = re.compile(r"\b(1\d{3}|20\d{2})\b")
NUMBER = re.compile(
    r"\d+(?:[.,]\d+)*|\b(one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|twenty|thirty|"
    r"forty|fifty|hundred|thousand|million|billion|dozen)\b",
    re.IGNORECASE,
)
NAME = re.compile(r"\b[A-Z][\w'-]*")  # a capitalised word


def answer_kind(question: str) -> str | None:
    """The kind of answer the question's words ask for ("year", "number" or "name"), or None."""
    lowered = question.lower()
    return next((kind for kind, pattern in ANSWER_KINDS if pattern.search(lowered)), None)


def states_kind(sentence: str, kind: str, question: str) -> bool:
    """Whether the sentence holds an answer of `kind` that the question does not already name: a year,
    a number, or a capitalised word (not the sentence's first) absent from the question."""
    pattern = {"year": YEAR, "number": NUMBER, "name": NAME}[kind]
    asked = question.lower()
    return any(
        found.group(0).lower() not in asked and (kind != "name" or found.start() > 0)
        for found in pattern.finditer(sentence.strip())
    )


def inverse_document_frequency(texts: Iterable[str]) -> dict[str, float]:
    """Smoothed idf, log(1 + N / df), of every word in the texts (what a version's stored word
    frequencies give without reading the texts again)."""
    return word_frequencies(texts).idf()
