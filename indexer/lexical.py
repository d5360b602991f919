"""BM25 over a store's segments, scored as one corpus.

Each segment keeps its own bm25s index over its chunks' texts (bm25s.BM25 with its default method,
"lucene"), in a folder of its own:

    data.csc.index.npy, indices.csc.index.npy, indptr.csc.index.npy
                             bm25s's score matrix, CSC by token id: column t holds, for every
                             document holding token t, idf_segment(t) * tf-part(t, document)
    params.index.json, vocab.index.json
                             bm25s's parameters (k1, b, method, num_docs...) and its column map (the
                             tokenizer's ids themselves: bm25s indexes token ids as they are)
    vocab.tokenizer.json, stopwords.tokenizer.json
                             the tokenizer's vocabulary (word -> token id) and stopwords
    lexical.json             {"documents", "total_length", "average_length"}: the document count, the
                             sum of the documents' lengths in tokens (as bm25s counts them: an empty
                             text is one token, "") and the average length the tf-part used. Absent
                             from segments written before it; then `total_length` is None.

Corpus-level statistics (Lucene's CollectionStatistics): a query term's idf is bm25s's idf formula
over the whole corpus, the term's document frequency summed over every segment (read off each
matrix: the length of the term's column) and the total document count, deleted documents included
(as in Lucene until a merge). The stored scores carry each segment's own idf, so at query time a
term's column is multiplied by idf_corpus(term) / idf_segment(term), both as bm25s computes and
stores them (float32). With one segment the ratio is exactly 1 and the scores are bm25s's own.

The tf-part's length normalisation uses the average document length given to `LexicalSegment.write`
(`average_length=`: e.g. the corpus's at the time the segment is written), or else the segment's own,
as bm25s does. It is fixed in the stored scores: a segment written with another average than the
corpus's current one scores its documents' lengths slightly differently from one index over all the
texts, until a merge rewrites it. Only the idf is corpus-wide at query time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from indexer.store import LexicalTokenizerSpec

STATS_FILE = "lexical.json"  # this module's own file in a segment's folder (bm25s writes the others)
EMPTY_TOKEN = ""  # bm25s's token of a text without any other: never a query term here


def _tokenizer(spec: LexicalTokenizerSpec) -> Any:
    """A bm25s Tokenizer as `spec` says, without a vocabulary (indexer.store.bm25_tokenizer)."""
    from indexer.store import bm25_tokenizer

    return bm25_tokenizer(spec)


def query_terms(text: str, spec: LexicalTokenizerSpec) -> list[str]:
    """`text`'s terms as bm25s's Tokenizer makes them when it indexes (lowered and split, stopwords
    left out, as `spec` says), in the text's order, repeats kept: a term repeated in the query scores
    twice, as bm25s's get_scores_from_ids does with a repeated id."""
    tokenizer = _tokenizer(spec)  # a fresh one: its vocabulary fills with this text's terms only
    tokens = tokenizer.tokenize(
        [text], update_vocab=True, return_as="string", show_progress=False, allow_empty=False
    )
    return [str(term) for term in tokens[0]] if tokens else []


def _idf_function(method: str) -> Callable[[int, int], float]:
    """bm25s's idf of a document frequency among N documents, for its `idf_method` (for the default,
    "lucene": log(1 + (N - df + 0.5) / (df + 0.5)))."""
    from bm25s.scoring import _select_idf_scorer

    function = _select_idf_scorer(method)
    return lambda df, n: float(function(df, N=n))


def _float32_idf(idf: Callable[[int, int], float], df: int, n: int) -> np.float32:
    """The idf as bm25s stores it (float32; 0 for a term no document holds)."""
    return np.float32(idf(df, n)) if df > 0 else np.float32(0.0)


class LexicalSegment:
    """One segment's bm25s index and its tokenizer's vocabulary.

    The score matrix is memory-mapped (bm25s.BM25.load(..., mmap=True)): a search reads the columns
    of its query's terms only, so a large segment is not held in memory."""

    size: int  # documents (chunks) indexed
    total_length: int | None  # sum of the documents' lengths in tokens; None without lexical.json

    def __init__(
        self,
        spec: LexicalTokenizerSpec,
        word_ids: dict[str, int],
        data: np.ndarray,
        indices: np.ndarray,
        indptr: np.ndarray,
        size: int,
        idf_method: str,
        total_length: int | None,
    ) -> None:
        """A segment from its parts (see `load`): the tokenizer's word -> token id, bm25s's CSC score
        matrix (column t: rows indices[indptr[t]:indptr[t+1]], scores data[...]) over `size`
        documents, scored with bm25s's `idf_method`."""
        self.spec = spec
        self.size = size
        self.total_length = total_length
        self.idf_method = idf_method
        self._word_ids = word_ids
        self._data = data
        self._indices = indices
        self._indptr = indptr
        self._columns = len(indptr) - 1
        self.idf = _idf_function(idf_method)

    @staticmethod
    def write(
        folder: Path,
        texts: Sequence[str],
        spec: LexicalTokenizerSpec,
        average_length: float | None = None,
    ) -> None:
        """Index `texts` (row i is texts[i]) into `folder` (made if missing) as `load` reads it, and
        fsync every file and the folder. `average_length`: the average document length, in tokens,
        that the tf-part's length normalisation divides by (e.g. the corpus's, over every segment);
        None for the segment's own, exactly as bm25s.BM25.index computes it. No texts: a segment of
        0 documents."""
        import bm25s

        if average_length is not None and not (math.isfinite(average_length) and average_length > 0):
            raise ValueError(f"average_length must be a positive number, not {average_length}")
        tokenizer = _tokenizer(spec)  # an unknown library is refused before anything is written
        folder.mkdir(parents=True, exist_ok=True)
        tokens: list[list[int]] = tokenizer.tokenize(list(texts), return_as="ids", show_progress=False)
        total = sum(len(ids) for ids in tokens)
        retriever = bm25s.BM25()
        if not tokens:
            _set_empty(retriever)
        elif average_length is None:
            retriever.index(tokens, show_progress=False)
        else:
            _index_with_average_length(retriever, tokens, float(average_length))
        # JSON object keys are strings: json writes the token ids as such, but orjson, which bm25s uses
        # instead when it is installed (pymilvus brings it), refuses the ints
        retriever.vocab_dict = {str(k): v for k, v in retriever.vocab_dict.items()}
        retriever.save(str(folder), show_progress=False)
        tokenizer.save_vocab(str(folder))
        tokenizer.save_stopwords(str(folder))
        used = average_length if average_length is not None else (total / len(tokens) if tokens else 0.0)
        stats = {"documents": len(tokens), "total_length": total, "average_length": float(used)}
        with open(folder / STATS_FILE, "w", encoding="utf-8") as fh:
            json.dump(stats, fh)
        from indexer.store import fsync_file

        for path in folder.iterdir():
            fsync_file(path)
        fsync_file(folder)

    @classmethod
    def load(cls, folder: Path, spec: LexicalTokenizerSpec) -> LexicalSegment:
        """The segment written to `folder` by `write` (or by the stores' earlier bm25/ writer, then
        without `total_length`), its score matrix memory-mapped. ValueError for a bm25s method this
        module cannot reweight (BM25L and BM25+ add a score for the terms a document lacks)."""
        import bm25s

        tokenizer = _tokenizer(spec)  # an unknown library is refused before anything is read (and
        # bm25s quietened)
        retriever = bm25s.BM25.load(str(folder), mmap=True, load_vocab=False)
        if retriever.method in retriever.methods_requiring_nonoccurrence:
            raise ValueError(f"{folder}: bm25s method {retriever.method!r} is not supported here")
        tokenizer.load_vocab(str(folder))
        scores = retriever.scores
        size = int(scores["num_docs"])
        total_length: int | None = None
        stats_path = folder / STATS_FILE
        if stats_path.exists():
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
            if int(stats["documents"]) != size:
                counted = stats["documents"]
                raise ValueError(f"{folder}: {STATS_FILE} counts {counted} documents, bm25s {size}")
            total_length = int(stats["total_length"])
        # Plain views of the maps: slicing a np.memmap costs more than slicing an ndarray.
        return cls(
            spec,
            tokenizer.word_to_id,
            np.asarray(scores["data"]),
            np.asarray(scores["indices"]),
            np.asarray(scores["indptr"]),
            size,
            str(retriever.idf_method),
            total_length,
        )

    def columns(self, terms: Sequence[str]) -> np.ndarray:
        """Each term's token id (its matrix column) in this segment; -1 for a term it does not hold."""
        ids = [self._word_ids.get(term, -1) if term != EMPTY_TOKEN else -1 for term in terms]
        columns = np.array(ids, dtype=np.int64)
        columns[columns >= self._columns] = -1
        return columns

    def document_frequencies(self, terms: Sequence[str]) -> np.ndarray:
        """How many of this segment's documents hold each term (0 for a term it does not hold), read
        off the score matrix: the length of the term's column. int64, one per term."""
        return self._column_frequencies(self.columns(terms))

    def _column_frequencies(self, columns: np.ndarray) -> np.ndarray:
        known = columns >= 0
        frequencies = np.zeros(len(columns), dtype=np.int64)
        if known.any():
            at = columns[known]
            frequencies[known] = self._indptr[at + 1] - self._indptr[at]
        return frequencies

    def scores(self, columns: Sequence[int], weights: Sequence[np.float32]) -> np.ndarray:
        """Every document's score, float32, shape (size,): the sum, in the order given, of each
        column's stored scores times its weight (a weight of 1 adds the stored scores as they are: the
        same float32 additions, in the same order, as bm25s's get_scores_from_ids)."""
        scores = np.zeros(self.size, dtype=np.float32)
        for column, weight in zip(columns, weights, strict=True):
            start, stop = int(self._indptr[column]), int(self._indptr[column + 1])
            values = self._data[start:stop]
            if weight != 1:
                values = values * weight
            np.add.at(scores, self._indices[start:stop], values)
        return scores


def _set_empty(retriever: Any) -> None:
    """A bm25s index of no documents (bm25s.BM25.index refuses an empty corpus): one empty column,
    the empty token's, as the tokenizer's vocabulary holds it."""
    retriever.scores = {
        "data": np.zeros(0, dtype=retriever.dtype),
        "indices": np.zeros(0, dtype=retriever.int_dtype),
        "indptr": np.zeros(2, dtype=np.int64),
        "num_docs": 0,
    }
    retriever.vocab_dict = {0: 0}
    retriever.nonoccurrence_array = None
    retriever.unique_token_ids_set = {0}


def _index_with_average_length(retriever: Any, tokens: list[list[int]], average_length: float) -> None:
    """What bm25s.BM25.index does with token ids (bm25s 0.3.16: BM25.index, then
    build_index_from_ids), with the average document length given instead of the corpus's own, from
    bm25s's own scoring helpers (document frequencies, idf array, per-document scores, CSC matrix):
    nothing of the BM25 formula is written here."""
    from bm25s import scoring

    if retriever.method in retriever.methods_requiring_nonoccurrence:
        raise ValueError(f"average_length is not supported with bm25s method {retriever.method!r}")
    # As BM25.index with token ids and create_empty_token: every id, and the empty token's (id 0, or
    # one more when a document uses 0). The tokenizer's ids are 0..V-1, so the map is the identity
    # and the columns are the token ids, as bm25s's own index has them.
    unique = set()
    for ids in tokens:
        unique.update(ids)
    unique.add(0 if 0 not in unique else max(unique) + 1)
    columns = len(unique)
    if unique != set(range(columns)):
        raise ValueError("token ids are not 0..V-1: not a bm25s Tokenizer's")
    vocab = {token_id: token_id for token_id in range(columns)}
    doc_frequencies = scoring._calculate_doc_freqs(
        corpus_tokens=tokens, unique_tokens=list(vocab.values()), show_progress=False
    )
    idf_array = scoring._build_idf_array(
        doc_frequencies=doc_frequencies,
        n_docs=len(tokens),
        compute_idf_fn=scoring._select_idf_scorer(retriever.idf_method),
        dtype=retriever.dtype,
    )
    flat, rows, cols = scoring._build_scores_and_indices_for_matrix(
        corpus_token_ids=tokens,
        idf_array=idf_array,
        avg_doc_len=np.float64(average_length),
        doc_frequencies=doc_frequencies,
        k1=retriever.k1,
        b=retriever.b,
        delta=retriever.delta,
        nonoccurrence_array=None,
        method=retriever.method,
        dtype=retriever.dtype,
        int_dtype=retriever.int_dtype,
        show_progress=False,
    )
    data, indices, indptr = retriever._np_csc(data=flat, rows=rows, cols=cols, shape=(len(tokens), columns))
    retriever.scores = {
        "data": data.astype(retriever.dtype),
        "indices": indices,
        "indptr": indptr,
        "num_docs": len(tokens),
    }
    retriever.vocab_dict = vocab
    retriever.nonoccurrence_array = None
    retriever.unique_token_ids_set = set(vocab.values())


class LexicalIndex:
    """Segments searched as one corpus: global document ids run from each segment's base, a term's
    idf is the corpus's (document frequencies summed over the segments, over their total document
    count, deleted documents included), and the best k are taken across segments."""

    def __init__(
        self,
        segments: Sequence[LexicalSegment],
        bases: Sequence[int],
        deleted: np.ndarray | None = None,
    ) -> None:
        """`bases[i]`: the global id of segment i's row 0 (the segments' ranges must not overlap).
        `deleted`: global ids never returned (tombstones), which still count in the statistics.
        Every segment must be tokenized alike (one spec, one bm25s idf method)."""
        if len(segments) != len(bases):
            raise ValueError(f"{len(segments)} segments for {len(bases)} bases")
        self.segments = list(segments)
        self.bases = np.asarray(bases, dtype=np.int64).reshape(-1)
        specs = {segment.spec for segment in self.segments}
        methods = {segment.idf_method for segment in self.segments}
        if len(specs) > 1 or len(methods) > 1:
            raise ValueError(f"segments tokenized or scored differently: {specs}, {methods}")
        self.spec = specs.pop() if specs else None
        self.documents = sum(segment.size for segment in self.segments)
        self.idf = _idf_function(methods.pop()) if methods else None
        ends = self.bases + np.array([s.size for s in self.segments], dtype=np.int64)
        spans = sorted(zip(self.bases.tolist(), ends.tolist(), strict=True))
        if any(a_end > b_start for (_, a_end), (b_start, _) in zip(spans, spans[1:], strict=False)):
            raise ValueError("segments' id ranges overlap")
        gone = np.unique(np.asarray(deleted if deleted is not None else [], dtype=np.int64))
        self._by_size = sorted(range(len(self.segments)), key=lambda i: -self.segments[i].size)
        self._deleted = [
            _local(gone, int(base), segment.size) for base, segment in zip(self.bases, segments, strict=True)
        ]

    def search(self, text: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """The k documents with the best BM25 score for `text`, as (global id, score), best first (equal
        scores by id), only those scoring above 0 and not deleted: fewer than k (or none) when fewer
        share a term with the text; [] when k <= 0 or no term of the text is in any segment. `allowed`:
        sorted distinct global int64 ids, the only ones scored and ranked (with the same scores)."""
        if k <= 0 or self.spec is None or self.idf is None:
            return []
        terms = query_terms(text, self.spec)
        if not terms:
            return []
        columns = [segment.columns(terms) for segment in self.segments]
        frequencies = [s._column_frequencies(c) for s, c in zip(self.segments, columns, strict=True)]
        corpus_df = np.sum(frequencies, axis=0) if frequencies else np.zeros(len(terms), np.int64)
        if not corpus_df.any():
            return []
        corpus_idf = [_float32_idf(self.idf, int(df), self.documents) for df in corpus_df]
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64).reshape(-1)
        found_ids: list[np.ndarray] = []
        found_scores: list[np.ndarray] = []
        found, floor = 0, 0.0
        for at in self._by_size:  # the largest segment first: its best k set a floor for the others
            segment, base, cols, dfs, gone = (
                self.segments[at],
                int(self.bases[at]),
                columns[at],
                frequencies[at],
                self._deleted[at],
            )
            use = [i for i in range(len(terms)) if cols[i] >= 0 and dfs[i] > 0]
            if not use:
                continue
            rows = None
            if allowed is not None:
                rows = _local(allowed, int(base), segment.size)
                if not len(rows):
                    continue
            weights = []
            for i in use:
                own = _float32_idf(segment.idf, int(dfs[i]), segment.size)
                weights.append(np.float32(corpus_idf[i] / own) if own != 0 else np.float32(0.0))
            scores = segment.scores([int(cols[i]) for i in use], weights)
            if len(gone):
                scores[gone] = 0
            if rows is None:
                rows = _at_least(scores, k, floor)
                kept = scores[rows]
            else:
                kept = scores[rows]
                picked = _at_least(kept, k, floor)
                rows, kept = rows[picked], kept[picked]
            rows, kept = _best(rows, kept, k)
            found_ids.append(rows + base)
            found_scores.append(kept)
            found += len(kept)
            if found >= k:  # the k-th best so far: a document scoring less cannot be among the best k
                floor = float(np.partition(np.concatenate(found_scores), -k)[-k])
        if not found_ids:
            return []
        ids = np.concatenate(found_ids)
        scores = np.concatenate(found_scores)
        order = np.lexsort((ids, -scores))[:k]
        return [(int(ids[i]), float(scores[i])) for i in order]


def _local(ids: np.ndarray, base: int, size: int) -> np.ndarray:
    """The ids of the sorted `ids` in base..base+size-1, as rows from base."""
    first, stop = np.searchsorted(ids, [base, base + size])
    return ids[first:stop] - base


SAMPLE = 8192  # scores sampled to find a floor under the k-th best one (`_at_least`)


def _at_least(scores: np.ndarray, k: int, floor: float) -> np.ndarray:
    """The positions in `scores` that may hold its k best above 0 (and at least `floor`), ascending:
    those at least the k-th best of an evenly spaced sample of the scores (which is no more than the
    k-th best of them all), or else every one above 0 (and at least `floor`)."""
    step = len(scores) // SAMPLE
    if step > 1:
        sample = scores[::step]
        cut = float(np.partition(sample, len(sample) - k)[len(sample) - k]) if len(sample) > k else 0.0
        floor = max(floor, cut)
    return np.flatnonzero(scores >= floor) if floor > 0 else np.flatnonzero(scores > 0)


def _best(rows: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of `scores` (rows in ascending order), equal scores at the cut by the lower row: as
    rows and scores, in the order of `rows`."""
    if len(scores) <= k:
        return rows, scores
    cut = np.partition(scores, len(scores) - k)[len(scores) - k]  # the k-th best score
    above = np.flatnonzero(scores > cut)
    ties = np.flatnonzero(scores == cut)[: k - len(above)]
    keep = np.sort(np.concatenate([above, ties]))
    return rows[keep], scores[keep]
