"""Extractive answers: the sentences of the top passages that answer the question, joined verbatim,
each followed by its citation marker; or a plain abstention when the evidence is too weak.

A sentence's score is the cosine between the question and the sentence's vector (stored at index
time: no model call here) plus a lexical term, the idf-weighted share of the question's words that
the sentence contains. The service abstains when the best score is below `abstain_below`; the
method and the figures that set it are in docs/abstention.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from service.config import ServiceSettings
from service.index import LoadedIndex
from service.retrieval import Hit
from service.text import asks_why, content_words, words

ABSTENTION = "The indexed documents do not answer this question."
LEXICAL_WEIGHT = 0.3


@dataclass(frozen=True)
class AnswerPolicy:
    """How an extractive answer is chosen: the RAGQA_ANSWER_* settings, RAGQA_FOLLOW_MARGIN and
    RAGQA_ABSTAIN_BELOW (docs/abstention.md has the figures behind their defaults)."""

    most_sentences: int  # the most sentences an answer joins
    abstain_below: float  # no answer when the best sentence scores below this
    margin: float  # other sentences within this of the best one join it
    follow_margin: float  # the sentence right after the best one joins within this

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> AnswerPolicy:
        return cls(
            most_sentences=settings.answer_sentences,
            abstain_below=settings.abstain_below,
            margin=settings.answer_margin,
            follow_margin=settings.follow_margin,
        )


@dataclass(frozen=True)
class Sentence:
    doc_id: str
    start: int
    end: int
    score: float
    passage_rank: int  # rank of the best passage the sentence was found in, from 0


@dataclass(frozen=True)
class CitedSpan:
    n: int
    doc_id: str
    start: int
    end: int
    score: float


@dataclass(frozen=True)
class Answer:
    text: str
    abstained: bool
    citations: list[CitedSpan]
    best_score: float


def lexical_overlap(question_words: list[str], sentence: str, idf: dict[str, float]) -> float:
    """The idf-weighted share of the question's content words that the sentence contains."""
    if not question_words:
        return 0.0
    present = set(words(sentence))
    total = sum(idf.get(w, 1.0) for w in question_words)
    return sum(idf.get(w, 1.0) for w in question_words if w in present) / total


def score_sentences(
    index: LoadedIndex, vector: np.ndarray, question: str, hits: list[Hit], idf: dict[str, float]
) -> list[Sentence]:
    """Every distinct sentence of the given passages with its score, best first."""
    words = content_words(question)
    best: dict[tuple[str, int, int], Sentence] = {}
    for rank, hit in enumerate(hits):
        chunk = index.chunk(hit.chunk_id)
        text = index.document(chunk.doc_id).text
        cosines = index.sentence_vectors_of(hit.chunk_id) @ vector
        for (start, end), cosine in zip(chunk.sentences, cosines, strict=True):
            key = (chunk.doc_id, start, end)
            if key in best:
                continue
            score = float(cosine) + LEXICAL_WEIGHT * lexical_overlap(words, text[start:end], idf)
            best[key] = Sentence(chunk.doc_id, start, end, score, rank)
    return sorted(best.values(), key=lambda s: (-s.score, s.passage_rank, s.start))


def select(
    index: LoadedIndex, sentences: list[Sentence], policy: AnswerPolicy, always_follow: bool = False
) -> list[Sentence]:
    """The best sentence, the others nearly as good (within `policy.margin`), and the sentence right
    after the best one when it is within `policy.follow_margin` (always, with `always_follow`, for a
    why-question): it often completes the best one with a reason or a definition.
    At most `policy.most_sentences` sentences, in reading order; none when the best is below
    `policy.abstain_below`."""
    threshold = policy.abstain_below
    if not sentences or sentences[0].score < threshold:
        return []
    best = sentences[0]
    text = index.document(best.doc_id).text
    following = min(
        (
            s
            for s in sentences
            if s.doc_id == best.doc_id and s.start >= best.end and not text[best.end : s.start].strip()
        ),
        key=lambda s: s.start,
        default=None,
    )
    floor = max(threshold, best.score - policy.margin)
    chosen = [best]
    if following is not None and (
        always_follow or following.score >= max(threshold, best.score - policy.follow_margin)
    ):
        chosen.append(following)
    chosen += [s for s in sentences[1:] if s.score >= floor and s is not following]
    return sorted(chosen[: policy.most_sentences], key=lambda s: (s.passage_rank, s.doc_id, s.start))


def compose(index: LoadedIndex, chosen: list[Sentence]) -> tuple[str, list[CitedSpan]]:
    """Join the sentences verbatim, each run of adjacent sentences followed by one marker [n]."""
    spans: list[list[Sentence]] = []
    for sentence in chosen:
        previous = spans[-1][-1] if spans else None
        if (
            previous is not None
            and previous.doc_id == sentence.doc_id
            and sentence.start >= previous.end
            and not index.document(sentence.doc_id).text[previous.end : sentence.start].strip()
        ):
            spans[-1].append(sentence)
        else:
            spans.append([sentence])
    parts: list[str] = []
    citations: list[CitedSpan] = []
    for n, run in enumerate(spans, start=1):
        doc_id, start, end = run[0].doc_id, run[0].start, run[-1].end
        excerpt = index.document(doc_id).text[start:end]
        parts.append(f"{excerpt} [{n}]")
        citations.append(CitedSpan(n, doc_id, start, end, max(s.score for s in run)))
    return " ".join(parts), citations


def answer(
    index: LoadedIndex, vector: np.ndarray, question: str, hits: list[Hit], policy: AnswerPolicy
) -> Answer:
    """The answer from the sentences of `hits`, scored against `vector` and the question's words
    (idf over the index's chunks); an abstention when the best is below `policy.abstain_below`."""
    sentences = score_sentences(index, vector, question, hits, index.idf)
    best = sentences[0].score if sentences else -math.inf
    chosen = select(index, sentences, policy, asks_why(question))
    if not chosen:
        return Answer(ABSTENTION, True, [], best)
    text, citations = compose(index, chosen)
    return Answer(text, False, citations, best)
