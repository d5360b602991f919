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
from service.text import answer_kind, asks_why, content_words, states_kind, words

ABSTENTION = "The indexed documents do not answer this question."
LEXICAL_WEIGHT = 0.3


@dataclass(frozen=True)
class AnswerPolicy:
    """How an extractive answer is chosen: the RAGQA_ANSWER_* settings and RAGQA_ABSTAIN_BELOW
    (docs/answering.md and docs/abstention.md have the figures behind their defaults)."""

    most_sentences: int  # the most sentences an answer joins
    abstain_below: float  # no answer when the best sentence scores below this
    margin: float  # other sentences within this of the best one join it
    question_kinds: bool = True  # a neighbour stating the year, number or name asked for joins

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> AnswerPolicy:
        return cls(
            most_sentences=settings.answer_sentences,
            abstain_below=settings.abstain_below,
            margin=settings.answer_margin,
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


def neighbours(index: LoadedIndex, best: Sentence, sentences: list[Sentence]) -> list[Sentence]:
    """The candidates right before and right after `best` in its document (only white space between),
    in the order of `sentences`."""
    text = index.document(best.doc_id).text

    def adjacent(s: Sentence) -> bool:
        if s.doc_id != best.doc_id:
            return False
        if s.start >= best.end:
            return not text[best.end : s.start].strip()
        return s.end <= best.start and not text[s.end : best.start].strip()

    return [s for s in sentences if adjacent(s)]


def select(
    index: LoadedIndex, sentences: list[Sentence], policy: AnswerPolicy, question: str = ""
) -> list[Sentence]:
    """The best sentence; one of its neighbours (the sentence right before or after it) that says
    what the best one does not; and the other sentences nearly as good as the best scoring one (within
    `policy.margin`), each said once. A neighbour joins when the question asks for a year, a number or
    a name (`answer_kind`) that the best sentence does not state and the neighbour does (the better
    scoring neighbour, when both do); and, for a why-question, the sentence after the best always: it
    often gives the reason the best one restates.
    At most `policy.most_sentences` sentences, in reading order; none when every one scores below
    `policy.abstain_below`. The best sentence is the first of `sentences`: the best scoring one, or
    the one a reader pointed at (`answer`), which the best scoring one may then join."""
    threshold = policy.abstain_below
    top = max((s.score for s in sentences), default=-math.inf)
    if top < threshold:
        return []
    best = sentences[0]
    text = index.document(best.doc_id).text
    why = asks_why(question)
    kind = answer_kind(question) if policy.question_kinds else None
    if kind is not None and states_kind(text[best.start : best.end], kind, question):
        kind = None  # the best sentence states what was asked for: no neighbour joins for it
    near = neighbours(index, best, sentences)
    if why:  # the sentence after the best one comes first and always joins
        near.sort(key=lambda s: s.start < best.start)

    def joins(s: Sentence) -> bool:
        if why and s.start >= best.end:
            return True
        return kind is not None and states_kind(text[s.start : s.end], kind, question)

    neighbour = next((s for s in near if joins(s)), None)
    chosen = [best] if neighbour is None else [best, neighbour]
    floor = max(threshold, top - policy.margin)
    said = {_words_of(index, s) for s in chosen}
    for s in sentences[1:]:  # best first: the rest by score
        if len(chosen) >= policy.most_sentences or s.score < floor:
            break
        words = _words_of(index, s)
        if words not in said:  # a sentence said twice is said once
            chosen.append(s)
            said.add(words)
    return sorted(chosen[: policy.most_sentences], key=lambda s: (s.passage_rank, s.doc_id, s.start))


def _words_of(index: LoadedIndex, sentence: Sentence) -> str:
    """The sentence's text, case and runs of white space ignored: duplicated passages repeat it."""
    return " ".join(index.document(sentence.doc_id).text[sentence.start : sentence.end].split()).casefold()


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
    index: LoadedIndex,
    vector: np.ndarray,
    question: str,
    hits: list[Hit],
    policy: AnswerPolicy,
    pointed: tuple[str, int] | None = None,
) -> Answer:
    """The answer from the sentences of `hits`, scored against `vector` and the question's words
    (idf over the index's chunks); an abstention when the best is below `policy.abstain_below`.
    `pointed`: a reader's answer span (document id, character offset of its start): the sentence
    holding it is the best sentence, whatever its score."""
    sentences = score_sentences(index, vector, question, hits, index.idf)
    best = sentences[0].score if sentences else -math.inf
    if pointed is not None:
        doc_id, offset = pointed
        held = [s for s in sentences if s.doc_id == doc_id and s.start <= offset < s.end]
        sentences = held[:1] + [s for s in sentences if s not in held[:1]]
    chosen = select(index, sentences, policy, question)
    if not chosen:
        return Answer(ABSTENTION, True, [], best)
    text, citations = compose(index, chosen)
    return Answer(text, False, citations, best)
