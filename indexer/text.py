"""The words of the answer step (service/text.py): lower-cased word tokens cut to their first letters,
and how many chunks hold each word. They live here because the indexer counts them when it writes a
version (the version's `idf.json`), and the service, which the indexer may not import, weighs the
question's words by the idf computed from those counts."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

WORD = re.compile(r"\w+", re.UNICODE)
STEM = 6  # words are compared by their first six letters: "discuss" meets "discussions"
# What `words` does, stored with the counts: counts made by another tokenizer are not used.
WORDS_SPEC = r"re \w+ (Unicode) over the lower-cased text, each word cut to its first 6 characters"


def words(text: str) -> set[str]:
    """The distinct words of a text: lower-cased `\\w+` tokens, each cut to its first STEM characters."""
    return {w[:STEM] for w in WORD.findall(text.lower())}


@dataclass(frozen=True)
class WordFrequencies:
    """How many of `texts` texts hold each word (`words`): the document frequencies of the idf."""

    texts: int
    counts: dict[str, int]

    def idf(self) -> dict[str, float]:
        """Smoothed idf, log(1 + N / df), of every counted word."""
        n = self.texts
        return {word: math.log(1 + n / df) for word, df in self.counts.items()}


def without(counted: WordFrequencies, texts: Iterable[str]) -> WordFrequencies:
    """The counts with these texts, which they counted, taken out (a segment's deleted chunks)."""
    counts = Counter(counted.counts)
    n = counted.texts
    for text in texts:
        n -= 1
        counts.subtract(words(text))
    return WordFrequencies(n, {word: count for word, count in counts.items() if count > 0})


def summed(parts: Iterable[WordFrequencies]) -> WordFrequencies:
    """The counts of several sets of texts as one (a commit's segments)."""
    counts: Counter[str] = Counter()
    n = 0
    for part in parts:
        counts.update(part.counts)
        n += part.texts
    return WordFrequencies(n, dict(counts))


def word_frequencies(texts: Iterable[str]) -> WordFrequencies:
    """Count, for every word, how many of the texts hold it."""
    counts: Counter[str] = Counter()
    n = 0
    for text in texts:
        n += 1
        counts.update(words(text))
    return WordFrequencies(n, dict(counts))
