"""Choosing and composing an extractive answer (service.answering.select and compose). The sentences
are the real sentence spans of a real small store (conftest's `small_index`); their scores are set
here, because only offsets and scores matter to these two functions."""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from service.answering import ABSTENTION, AnswerPolicy, Sentence, answer, compose, select
from service.retrieval import Hit
from service.text import answer_kind, asks_why, states_kind

if TYPE_CHECKING:
    from indexer.embedding import Embedder
    from service.index import LoadedIndex

pytestmark = pytest.mark.unit

POLICY = AnswerPolicy(most_sentences=3, abstain_below=0.5, margin=0.1)


def spans(index: LoadedIndex, doc_id: str) -> list[tuple[int, int]]:
    """The document's sentences in reading order, each once (consecutive chunks share one)."""
    found = {span for chunk in index.chunk_records() if chunk.doc_id == doc_id for span in chunk.sentences}
    return sorted(found)


@pytest.fixture(scope="module")
def light(small_index: LoadedIndex) -> list[Sentence]:
    """The lighthouse document's sentences, scored 0 and from passage 0: set a score with `scored`.
    [0] is the heading; [1]..[4] are one paragraph; [5] and [6] the next one."""
    found = spans(small_index, "lighthouse.md")
    assert len(found) == 7, found
    return [Sentence("lighthouse.md", start, end, 0.0, 0) for start, end in found]


@pytest.fixture(scope="module")
def bread(small_index: LoadedIndex) -> list[Sentence]:
    return [Sentence("bread.md", start, end, 0.0, 0) for start, end in spans(small_index, "bread.md")]


def scored(sentence: Sentence, score: float, passage_rank: int = 0) -> Sentence:
    return replace(sentence, score=score, passage_rank=passage_rank)


def best_first(*sentences: Sentence) -> list[Sentence]:
    """As score_sentences gives them to select: best first."""
    return sorted(sentences, key=lambda s: (-s.score, s.passage_rank, s.start))


def text_of(index: LoadedIndex, sentence: Sentence) -> str:
    return index.document(sentence.doc_id).text[sentence.start : sentence.end]


# --- select ------------------------------------------------------------------------------------


def test_below_the_threshold_nothing_is_chosen(small_index: LoadedIndex, light: list[Sentence]) -> None:
    candidates = best_first(scored(light[1], 0.49), scored(light[3], 0.3))
    assert select(small_index, candidates, POLICY) == []
    assert select(small_index, [], POLICY) == []
    lower = replace(POLICY, abstain_below=0.4)
    assert select(small_index, candidates, lower) == [candidates[0]]


def test_the_best_sentence_alone_when_no_other_is_close(
    small_index: LoadedIndex, light: list[Sentence], bread: list[Sentence]
) -> None:
    best = scored(light[1], 0.9)
    candidates = best_first(best, scored(bread[1], 0.75), scored(light[3], 0.6))
    assert select(small_index, candidates, POLICY) == [best]


def test_sentences_within_the_margin_join_the_best(
    small_index: LoadedIndex, light: list[Sentence], bread: list[Sentence]
) -> None:
    best, close, outside = scored(light[1], 0.9), scored(bread[1], 0.85), scored(light[3], 0.79)
    candidates = best_first(best, close, outside)
    assert set(select(small_index, candidates, POLICY)) == {best, close}
    wider = replace(POLICY, margin=0.12)
    assert set(select(small_index, candidates, wider)) == {best, close, outside}


BRIDGE = (
    "# The bridge\n\nThe old bridge crosses the river in the middle of the town. It was opened in 1889 "
    "by Mayor Karl Bauer. Its stone arches still carry the road. The new footbridge beside it was "
    "designed by Anna Weber.\n\nThe footbridge is 120 metres long.\n"
)


@pytest.fixture(scope="module")
def bridge(
    tmp_path_factory: pytest.TempPathFactory, embedder: Embedder
) -> tuple[LoadedIndex, list[Sentence]]:
    """A document whose sentences state a year, a name and a number, and a copy of it, indexed as the
    service reads them; the document's five body sentences, scored 0 and from passage 0."""
    from indexer.config import IndexSettings
    from indexer.pipeline import run_index
    from service.index import LoadedIndex

    root = tmp_path_factory.mktemp("bridge")
    (root / "docs").mkdir()
    (root / "docs" / "bridge.md").write_text(BRIDGE, encoding="utf-8")
    (root / "docs" / "copy.md").write_text(BRIDGE.replace("# The bridge", "# A copy"), encoding="utf-8")
    assert run_index([root / "docs"], IndexSettings(store=root / "store")).documents == 2
    index = LoadedIndex.load(root / "store", embedder.name)
    found = spans(index, "bridge.md")[1:]  # the heading left out
    assert len(found) == 5, found
    return index, [Sentence("bridge.md", start, end, 0.0, 0) for start, end in found]


@pytest.mark.parametrize(
    ("question", "best", "joining"),
    [
        ("When was the old bridge opened?", 0, 1),  # a year
        ("Who designed the footbridge?", 2, 3),  # a name (Anna Weber; "Its" opens a sentence: none)
        ("How long is the footbridge?", 3, 4),  # a number, across a paragraph break
    ],
)
def test_a_neighbour_that_states_what_the_question_asks_for_joins(
    bridge: tuple[LoadedIndex, list[Sentence]], question: str, best: int, joining: int
) -> None:
    """However low it scores, a neighbour joins when the question asks for a year, a name or a number
    that the best sentence does not state and the neighbour does; for another question, or when the
    best sentence states one itself, it does not."""
    index, sentences = bridge
    first, neighbour = scored(sentences[best], 0.9), scored(sentences[joining], 0.1)
    candidates = best_first(first, neighbour)
    assert select(index, candidates, POLICY, question) == [first, neighbour]
    assert select(index, candidates, POLICY, "Tell me about the bridges of the town.") == [first]
    stating = scored(sentences[joining], 0.9)
    assert select(index, best_first(stating, scored(sentences[best], 0.1)), POLICY, question) == [stating]


def test_only_the_better_neighbour_joins(bridge: tuple[LoadedIndex, list[Sentence]]) -> None:
    """Both neighbours of sentences[2] name someone (Karl Bauer, Anna Weber): the better one joins."""
    index, sentences = bridge
    question = "Who designed the footbridge?"
    best = scored(sentences[2], 0.9)
    before, after = scored(sentences[1], 0.2), scored(sentences[3], 0.3)
    assert select(index, best_first(best, before, after), POLICY, question) == [best, after]
    before, after = scored(sentences[1], 0.3), scored(sentences[3], 0.2)
    assert select(index, best_first(best, before, after), POLICY, question) == [before, best]


def test_a_neighbour_is_the_very_next_or_previous_sentence(
    bridge: tuple[LoadedIndex, list[Sentence]],
) -> None:
    """sentences[1] states a year, but sentences[2] stands between it and sentences[3]: no neighbour."""
    index, sentences = bridge
    best = scored(sentences[3], 0.9)
    far = scored(sentences[1], 0.1)
    assert select(index, best_first(best, far), POLICY, "When was the old bridge opened?") == [best]


def test_a_sentence_said_twice_is_said_once(bridge: tuple[LoadedIndex, list[Sentence]]) -> None:
    """The copy's sentence has the same words as the best one: it does not join, and the next best
    within the margin takes its place."""
    index, sentences = bridge
    best = scored(sentences[2], 0.9)
    copy = Sentence(
        "copy.md",
        *next(
            span
            for span in spans(index, "copy.md")
            if index.document("copy.md").text[span[0] : span[1]]
            == index.document("bridge.md").text[best.start : best.end]
        ),
        0.88,
        1,
    )
    other = scored(sentences[0], 0.85)
    two = replace(POLICY, most_sentences=2)
    assert select(index, best_first(best, copy, other), two) == [other, best]


def test_answer_kinds() -> None:
    assert [answer_kind(q) for q in ("When did it open?", "In what year was it built?")] == ["year", "year"]
    assert [answer_kind(q) for q in ("How many arches has it?", "What percentage of trade?")] == [
        "number",
        "number",
    ]
    assert [answer_kind(q) for q in ("Who built it?", "Where is the bridge?")] == ["name", "name"]
    assert answer_kind("Why did Armenia freeze CSTO membership?") is None
    question = "When did the 1889 bridge open?"
    assert not states_kind("The 1889 bridge opened late.", "year", question)  # the question names it
    assert states_kind("It opened in 1890.", "year", question)
    assert not states_kind("Weber designed it.", "name", "Who designed it?")  # a sentence's first word
    assert states_kind("It was designed by Weber.", "name", "Who designed it?")
    assert states_kind("It is three metres wide.", "number", "How wide is it?")


def test_a_why_question_always_takes_the_next_sentence(
    small_index: LoadedIndex, light: list[Sentence]
) -> None:
    """Even far below the threshold, and before a better previous one: after a sentence that restates a
    why-question comes the reason."""
    best, before, weak = scored(light[2], 0.9), scored(light[1], 0.8), scored(light[3], 0.2)
    why = "Why did the keepers live beside the tower?"
    two = replace(POLICY, most_sentences=2)
    assert asks_why(why)
    assert select(small_index, best_first(best, before, weak), two) == [before, best]
    assert select(small_index, best_first(best, before, weak), two, why) == [best, weak]
    assert not asks_why("Who tended the lamp?")


def test_at_most_most_sentences_the_best_ones(
    small_index: LoadedIndex, light: list[Sentence], bread: list[Sentence]
) -> None:
    first, second, third, fourth = (
        scored(light[1], 0.9),
        scored(light[3], 0.88),
        scored(bread[1], 0.87),
        scored(bread[3], 0.86),
    )
    candidates = best_first(first, second, third, fourth)
    for most in (1, 2, 3):
        chosen = select(small_index, candidates, replace(POLICY, most_sentences=most))
        assert set(chosen) == set(candidates[:most])


def test_the_chosen_sentences_come_in_reading_order(
    small_index: LoadedIndex, light: list[Sentence], bread: list[Sentence]
) -> None:
    """By the rank of the passage each was found in, then document, then position, whatever their
    scores."""
    later_in_text, earlier = scored(light[4], 0.9), scored(light[1], 0.85)
    assert select(small_index, best_first(later_in_text, earlier), POLICY) == [earlier, later_in_text]
    first_passage = scored(bread[2], 0.86, passage_rank=0)
    second_passage = scored(light[1], 0.9, passage_rank=1)
    assert select(small_index, best_first(second_passage, first_passage), POLICY) == [
        first_passage,
        second_passage,
    ]


# --- compose -----------------------------------------------------------------------------------


def test_adjacent_sentences_share_one_marker(small_index: LoadedIndex, light: list[Sentence]) -> None:
    run = [scored(light[1], 0.8), scored(light[2], 0.9)]
    text, citations = compose(small_index, run)
    document = small_index.document("lighthouse.md").text
    assert text == f"{document[light[1].start : light[2].end]} [1]"
    assert len(citations) == 1
    cited = citations[0]
    assert (cited.n, cited.doc_id) == (1, "lighthouse.md")
    assert (cited.start, cited.end) == (light[1].start, light[2].end)
    assert cited.score == 0.9, "a run is cited with its best sentence's score"


def test_markers_are_numbered_in_order_and_excerpts_are_exact_spans(
    small_index: LoadedIndex, light: list[Sentence], bread: list[Sentence]
) -> None:
    chosen = [scored(light[0], 0.6), scored(light[1], 0.7), scored(light[3], 0.8), scored(bread[1], 0.9)]
    text, citations = compose(small_index, chosen)
    assert [c.n for c in citations] == [1, 2, 3]
    assert [(c.doc_id, c.start, c.end) for c in citations] == [
        ("lighthouse.md", light[0].start, light[1].end),
        ("lighthouse.md", light[3].start, light[3].end),
        ("bread.md", bread[1].start, bread[1].end),
    ]
    excerpts = [small_index.document(c.doc_id).text[c.start : c.end] for c in citations]
    assert text == " ".join(f"{excerpt} [{c.n}]" for excerpt, c in zip(excerpts, citations, strict=True))
    assert text_of(small_index, chosen[2]) + " [2]" in text


def test_sentences_of_two_documents_never_share_a_marker(
    small_index: LoadedIndex, light: list[Sentence]
) -> None:
    """A span of another document that ends where only white space of this one lies before the next
    sentence (light[0] ends, two newlines, light[1] begins) is still its own run."""
    elsewhere = Sentence("bread.md", 0, light[0].end, 0.8, 0)
    document = small_index.document("lighthouse.md").text
    assert not document[elsewhere.end : light[1].start].strip()
    text, citations = compose(small_index, [elsewhere, scored(light[1], 0.9)])
    assert [(c.n, c.doc_id) for c in citations] == [(1, "bread.md"), (2, "lighthouse.md")]
    assert text.startswith(small_index.document("bread.md").text[: light[0].end] + " [1] ")


# --- the two together --------------------------------------------------------------------------


def test_an_answer_abstains_or_cites_what_it_says(small_index: LoadedIndex, embedder: Embedder) -> None:
    """`answer` end to end on the small store: real sentence vectors, a real question vector."""
    question = "Who tended the lamp of the lighthouse every night?"
    vector = embedder.encode_short([question])[0]
    hits = [Hit(c.chunk_id, 1.0) for c in small_index.chunk_records() if c.doc_id == "lighthouse.md"]
    result = answer(small_index, vector, question, hits, POLICY)
    assert not result.abstained and result.citations
    for cited in result.citations:
        excerpt = small_index.document(cited.doc_id).text[cited.start : cited.end]
        assert f"{excerpt} [{cited.n}]" in result.text
    assert "keeper" in result.text
    strict = replace(POLICY, abstain_below=result.best_score + 0.01)
    refused = answer(small_index, vector, question, hits, strict)
    assert refused.abstained and refused.text == ABSTENTION and refused.citations == []
