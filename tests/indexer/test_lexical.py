"""indexer.lexical: bm25s segments searched as one corpus, against real bm25s indexes."""

from __future__ import annotations

import json
from pathlib import Path

import bm25s
import numpy as np
import pytest

from indexer import lexical
from indexer.lexical import LexicalIndex, LexicalSegment, query_terms
from indexer.store import LexicalTokenizerSpec, bm25_tokenizer

pytestmark = pytest.mark.unit

SPEC = LexicalTokenizerSpec()

TEXTS = [
    "The river Kura flows through Georgia and Azerbaijan into the Caspian Sea.",
    "Tbilisi is the capital of Georgia, on the banks of the Kura river.",
    "Baku, the capital of Azerbaijan, lies on the Caspian Sea.",
    "Yerevan is the capital of Armenia; Mount Ararat is seen from the city.",
    "The South Caucasus lies between the Black Sea and the Caspian Sea.",
    "Georgia and Armenia border Turkey; Azerbaijan borders Iran and Russia.",
    "The Caucasus mountains run from the Black Sea to the Caspian Sea.",
    "Lake Sevan is the largest lake in Armenia and in the Caucasus region.",
    "Oil and gas from the Caspian Sea reach Turkey through Georgia by pipeline.",
    "NATO's Secretary General visited Baku, Tbilisi and Yerevan in March 2024.",
    "Wine making in Georgia goes back eight thousand years, in clay vessels.",
    "A an the of",  # only stopwords and one-letter words: bm25s indexes the empty token
    "The Kura and the Aras rivers meet in Azerbaijan before reaching the sea.",
    "Armenian, Georgian and Azerbaijani are the official languages of the three states.",
]

QUERIES = [
    "capital of Georgia",
    "Caspian Sea pipeline",
    "river river Kura",  # a repeated term counts twice, as in bm25s
    "Armenia lake Sevan Yerevan",
    "the sea",
    "NATO visit March 2024 Baku Tbilisi Yerevan",
]


def plain_bm25s(folder: Path, text: str) -> np.ndarray:
    """Every document's score as the stores searched one bm25s index before segments (bm25s's
    get_scores_from_ids over the query's token ids)."""
    retriever = bm25s.BM25.load(str(folder))
    tokenizer = bm25_tokenizer(SPEC)
    tokenizer.load_vocab(str(folder))
    ids = tokenizer.tokenize([text], update_vocab=False, return_as="ids", show_progress=False)[0]
    scores: np.ndarray = retriever.get_scores_from_ids(ids)
    return scores


def segment(
    tmp_path: Path, name: str, texts: list[str], average_length: float | None = None
) -> LexicalSegment:
    LexicalSegment.write(tmp_path / name, texts, SPEC, average_length=average_length)
    return LexicalSegment.load(tmp_path / name, SPEC)


def positive(scores: np.ndarray) -> dict[int, float]:
    return {int(i): float(scores[i]) for i in np.flatnonzero(scores > 0)}


def test_one_segment_scores_exactly_as_bm25s(tmp_path: Path) -> None:
    one = segment(tmp_path, "one", TEXTS)
    index = LexicalIndex([one], [0])
    assert one.size == len(TEXTS)
    for query in QUERIES:
        expected = positive(plain_bm25s(tmp_path / "one", query))
        hits = index.search(query, len(TEXTS))
        assert dict(hits) == expected, query  # float-equal
        scores = [score for _, score in hits]
        assert scores == sorted(scores, reverse=True)
        assert index.search(query, 3) == hits[:3]


def test_repeated_query_term_counts_twice(tmp_path: Path) -> None:
    index = LexicalIndex([segment(tmp_path, "one", TEXTS)], [0])
    once, twice = dict(index.search("Kura", 5)), dict(index.search("Kura kura", 5))
    assert once.keys() == twice.keys()
    assert all(twice[i] == pytest.approx(2 * once[i], rel=1e-6) for i in once)
    assert query_terms("The Kura, the KURA and a river", SPEC) == ["kura", "kura", "river"]


def test_written_as_the_stores_wrote_it_before(tmp_path: Path) -> None:
    """Without average_length, the files are bm25s's own index of the texts, as the stores' bm25/
    writer made them; such a folder (without lexical.json) loads too, without total_length."""
    LexicalSegment.write(tmp_path / "new", TEXTS, SPEC)
    tokenizer = bm25_tokenizer(SPEC)
    retriever = bm25s.BM25()
    retriever.index(tokenizer.tokenize(TEXTS, return_as="ids", show_progress=False), show_progress=False)
    # as json wrote the token ids (orjson, which bm25s prefers when installed, refuses int keys)
    retriever.vocab_dict = {str(k): v for k, v in retriever.vocab_dict.items()}
    retriever.save(str(tmp_path / "old"), show_progress=False)
    tokenizer.save_vocab(str(tmp_path / "old"))
    tokenizer.save_stopwords(str(tmp_path / "old"))
    for name in ("data", "indices", "indptr"):
        new = np.load(tmp_path / "new" / f"{name}.csc.index.npy")
        old = np.load(tmp_path / "old" / f"{name}.csc.index.npy")
        assert np.array_equal(new, old) and new.dtype == old.dtype, name
    old_segment = LexicalSegment.load(tmp_path / "old", SPEC)
    new_segment = LexicalSegment.load(tmp_path / "new", SPEC)
    assert old_segment.total_length is None and old_segment.size == len(TEXTS)
    lengths = [len(ids) for ids in tokenizer.tokenize(TEXTS, update_vocab=False, show_progress=False)]
    assert new_segment.total_length == sum(lengths)
    stats = json.loads((tmp_path / "new" / "lexical.json").read_text())
    assert stats["average_length"] == pytest.approx(sum(lengths) / len(TEXTS))


def test_average_length_of_its_own_writes_what_bm25s_writes(tmp_path: Path) -> None:
    """The build with a given average length (from bm25s's scoring helpers) gives bm25s's own index
    when that average is the segment's own."""
    own = segment(tmp_path, "own", TEXTS)
    assert own.total_length is not None
    segment(tmp_path, "given", TEXTS, average_length=own.total_length / own.size)
    for name in ("data", "indices", "indptr"):
        given = np.load(tmp_path / "given" / f"{name}.csc.index.npy")
        expected = np.load(tmp_path / "own" / f"{name}.csc.index.npy")
        assert np.array_equal(given, expected), name
    # Another average length changes the tf-part only: a longer average favours long documents less.
    segment(tmp_path, "longer", TEXTS, average_length=2 * own.total_length / own.size)
    assert not np.array_equal(
        np.load(tmp_path / "longer" / "data.csc.index.npy"), np.load(tmp_path / "own" / "data.csc.index.npy")
    )
    with pytest.raises(ValueError):
        LexicalSegment.write(tmp_path / "bad", TEXTS, SPEC, average_length=0.0)


@pytest.mark.parametrize("cuts", [(5,), (4, 9), (1, 13)])
def test_segments_score_as_one_index(tmp_path: Path, cuts: tuple[int, ...]) -> None:
    """Split into segments, each written with the corpus's average length: the idf is the corpus's,
    so the scores are one index's over all the texts (up to float32 rounding of the reweighting)."""
    whole = segment(tmp_path, "whole", TEXTS)
    assert whole.total_length is not None
    average = whole.total_length / whole.size
    bounds = [0, *cuts, len(TEXTS)]
    parts = [
        segment(tmp_path, f"part{i}", TEXTS[a:b], average_length=average)
        for i, (a, b) in enumerate(zip(bounds, bounds[1:], strict=False))
    ]
    assert sum(p.total_length or 0 for p in parts) == whole.total_length
    index = LexicalIndex(parts, bounds[:-1])
    for query in QUERIES:
        expected = positive(plain_bm25s(tmp_path / "whole", query))
        hits = index.search(query, len(TEXTS))
        assert dict(hits).keys() == expected.keys(), query
        for chunk, score in hits:
            assert score == pytest.approx(expected[chunk], rel=1e-6), query
        for few in range(1, 6):  # the best few: the largest segment's best set a floor for the others
            assert index.search(query, few) == hits[:few], (query, few)
        ranked = sorted(expected, key=lambda c: (-expected[c], c))
        got = [c for c, _ in hits]
        # The same ranking, but for scores within rounding of each other.
        for i, (a, b) in enumerate(zip(got, ranked, strict=True)):
            assert a == b or expected[a] == pytest.approx(expected[b], rel=1e-6), (query, i)


def test_segments_own_average_length_keeps_corpus_idf(tmp_path: Path) -> None:
    """Segments written with their own average length: the idf is still the corpus's (a term's score
    is its segment's stored score times idf_corpus / idf_segment); only the length normalisation is
    the segment's own (documented), so the scores are near, not equal to, one index's."""
    whole = segment(tmp_path, "whole", TEXTS)
    parts = [segment(tmp_path, "a", TEXTS[:7]), segment(tmp_path, "b", TEXTS[7:])]
    terms = ["capital", "caspian", "kura", "nowhere"]
    summed = parts[0].document_frequencies(terms) + parts[1].document_frequencies(terms)
    assert summed.tolist() == whole.document_frequencies(terms).tolist()
    assert summed[-1] == 0

    def idf(df: int, n: int) -> float:  # bm25s's default ("lucene") idf
        return float(np.log(1 + (n - df + 0.5) / (df + 0.5)))

    index = LexicalIndex(parts, [0, 7])
    df = int(summed[1])
    for part, base, folder in ((parts[0], 0, "a"), (parts[1], 7, "b")):
        alone = plain_bm25s(tmp_path / folder, "caspian")
        own_df = int(part.document_frequencies(["caspian"])[0])
        hits = dict(index.search("caspian", 20))
        for row in np.flatnonzero(alone > 0):
            expected = float(alone[row]) * idf(df, len(TEXTS)) / idf(own_df, part.size)
            assert hits[base + int(row)] == pytest.approx(expected, rel=1e-6)
    near = dict(index.search("Caspian Sea pipeline", 20))
    exact = positive(plain_bm25s(tmp_path / "whole", "Caspian Sea pipeline"))
    assert near.keys() == exact.keys()
    for chunk, score in near.items():
        assert score == pytest.approx(exact[chunk], rel=0.25)


def test_sampled_floor_keeps_the_best(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A large segment's candidates are those at least the k-th best of a sample of its scores: with
    a sample of every third or fourth score here, the best k are still every segment's best k, equal
    scores by id, as an exhaustive ranking of bm25s's scores gives them."""
    texts = TEXTS * 3  # equal scores aplenty
    one = segment(tmp_path, "one", texts)
    monkeypatch.setattr(lexical, "SAMPLE", 10)
    index = LexicalIndex([one], [0], np.array([3, 17], dtype=np.int64))
    for query in QUERIES:
        scores = plain_bm25s(tmp_path / "one", query)
        scores[[3, 17]] = 0
        rows = np.flatnonzero(scores > 0)
        ranked = [(int(r), float(scores[r])) for r in rows[np.lexsort((rows, -scores[rows]))]]
        allowed = np.arange(0, len(texts), 2, dtype=np.int64)
        among = [(row, score) for row, score in ranked if row % 2 == 0]
        for k in (1, 2, 3, 5, 8, 13, 50):
            assert index.search(query, k) == ranked[:k], (query, k)
            assert index.search(query, k, allowed) == among[:k], (query, k)


def test_deleted_never_returned_but_counted(tmp_path: Path) -> None:
    parts = [segment(tmp_path, "a", TEXTS[:6]), segment(tmp_path, "b", TEXTS[6:])]
    full = LexicalIndex(parts, [100, 200])
    query = "Caspian Sea"
    every = dict(full.search(query, 50))
    assert set(every) <= {100 + i for i in range(6)} | {200 + i for i in range(len(TEXTS) - 6)}
    deleted = np.array(sorted(every)[::2], dtype=np.int64)
    pruned = LexicalIndex(parts, [100, 200], deleted)
    hits = dict(pruned.search(query, 50))
    assert not set(hits) & set(deleted.tolist())
    # The statistics still count the deleted documents: the others keep their scores.
    assert hits == {c: s for c, s in every.items() if c not in set(deleted.tolist())}
    assert pruned.search(query, 2) == sorted(hits.items(), key=lambda h: (-h[1], h[0]))[:2]


def test_allowed_restricts_and_keeps_scores(tmp_path: Path) -> None:
    parts = [segment(tmp_path, "a", TEXTS[:4]), segment(tmp_path, "b", TEXTS[4:])]
    index = LexicalIndex(parts, [0, 4], np.array([8], dtype=np.int64))
    query = "Caspian Sea Georgia"
    every = dict(index.search(query, 50))
    allowed = np.array([0, 2, 3, 5, 8, 9, 13], dtype=np.int64)
    hits = index.search(query, 50, allowed)
    assert dict(hits) == {c: s for c, s in every.items() if c in set(allowed.tolist())}
    assert 8 not in dict(hits)  # allowed, but deleted
    assert index.search(query, 1, allowed) == hits[:1]
    assert index.search(query, 5, np.zeros(0, dtype=np.int64)) == []


def test_unknown_terms_and_k(tmp_path: Path) -> None:
    index = LexicalIndex([segment(tmp_path, "one", TEXTS)], [0])
    assert index.search("zyzzyva quux", 5) == []
    assert index.search("the of a", 5) == []  # only stopwords: not the texts without any term
    assert index.search("", 5) == []
    assert index.search("Caspian", 0) == []
    assert index.search("Caspian", -1) == []
    assert len(index.search("Caspian", 2)) == 2
    assert LexicalIndex([], []).search("Caspian", 5) == []


def test_empty_segment(tmp_path: Path) -> None:
    empty = segment(tmp_path, "empty", [])
    assert empty.size == 0 and empty.total_length == 0
    assert empty.document_frequencies(["caspian", ""]).tolist() == [0, 0]
    assert LexicalIndex([empty], [0]).search("Caspian", 5) == []
    full = segment(tmp_path, "full", TEXTS)
    alone = LexicalIndex([full], [0]).search("Caspian Sea", 5)
    # An empty segment adds no document: the statistics, hence the scores, are the same.
    assert LexicalIndex([empty, full], [0, 0]).search("Caspian Sea", 5) == alone
    assert LexicalIndex([full, empty], [0, len(TEXTS)]).search("Caspian Sea", 5) == alone


def test_document_frequencies(tmp_path: Path) -> None:
    one = segment(tmp_path, "one", TEXTS)
    words = ["caspian", "kura", "georgia", "nowhere"]
    expected = [sum(word in set(query_terms(text, SPEC)) for text in TEXTS) for word in words]
    assert one.document_frequencies(words).tolist() == expected
    assert one.document_frequencies([]).tolist() == []


def test_mismatched_segments_refused(tmp_path: Path) -> None:
    one = segment(tmp_path, "one", TEXTS[:3])
    with pytest.raises(ValueError):
        LexicalIndex([one], [0, 3])
    with pytest.raises(ValueError):
        LexicalIndex([one, one], [0, 2])  # overlapping ids
