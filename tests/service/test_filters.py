"""Retrieval filters (`filter` on /v1/ask and /v1/search) and the paginated document list, in process:
the real app with its real lifespan over a real small store indexed here with the bundled model (the
seed article, conftest's two small documents, and four notes with metadata), plus the store's reader
and the retriever on their own. A filter is applied inside retrieval: the best hits among the chunks it
allows, never the unfiltered top-k filtered afterwards."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from indexer.filters import ChunkFilter
from indexer.reader import LocalStoreReader
from service.config import ServiceSettings
from service.index import LoadedIndex
from service.retrieval import Retriever
from tests.service.conftest import (
    ARMENIA,
    CORPUS,
    ODD_ID,
    STOLTENBERG,
    app_errors,
    bare_app,
    index,
    serving,
    write_extra_documents,
)

if TYPE_CHECKING:
    from indexer.embedding import Embedder

pytestmark = pytest.mark.unit

BIRDS = "Which birds cannot fly?"
NOTES = [
    {
        "_id": "kiwi",
        "title": "Kiwi",
        "text": "The kiwi is a flightless bird of New Zealand. It sleeps in burrows by day.",
        "metadata": {"lang": "en", "year": 2023, "tags": ["birds", "new-zealand"]},
    },
    {
        "_id": "kiwi-de",
        "title": "Kiwi (deutsch)",
        "text": "Der Kiwi ist ein flugunfähiger Vogel aus Neuseeland. Er schläft tagsüber in Höhlen.",
        "metadata": {"lang": "de", "year": 2024},
    },
    {
        "_id": "penguin",
        "title": "Penguins",
        "text": "Penguins cannot fly, but they swim fast. Emperor penguins breed in the Antarctic winter.",
        "metadata": {"lang": "en", "year": 2024.0, "reviewed": True},
    },
    {
        "_id": "ostrich",
        "title": "Ostriches",
        "text": "The ostrich is the largest living bird and cannot fly. It runs at seventy km an hour.",
        "metadata": {"lang": "en", "year": "2024", "reviewed": False},
    },
]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    root = tmp_path_factory.mktemp("filters")
    extra = write_extra_documents(root / "extra")
    (extra / "notes.jsonl").write_text("".join(json.dumps(n) + "\n" for n in NOTES), encoding="utf-8")
    assert index([CORPUS, extra], root / "store").documents == 3 + len(NOTES)
    return root


@pytest.fixture(scope="module")
def reader(folder: Path) -> LocalStoreReader:
    return LocalStoreReader.open(folder / "store")


@pytest.fixture(scope="module")
def app(folder: Path) -> Iterator[TestClient]:
    with serving(ServiceSettings(store=folder / "store")) as client:
        yield client
        errors = app_errors(client.app)  # type: ignore[arg-type]
    assert not errors, f"requests answered with 5xx: {errors}"


@pytest.fixture(scope="module")
def bare(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """Validation only: no index, and the model never loaded."""
    with bare_app(tmp_path_factory.mktemp("no-index") / "store") as bare:
        yield bare.client
    assert not bare.model.loaded, "a request that fails validation loaded the model"


def post(client: TestClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post(path, json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def search(client: TestClient, query: str, top_k: int = 10, **body: Any) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = post(client, "/v1/search", {"query": query, "top_k": top_k, **body})[
        "results"
    ]
    return results


def doc_ids(results: list[dict[str, Any]]) -> set[str]:
    return {r["doc_id"] for r in results}


def chunk_count(client: TestClient, *documents: str) -> int:
    listed = client.get("/v1/documents").json()["documents"]
    return sum(d["chunks"] for d in listed if d["doc_id"] in documents)


def vector(embedder: Embedder, text: str) -> np.ndarray:
    encoded: np.ndarray = embedder.encode_short([text])[0]
    return encoded


# --- without a filter, nothing changes -----------------------------------------------------------


@pytest.mark.parametrize("query", [ARMENIA, BIRDS, "Georgia", "honey"])
def test_no_filter_a_null_filter_and_an_empty_one_give_the_same_results(app: TestClient, query: str) -> None:
    for top_k in (1, 5, 50):
        plain = search(app, query, top_k)
        assert plain == search(app, query, top_k, filter=None) == search(app, query, top_k, filter={})
    bodies: list[dict[str, Any]] = [{}, {"filter": None}, {"filter": {}}]
    asked = [
        {k: v for k, v in post(app, "/v1/ask", {"question": query, **extra}).items() if k != "timings_ms"}
        for extra in bodies
    ]
    assert asked[0] == asked[1] == asked[2]


@pytest.mark.parametrize("query", [ARMENIA, BIRDS, "Georgia peaches"])
def test_allowing_every_chunk_is_the_unrestricted_search(
    reader: LocalStoreReader, embedder: Embedder, query: str
) -> None:
    """The restricted paths (FAISS with an IDSelector, BM25 scores sliced) agree with the unrestricted
    ones when nothing is left out, and `allowed=None` is the unrestricted search itself."""
    v = vector(embedder, query)
    every = np.arange(reader.chunk_count, dtype=np.int64)
    for k in (1, 3, reader.chunk_count + 5):
        dense = reader.dense(v, k)
        assert reader.dense(v, k, None) == dense
        restricted = reader.dense(v, k, every)
        assert [c for c, _ in restricted] == [c for c, _ in dense]
        assert [s for _, s in restricted] == pytest.approx([s for _, s in dense], abs=1e-6)
        lexical = reader.lexical(query, k)
        assert reader.lexical(query, k, None) == lexical == reader.lexical(query, k, every)


# --- applied inside retrieval --------------------------------------------------------------------


def test_a_filter_to_one_document_returns_its_chunks_even_below_the_unfiltered_top_k(
    app: TestClient, reader: LocalStoreReader, embedder: Embedder, folder: Path
) -> None:
    """The post-filter failure case: the seed article ranks below the unfiltered top 2 for a question
    about birds; filtered to it, retrieval still returns 2 of its chunks, the best 2 of them."""
    v = vector(embedder, BIRDS)
    allowed = reader.matching_chunks(ChunkFilter(doc_ids=(STOLTENBERG,)))
    assert allowed is not None and len(allowed) >= 3
    assert all(reader.chunk(int(c)).doc_id == STOLTENBERG for c in allowed)
    assert not set(allowed.tolist()) & {c for c, _ in reader.dense(v, 2)}, "a post-filter would keep none"
    restricted = reader.dense(v, 2, allowed)
    exact = allowed[np.argsort(-(reader.chunk_vectors(allowed.tolist()) @ v))[:2]]
    assert [c for c, _ in restricted] == exact.tolist()

    # The retriever, with as few candidates as hits, does the same with both lists.
    retriever = Retriever(ServiceSettings(store=folder / "store", candidates=2))
    loaded = LoadedIndex(reader)
    unfiltered = retriever.search(loaded, v, BIRDS, 2)
    assert {reader.chunk(h.chunk_id).doc_id for h in unfiltered}.isdisjoint({STOLTENBERG})
    hits = retriever.search(loaded, v, BIRDS, 2, allowed)
    assert len(hits) == 2 and {reader.chunk(h.chunk_id).doc_id for h in hits} == {STOLTENBERG}

    # Over HTTP: k results, all of that document, where the unfiltered top k holds none of it.
    assert STOLTENBERG not in doc_ids(search(app, BIRDS, 2))
    results = search(app, BIRDS, 3, filter={"doc_ids": [STOLTENBERG]})
    assert len(results) == 3 and doc_ids(results) == {STOLTENBERG}
    everything = search(app, BIRDS, 50, filter={"doc_ids": [STOLTENBERG]})
    assert len(everything) == chunk_count(app, STOLTENBERG)


def test_lexical_search_ranks_among_the_allowed_chunks_with_unchanged_scores(
    reader: LocalStoreReader,
) -> None:
    allowed = reader.matching_chunks(ChunkFilter(doc_ids=(STOLTENBERG,)))
    assert allowed is not None
    everywhere = dict(reader.lexical("Georgia peaches", reader.chunk_count))
    assert reader.chunk(reader.lexical("Georgia peaches", 1)[0][0]).doc_id == "georgia.md"
    restricted = reader.lexical("Georgia peaches", 2, allowed)
    assert len(restricted) == 2
    expected = sorted((c for c in allowed.tolist() if c in everywhere), key=lambda c: -everywhere[c])[:2]
    assert [c for c, _ in restricted] == expected
    assert all(score == pytest.approx(everywhere[c]) for c, score in restricted)
    assert reader.lexical("penguins", 5, allowed) == [], "no allowed chunk holds the word"


def test_several_documents(app: TestClient) -> None:
    results = search(app, BIRDS, 50, filter={"doc_ids": ["georgia.md", ODD_ID, "no-such-document"]})
    assert doc_ids(results) == {"georgia.md", ODD_ID}
    assert len(results) == chunk_count(app, "georgia.md", ODD_ID)


def test_source_prefix(app: TestClient, folder: Path) -> None:
    corpus = search(app, "Georgia", 50, filter={"source_prefix": f"{CORPUS}/"})
    assert corpus and all(r["source"].startswith(f"{CORPUS}/") for r in corpus)
    assert doc_ids(corpus) == {STOLTENBERG}
    notes = search(app, BIRDS, 50, filter={"source_prefix": str(folder / "extra" / "notes")})
    assert doc_ids(notes) == {n["_id"] for n in NOTES}
    assert search(app, BIRDS, filter={"source_prefix": str(folder / "extra").upper()}) == []


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"lang": "en"}, {"kiwi", "penguin", "ostrich"}),
        ({"lang": ["de", "fr"]}, {"kiwi-de"}),
        ({"year": [2023, 2024]}, {"kiwi", "kiwi-de", "penguin"}),  # 2024 matches 2024.0, not "2024"
        ({"year": "2024"}, {"ostrich"}),
        ({"reviewed": True}, {"penguin"}),
        ({"reviewed": [False, None]}, {"ostrich"}),
        ({"tags": "birds"}, {"kiwi"}),  # one element of a list field
        ({"lang": "en", "year": 2024}, {"penguin"}),  # every field must match
        ({"lang": "fr"}, set()),
        ({"no-such-field": 1}, set()),
    ],
)
def test_metadata_equality_and_one_of(app: TestClient, metadata: dict[str, Any], expected: set[str]) -> None:
    results = search(app, BIRDS, 50, filter={"metadata": metadata})
    assert doc_ids(results) == expected


def test_conditions_combine_with_and(app: TestClient, folder: Path) -> None:
    both = {
        "source_prefix": str(folder / "extra"),
        "metadata": {"lang": "en"},
        "doc_ids": ["kiwi", "kiwi-de"],
    }
    assert doc_ids(search(app, BIRDS, 50, filter=both)) == {"kiwi"}
    assert search(app, BIRDS, 50, filter={"source_prefix": f"{CORPUS}/", "doc_ids": ["kiwi"]}) == []


def test_the_answer_sees_only_passages_that_passed(app: TestClient, folder: Path) -> None:
    answered = post(app, "/v1/ask", {"question": ARMENIA, "filter": {"doc_ids": [STOLTENBERG]}})
    assert not answered["abstained"] and "security guarantees" in answered["answer"]
    assert {c["doc_id"] for c in answered["citations"]} == {STOLTENBERG}

    elsewhere = post(
        app, "/v1/ask", {"question": ARMENIA, "filter": {"source_prefix": str(folder / "extra")}}
    )
    assert elsewhere["passages"], "the closest passages of the allowed documents"
    assert all(p["source"].startswith(str(folder / "extra")) for p in elsewhere["passages"])
    assert all(c["doc_id"] != STOLTENBERG for c in elsewhere["citations"])
    assert "security guarantees" not in elsewhere["answer"]


def test_a_filter_matching_nothing_abstains_with_no_passages(app: TestClient) -> None:
    for nothing in (
        {"doc_ids": ["no-such-document"]},
        {"source_prefix": "/no/such/"},
        {"metadata": {"x": 1}},
    ):
        assert search(app, ARMENIA, filter=nothing) == []
        answer = post(app, "/v1/ask", {"question": ARMENIA, "filter": nothing})
        assert answer["abstained"] is True
        assert answer["passages"] == [] and answer["citations"] == []
    with app.stream(
        "POST", "/v1/ask", json={"question": ARMENIA, "stream": True, "filter": {"doc_ids": ["none"]}}
    ) as response:
        assert response.status_code == 200
        body = response.read().decode()
    assert "event: passages\ndata: []" in body.replace("\r\n", "\n")
    done = json.loads(body.split("event: done")[1].split("data:", 1)[1].strip())
    assert done["abstained"] is True


# --- validation ----------------------------------------------------------------------------------

INVALID_FILTERS: list[tuple[str, Any, str]] = [
    ("not an object", "corpus/", "filter"),
    ("a list", [{"doc_ids": ["a"]}], "filter"),
    ("unknown key", {"doc_id": ["a"]}, "filter.doc_id"),
    ("empty doc_ids", {"doc_ids": []}, "filter.doc_ids"),
    ("doc_ids a string", {"doc_ids": "a"}, "filter.doc_ids"),
    ("doc_ids of numbers", {"doc_ids": [1]}, "filter.doc_ids"),
    ("too many doc_ids", {"doc_ids": [str(n) for n in range(1001)]}, "filter.doc_ids"),
    ("empty source_prefix", {"source_prefix": ""}, "filter.source_prefix"),
    ("source_prefix a number", {"source_prefix": 3}, "filter.source_prefix"),
    ("source_prefix a list", {"source_prefix": ["a"]}, "filter.source_prefix"),
    ("metadata a list", {"metadata": ["lang"]}, "filter.metadata"),
    ("empty metadata", {"metadata": {}}, "filter.metadata"),
    ("empty list of values", {"metadata": {"lang": []}}, "'lang'"),
    ("an object value", {"metadata": {"lang": {"eq": "en"}}}, "'lang'"),
    ("a nested list", {"metadata": {"tags": ["a", ["b"]]}}, "'tags'"),
    ("an object in a list", {"metadata": {"tags": [{"a": 1}]}}, "'tags'"),
]


@pytest.mark.parametrize("path", ["/v1/ask", "/v1/search"])
@pytest.mark.parametrize(("case", "value", "field"), INVALID_FILTERS, ids=[c[0] for c in INVALID_FILTERS])
def test_invalid_filters_are_422_naming_the_field(
    bare: TestClient, path: str, case: str, value: Any, field: str
) -> None:
    body = {"question" if path == "/v1/ask" else "query": ARMENIA, "filter": value}
    response = bare.post(path, json=body)
    assert response.status_code == 422, response.text
    message = response.json()["error"]
    assert field in message, message
    if field.startswith("'"):
        assert "filter.metadata" in message, message


def test_the_filter_is_documented_in_the_openapi_schema(bare: TestClient) -> None:
    schema = bare.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    described = components["SearchFilter"]
    assert described["additionalProperties"] is False and described["description"]
    for name in ("doc_ids", "source_prefix", "metadata"):
        assert described["properties"][name]["description"], name
    for request in ("AskRequest", "SearchRequest"):
        assert "SearchFilter" in json.dumps(components[request]["properties"]["filter"])
    listing = schema["paths"]["/v1/documents"]["get"]
    assert {p["name"] for p in listing["parameters"]} == {"offset", "limit"}
    assert {"total", "offset", "limit", "documents"} <= set(components["DocumentList"]["properties"])


# --- the document list, a page at a time ----------------------------------------------------------


def test_documents_are_listed_a_page_at_a_time(app: TestClient) -> None:
    whole = app.get("/v1/documents").json()
    total = 3 + len(NOTES)
    assert (whole["total"], whole["offset"], whole["limit"]) == (total, 0, 100)
    assert len(whole["documents"]) == total
    pages = []
    for offset in range(0, total, 3):
        page = app.get("/v1/documents", params={"offset": offset, "limit": 3}).json()
        assert (page["total"], page["offset"], page["limit"]) == (total, offset, 3)
        assert len(page["documents"]) == min(3, total - offset)
        pages += page["documents"]
    assert pages == whole["documents"], "pages in the store's order, each document once"
    assert app.get("/v1/documents", params={"limit": 1}).json()["documents"] == whole["documents"][:1]
    assert (
        app.get("/v1/documents", params={"offset": total - 1}).json()["documents"] == whole["documents"][-1:]
    )
    for beyond in (total, total + 50, 10**9):
        page = app.get("/v1/documents", params={"offset": beyond, "limit": 1000}).json()
        assert page == {"documents": [], "total": total, "offset": beyond, "limit": 1000}


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"offset": -1}, "offset"),
        ({"offset": "x"}, "offset"),
        ({"offset": 1.5}, "offset"),
        ({"limit": 0}, "limit"),
        ({"limit": 1001}, "limit"),
        ({"limit": "all"}, "limit"),
    ],
)
def test_bad_pages_are_422_naming_the_parameter(app: TestClient, params: dict[str, Any], field: str) -> None:
    response = app.get("/v1/documents", params=params)
    assert response.status_code == 422, response.text
    assert f"query.{field}" in response.json()["error"]
