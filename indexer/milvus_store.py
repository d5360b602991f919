"""A store version in Milvus (a server, or an embedded milvus-lite file): `parse_location` reads a
store setting, `publish_version` writes a version and makes it live by switching an alias,
`MilvusStoreReader` reads the version the alias pointed at when it was opened (indexer.reader's
`StoreReader`), and `drop_unaliased` removes versions no alias points at.

One version is four collections, `<alias>_<version_id>_<kind>`:

    chunks      chunk_id (INT64, primary), vector (FLOAT_VECTOR, HNSW, IP: the vectors are
                normalised), text (what BM25 indexes: the chunk's BM25 text, i.e. any embedded title
                prefix and then the chunk's text; analyzer = standard tokenizer, lowercase, the
                manifest's stopwords), sparse (SPARSE_FLOAT_VECTOR from a BM25 Function on text,
                SPARSE_INVERTED_INDEX, metric BM25), text_start (where the chunk's own text starts in
                text), doc_id, start, end, sentences (JSON {"spans": [[start, end], ...]}: Milvus 2.3
                takes only objects), hash, source and facets (JSON: the document's metadata as typed
                keys, for filters; see `_facets`), and sentence_row, document_row, document_parts:
                the primary keys of its sentence vectors and its document's parts, so that a read
                of either is a lookup by key (a filter on chunk_id or doc_id scans the column)
    sentences   row (INT64, primary: the sentence's row in the version), chunk_id, position (its
                index among the chunk's sentences), vector (FLOAT_VECTOR, FLAT)
    documents   row (INT64, primary: rows in document order, a document's text parts consecutive),
                position (the document's place in the order written), part, doc_id (every part),
                title, source, metadata (JSON), sha256, chunks (how many it has) on part 0, and text:
                the document's text cut into parts of at most PART_BYTES UTF-8 bytes (a VARCHAR holds
                65,535 bytes), joined on read
    meta        key (VARCHAR, primary: "<name>/<part>"), name, part, value: JSON blobs cut into parts
                like the texts: "manifest" (the `Manifest`) and "words" (the answer step's word
                counts, indexer.text)

The documents and meta collections hold one 2-value zero vector (`pad`) each, because a Milvus
collection must have a vector field.

Publishing (`publish_version`): create the collections, insert in batches, flush, index, load, check
every count with consistency_level="Strong", then `create_alias`/`alter_alias` the alias onto the
chunks collection: one atomic switch; a reader finds the other collections by name from the alias's
target. pymilvus is imported inside the functions that need it, so that importing this module does not
require it.

Where this differs from the local store (indexer.reader.LocalStoreReader):

- BM25 scores are Milvus's (its own idf and length normalisation; milvus-lite keeps statistics per
  segment), not bm25s's: rankings agree on distinctive terms, scores do not. The analyzer keeps
  one-character tokens, which bm25s drops. milvus-lite returns BM25 hits with a negative distance (a
  real server: positive); scores here are the absolute value.
- `dense` is approximate (HNSW with ef = max(k, 64)) where the local store searches exactly below
  `indexer.dense.EXACT_BELOW` chunks; k is capped at Milvus's top-k limit (MAX_TOP_K).
- Metadata filters use `facets` (typed keys with json_contains_any) rather than
  `metadata["field"] in [...]`: milvus-lite has no `in` on a JSON path, and its `==` on JSON finds
  `true` equal to `1`, where ChunkFilter follows JSON's equality.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field, replace
from functools import partial
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from indexer import store as st
from indexer.filters import ChunkFilter, value_key
from indexer.text import WORDS_SPEC, WordFrequencies, word_frequencies

if TYPE_CHECKING:
    from cachetools import LRUCache

log = logging.getLogger("ragqa.indexer")

TOKEN_VARIABLE = "RAGQA_MILVUS_TOKEN"
DEFAULT_ALIAS = "ragqa"
DEFAULT_PORT = 19530
KINDS = ("chunks", "sentences", "documents", "meta")
PART_BYTES = 60_000  # under VARCHAR's 65,535 bytes
VARCHAR_MAX = 65_535
BATCH_ROWS = 512  # rows an insert sends at once
PAGE_ROWS = 1_000  # rows a query returns at once when paging
ID_PAGE_ROWS = 16_384  # ... when it returns only chunk ids
MAX_TOP_K = 16_384  # Milvus's limit on a search's k
PAD_DIMENSION = 2
# What a reader keeps of what it read (a version is immutable, so nothing goes stale): a request reads
# the same documents, chunks and sentence vectors several times, and each read is a round trip.
DOCUMENT_CACHE_BYTES = 64 * 2**20  # documents' texts (UTF-8 bytes counted as characters)
CHUNK_CACHE = 65_536  # chunk records and texts
SENTENCE_CACHE = 8_192  # chunks' sentence vectors (~5 KiB each at 384 dimensions)
INDEX_TIMEOUT = 600.0  # seconds a publish waits for an index to be built (and for any one call)
CALL_TIMEOUT = 10.0  # seconds a read (or connecting) may take before the store counts as unavailable
LOAD_TIMEOUT = 300.0  # seconds opening a version may wait for its collections to load
DENSE_INDEX = "milvus HNSW (M=16, efConstruction=200), metric IP"
LEXICAL_INDEX = "milvus BM25 function, SPARSE_INVERTED_INDEX"
Insert = Callable[[str, Iterable[dict[str, Any]]], None]  # writes rows into the named collection
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_VERSION = re.compile(r"[A-Za-z0-9]+\Z")  # no _: the collection names of one alias stay apart from another's


# --- where the store is ------------------------------------------------------------------------


@dataclass(frozen=True)
class MilvusLocation:
    """A Milvus store: an embedded milvus-lite file (`path`) or a server (`uri`), and the alias that
    names its live version. The token (a server's credentials) comes from RAGQA_MILVUS_TOKEN, never
    from the store setting, and is not shown by repr."""

    alias: str
    path: str | None = None  # milvus-lite: the .db file
    uri: str | None = None  # a server: http://host:port or https://host:port
    token: str = field(default="", repr=False)
    timeout: float = CALL_TIMEOUT  # seconds a reader's call (and a connection) may take

    @property
    def is_lite(self) -> bool:
        return self.path is not None

    def client(self) -> Any:
        """A new `pymilvus.MilvusClient` connected to the store."""
        from pymilvus import MilvusClient

        # pymilvus logs every failed call with its traceback (on stderr, its own handler) before raising;
        # ragqa raises it as StoreUnavailableError with the message, and the service logs that once.
        logging.getLogger("pymilvus").setLevel(logging.CRITICAL)

        if self.path is not None:
            return MilvusClient(uri=self.path, timeout=self.timeout)
        return MilvusClient(uri=self.uri, token=self.token, timeout=self.timeout)

    def collection(self, version_id: str, kind: str) -> str:
        return f"{self.alias}_{version_id}_{kind}"

    def guarded_client(self, timeout: float | None = None) -> GuardedClient:
        """A new client whose calls have a deadline of `timeout` seconds (default: the location's; see
        `GuardedClient`); StoreUnavailableError when it cannot connect within the location's timeout."""
        from pymilvus.exceptions import MilvusException

        where = str(self.path or self.uri)
        try:
            return GuardedClient(self.client(), where, timeout or self.timeout)
        except MilvusException as exc:
            hint = ""
            if self.path is not None:
                hint = (
                    " (one process at a time can open a milvus-lite file: to index while serving, run "
                    "`milvus-lite server` and use milvus://; docs/scale-out.md)"
                )
            raise st.StoreUnavailableError(
                f"cannot open the Milvus store at {where}: {exc.message}{hint}"
            ) from exc


class GuardedClient:
    """A MilvusClient whose every call to the engine has a deadline (`timeout` unless the call gives
    one) and whose failures (the engine down, unreachable, too slow, or refusing) are
    StoreUnavailableError: nothing hangs on a dead server, and the service answers 503 rather than 500."""

    LOCAL_CALLS = frozenset({"create_schema", "prepare_index_params"})  # build objects; no engine call

    def __init__(self, client: Any, where: str, timeout: float) -> None:
        import grpc
        from pymilvus.exceptions import MilvusException

        self.client = client
        self.where = where
        self.timeout = timeout
        self._grpc = grpc
        self._milvus_error = MilvusException

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.client, name)
        if name in self.LOCAL_CALLS:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            kwargs.setdefault("timeout", self.timeout)
            try:
                return method(*args, **kwargs)
            except self._milvus_error as exc:
                message = exc.message
            except self._grpc.RpcError as exc:  # a deadline passed: pymilvus raises gRPC's own error
                code, details = getattr(exc, "code", None), getattr(exc, "details", None)
                message = f"{code().name if code else 'gRPC error'}: {details() if details else exc}"
                if code and code() == self._grpc.StatusCode.DEADLINE_EXCEEDED:
                    message = f"no answer within {kwargs['timeout']:g} s ({message})"
            raise st.StoreUnavailableError(f"the Milvus store at {self.where} failed: {message}")

        return call

    def close(self) -> None:
        self.client.close()


def parse_location(value: str) -> MilvusLocation | None:
    """The Milvus store a setting names, or None for a plain path (the local store):

    - `milvus-lite:///abs/path/file.db` (optionally `?alias=name`): an embedded milvus-lite file;
    - `milvus://host[:port][/alias]`, `milvus+tls://host[:port][/alias]`: a server (TLS with +tls);
    - `?timeout=SECONDS` on any of them: how long a read (or connecting) may take before the store
      counts as unavailable (default CALL_TIMEOUT).

    The alias defaults to "ragqa". ValueError for a malformed setting, and for credentials in the URL
    (`user:password@`): the token is read from RAGQA_MILVUS_TOKEN only."""
    if "://" not in value:
        return None
    parts = urlsplit(value)
    scheme = parts.scheme.lower()
    if scheme not in ("milvus-lite", "milvus", "milvus+tls"):
        raise ValueError(
            f"unknown store scheme {parts.scheme!r} in {value!r}: milvus-lite, milvus, milvus+tls"
        )
    if "@" in parts.netloc:
        raise ValueError(
            f"the Milvus store setting holds credentials (user:password@); give the token in {TOKEN_VARIABLE}"
        )
    if parts.fragment:
        raise ValueError(f"a fragment in the Milvus store setting {value!r}")
    query = parse_qs(parts.query, keep_blank_values=True)
    options = {"timeout"} | ({"alias"} if scheme == "milvus-lite" else set())
    unknown = set(query) - options
    if unknown:
        raise ValueError(
            f"unknown options {sorted(unknown)} in {value!r} (it takes {', '.join(sorted(options))})"
        )
    timeout = CALL_TIMEOUT
    if "timeout" in query:
        try:
            timeout = float(query["timeout"][-1])
        except ValueError:
            timeout = math.nan
        if not 0 < timeout <= INDEX_TIMEOUT:
            raise ValueError(
                f"timeout= takes seconds, more than 0 and at most {INDEX_TIMEOUT:g}, in {value!r}"
            )
    if scheme == "milvus-lite":
        if parts.netloc:
            raise ValueError(f"milvus-lite takes an absolute path, milvus-lite:///abs/file.db, not {value!r}")
        path = parts.path
        if not path.startswith("/") or not path.endswith(".db"):
            raise ValueError(f"milvus-lite needs an absolute path to a .db file, not {path!r}")
        alias = query["alias"][-1] if "alias" in query else DEFAULT_ALIAS
        return MilvusLocation(_alias(alias), path=path, timeout=timeout)
    if not parts.hostname:
        raise ValueError(f"no host in the Milvus store setting {value!r}")
    try:
        port = parts.port or DEFAULT_PORT
    except ValueError as exc:
        raise ValueError(f"a bad port in {value!r}") from exc
    alias = parts.path.strip("/") or DEFAULT_ALIAS
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    protocol = "https" if scheme == "milvus+tls" else "http"
    return MilvusLocation(
        _alias(alias),
        uri=f"{protocol}://{host}:{port}",
        token=os.environ.get(TOKEN_VARIABLE, ""),
        timeout=timeout,
    )


def live_version(location: MilvusLocation, client: GuardedClient) -> str | None:
    """The version the location's alias names (None when the alias does not exist yet);
    StoreUnavailableError when the engine does not answer, StoreError when the alias names a
    collection that is not a ragqa version of this alias."""
    if location.alias not in client.list_aliases().get("aliases", []):
        return None
    target = str(client.describe_alias(location.alias)["collection_name"])
    prefix, suffix = location.alias + "_", "_chunks"
    version_id = target[len(prefix) : -len(suffix)]
    if not (target.startswith(prefix) and target.endswith(suffix) and _VERSION.match(version_id)):
        raise st.StoreError(f"the alias {location.alias!r} names {target!r}, not a ragqa chunks collection")
    return version_id


def _alias(alias: str) -> str:
    if not _NAME.match(alias):
        raise ValueError(
            f"a Milvus alias is letters, digits and _, starting with a letter or _; not {alias!r}"
        )
    return alias


# --- writing a version ---------------------------------------------------------------------------


def publish_version(
    location: MilvusLocation, data: st.VersionData, version_id: str, insert: Insert | None = None
) -> str:
    """Write `data` as version `version_id` (its collections, loaded and checked) and make it live by
    pointing the location's alias at its chunks collection. Returns the chunks collection's name.
    `insert(collection, rows)` writes rows into a collection (default: this process, in batches; Ray:
    indexer.distributed's datasink, from the cluster's workers).
    StoreError when the data is inconsistent or the written counts do not match; ValueError for a
    version id Milvus cannot name. The caller is the one writer (as the local store's writer lock)."""
    if not _VERSION.match(version_id):
        raise ValueError(f"a version id of letters and digits only, not {version_id!r}")
    st.check_consistent(data)  # what the local writer refuses, refused here too
    client = location.guarded_client(INDEX_TIMEOUT)
    names = {kind: location.collection(version_id, kind) for kind in KINDS}
    try:
        lexical = LEXICAL_INDEX if has_bm25(client) else f"none: {NO_BM25}"
        index = replace(data.manifest.index, dense=DENSE_INDEX, bm25=lexical)
        manifest = replace(data.manifest, version=version_id, index=index)
        data = replace(data, manifest=manifest)
        for name in names.values():
            if client.has_collection(name):
                raise st.StoreError(f"version {version_id} already exists in Milvus ({name})")
        try:
            _write_version(client, names, data, insert or partial(insert_rows, client))
        except BaseException:
            for name in names.values():  # nothing of a version that was not published stays behind
                if client.has_collection(name):
                    client.drop_collection(name)
            raise
        aliases = client.list_aliases().get("aliases", [])
        if location.alias in aliases:
            client.alter_alias(names["chunks"], location.alias)
        else:
            client.create_alias(names["chunks"], location.alias)
        return names["chunks"]
    finally:
        client.close()


NO_BM25 = "this Milvus server has no BM25 function (it came in Milvus 2.5): lexical retrieval is off"


def has_bm25(client: GuardedClient) -> bool:
    """Whether the engine has the BM25 function and sparse vectors: milvus-lite, or Milvus 2.5 or later
    (Milvus 2.3 has neither; an unknown version string counts as having them)."""
    version = str(client.get_server_version())
    found = re.match(r"v?(\d+)\.(\d+)", version)
    if version.startswith("milvus_lite") or found is None:
        return True
    return (int(found.group(1)), int(found.group(2))) >= (2, 5)


def _write_version(client: Any, names: dict[str, str], data: st.VersionData, insert: Insert) -> None:
    """Create, fill, index and load the version's collections, and check their counts."""
    texts = _chunk_texts(data)
    words = word_frequencies(own for _, own in texts)
    # each document's first row and number of parts in the documents collection, as written there
    located: dict[str, tuple[int, int]] = {}
    rows = 0
    for d in data.documents:
        located[d.doc_id] = (rows, len(_parts(d.text)))
        rows += located[d.doc_id][1]
    _write_chunks(client, names["chunks"], insert, data, texts, located)
    _write_sentences(client, names["sentences"], insert, data)
    _write_documents(client, names["documents"], insert, data)
    _write_meta(client, names["meta"], insert, data.manifest, words)
    expected = {"chunks": len(data.chunks), "sentences": len(data.sentence_vectors), "documents": rows}
    for kind, name in names.items():
        client.load_collection(name)
        count = _count(client, name)
        if kind in expected and count != expected[kind]:
            raise st.StoreError(f"{name} holds {count} rows after writing, expected {expected[kind]}")


def _chunk_texts(data: st.VersionData) -> list[tuple[str, str]]:
    """Each chunk's (BM25 text, own text): the BM25 text ends with the chunk's text (after any prefix)."""
    by_id = {d.doc_id: d.text for d in data.documents}
    own = [by_id[c.doc_id][c.start : c.end] for c in data.chunks]
    if len(data.bm25_texts) != len(data.chunks):
        return [(t, t) for t in own]
    for chunk, text, mine in zip(data.chunks, data.bm25_texts, own, strict=True):
        if not text.endswith(mine):
            raise st.StoreError(f"the BM25 text of chunk {chunk.chunk_id} does not end with the chunk's text")
    return list(zip(data.bm25_texts, own, strict=True))


def _schema(client: Any) -> Any:
    return client.create_schema(auto_id=False, enable_dynamic_field=False)


def _varchar(schema: Any, name: str, max_length: int = VARCHAR_MAX, **kwargs: Any) -> None:
    from pymilvus import DataType

    schema.add_field(name, DataType.VARCHAR, max_length=max_length, **kwargs)


def _int(schema: Any, name: str, **kwargs: Any) -> None:
    from pymilvus import DataType

    schema.add_field(name, DataType.INT64, **kwargs)


def _json(schema: Any, name: str) -> None:
    from pymilvus import DataType

    schema.add_field(name, DataType.JSON)


def _pad(client: Any, schema: Any) -> Any:
    """The zero vector a collection without vectors must still have, and its (flat) index."""
    from pymilvus import DataType

    schema.add_field("pad", DataType.FLOAT_VECTOR, dim=PAD_DIMENSION)
    index = client.prepare_index_params()
    index.add_index("pad", index_type="FLAT", metric_type="IP")
    return index


def _analyzer(spec: st.LexicalTokenizerSpec) -> dict[str, Any]:
    """Milvus's analyzer closest to the manifest's bm25s tokenizer."""
    if spec.library != "bm25s":
        raise st.StoreError(f"unknown lexical index library {spec.library!r}; this ragqa reads bm25s")
    filters: list[Any] = ["lowercase"] if spec.lower else []
    if spec.stopwords:
        from bm25s.tokenization import Tokenizer

        stopwords = sorted(Tokenizer(stopwords=spec.stopwords, lower=spec.lower).stopwords)
        filters.append({"type": "stop", "stop_words": stopwords})
    return {"tokenizer": "standard", "filter": filters}


def _fill(client: Any, name: str, insert: Insert, rows: Iterable[dict[str, Any]], index: Any) -> None:
    """Insert the rows (by `insert`), flush, and build the collection's indexes."""
    insert(name, rows)
    client.flush(name)
    _create_index(client, name, index)


def insert_rows(client: Any, name: str, rows: Iterable[dict[str, Any]]) -> None:
    """Insert the rows into the collection `name`, BATCH_ROWS at a time."""
    batch: list[dict[str, Any]] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= BATCH_ROWS:
            client.insert(name, batch)
            batch = []
    if batch:
        client.insert(name, batch)


def _write_chunks(
    client: Any,
    name: str,
    insert: Insert,
    data: st.VersionData,
    texts: list[tuple[str, str]],
    located: dict[str, tuple[int, int]],
) -> None:
    from pymilvus import DataType, Function, FunctionType

    schema = _schema(client)
    _int(schema, "chunk_id", is_primary=True)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=data.manifest.model.dimension)
    bm25 = data.manifest.index.bm25 == LEXICAL_INDEX
    if bm25:
        analyzer = _analyzer(data.manifest.index.lexical_tokenizer)
        _varchar(schema, "text", enable_analyzer=True, analyzer_params=analyzer)
        schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    else:
        _varchar(schema, "text")
    _int(schema, "text_start")
    # where the chunk's sentence vectors and its document's rows are: read by primary key, not a scan
    _int(schema, "sentence_row")
    _int(schema, "document_row")
    _int(schema, "document_parts")
    _varchar(schema, "doc_id")
    _int(schema, "start")
    _int(schema, "end")
    _json(schema, "sentences")
    _varchar(schema, "hash", 128)
    _varchar(schema, "source")
    _json(schema, "facets")
    index = client.prepare_index_params()
    index.add_index("vector", index_type="HNSW", metric_type="IP", params={"M": 16, "efConstruction": 200})
    if bm25:
        function = Function(
            name="bm25",
            function_type=FunctionType.BM25,
            input_field_names=["text"],
            output_field_names=["sparse"],
        )
        schema.add_function(function)
        index.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25")
    client.create_collection(name, schema=schema)
    documents = {d.doc_id: d for d in data.documents}
    facets = {d.doc_id: _facets(d.metadata) for d in data.documents}
    vectors = np.ascontiguousarray(data.vectors, dtype=np.float32)

    def rows() -> Iterator[dict[str, Any]]:
        sentence_row = 0
        for chunk, (text, own) in zip(data.chunks, texts, strict=True):
            if len(text.encode("utf-8")) > VARCHAR_MAX:
                raise st.StoreError(f"chunk {chunk.chunk_id}'s text is over {VARCHAR_MAX} bytes")
            yield {
                "chunk_id": chunk.chunk_id,
                "vector": vectors[chunk.chunk_id].tolist(),
                "text": text,
                "text_start": len(text) - len(own),
                "sentence_row": sentence_row,  # as _write_sentences numbers them
                "document_row": located[chunk.doc_id][0],
                "document_parts": located[chunk.doc_id][1],
                "doc_id": chunk.doc_id,
                "start": chunk.start,
                "end": chunk.end,
                "sentences": {"spans": [list(s) for s in chunk.sentences]},  # Milvus 2.3: objects only
                "hash": chunk.hash,
                "source": documents[chunk.doc_id].source,
                "facets": facets[chunk.doc_id],
            }
            sentence_row += len(chunk.sentences)

    _fill(client, name, insert, rows(), index)


def _write_sentences(client: Any, name: str, insert: Insert, data: st.VersionData) -> None:
    from pymilvus import DataType

    schema = _schema(client)
    _int(schema, "row", is_primary=True)
    _int(schema, "chunk_id")
    _int(schema, "position")
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=data.manifest.model.dimension)
    index = client.prepare_index_params()
    index.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection(name, schema=schema)
    # As stored by the local store (float16 now), served as float32: the same values either way.
    stored = np.asarray(data.sentence_vectors, dtype=data.manifest.sentence_vectors_dtype).astype(np.float32)

    def rows() -> Iterator[dict[str, Any]]:
        row = 0
        for chunk in data.chunks:
            for position in range(len(chunk.sentences)):
                yield {
                    "row": row,
                    "chunk_id": chunk.chunk_id,
                    "position": position,
                    "vector": stored[row].tolist(),
                }
                row += 1

    _fill(client, name, insert, rows(), index)


def _write_documents(client: Any, name: str, insert: Insert, data: st.VersionData) -> None:
    schema = _schema(client)
    _int(schema, "row", is_primary=True)
    _int(schema, "position")
    _int(schema, "part")
    _varchar(schema, "doc_id")
    _varchar(schema, "title")
    _varchar(schema, "source")
    _json(schema, "metadata")
    _varchar(schema, "sha256", 128)
    _int(schema, "chunks")
    _varchar(schema, "text")
    index = _pad(client, schema)
    client.create_collection(name, schema=schema)
    counts: dict[str, int] = {}
    for chunk in data.chunks:
        counts[chunk.doc_id] = counts.get(chunk.doc_id, 0) + 1

    def rows() -> Iterator[dict[str, Any]]:
        row = 0
        for position, d in enumerate(data.documents):
            for part, text in enumerate(_parts(d.text)):
                first = part == 0
                for value in (d.title, d.source, d.doc_id):
                    if len(value.encode("utf-8")) > VARCHAR_MAX:
                        raise st.StoreError(
                            f"document {d.doc_id[:80]!r} has a field over {VARCHAR_MAX} bytes"
                        )
                yield {
                    "row": row,
                    "position": position,
                    "part": part,
                    "doc_id": d.doc_id,
                    "title": d.title if first else "",
                    "source": d.source if first else "",
                    "metadata": d.metadata if first else {},
                    "sha256": d.sha256 if first else "",
                    "chunks": counts.get(d.doc_id, 0) if first else 0,
                    "text": text,
                    "pad": [0.0] * PAD_DIMENSION,
                }
                row += 1

    _fill(client, name, insert, rows(), index)


def _write_meta(
    client: Any, name: str, insert: Insert, manifest: st.Manifest, words: WordFrequencies
) -> None:
    schema = _schema(client)
    _varchar(schema, "key", 256, is_primary=True)
    _varchar(schema, "name", 128)
    _int(schema, "part")
    _varchar(schema, "value")
    index = _pad(client, schema)
    client.create_collection(name, schema=schema)
    blobs = {
        "manifest": manifest.to_json(),
        "words": {"words": WORDS_SPEC, "texts": words.texts, "df": words.counts},
    }
    rows = [
        {"key": f"{blob}/{part}", "name": blob, "part": part, "value": text, "pad": [0.0] * PAD_DIMENSION}
        for blob, value in blobs.items()
        for part, text in enumerate(_parts(json.dumps(value, ensure_ascii=False)))
    ]
    _fill(client, name, insert, rows, index)


def _parts(text: str) -> list[str]:
    """`text` cut into pieces of at most PART_BYTES UTF-8 bytes, never inside a character; one
    (empty) piece for an empty text."""
    raw = text.encode("utf-8")
    if len(raw) <= PART_BYTES:
        return [text]
    parts = []
    at = 0
    while at < len(raw):
        stop = min(at + PART_BYTES, len(raw))
        while stop < len(raw) and (raw[stop] & 0xC0) == 0x80:  # a continuation byte: back off
            stop -= 1
        parts.append(raw[at:stop].decode("utf-8"))
        at = stop
    return parts


def _facets(metadata: dict[str, Any]) -> dict[str, list[str]]:
    """A document's metadata as filters read it: each field → the typed keys of its scalar values (a
    list's scalar elements), so that one json_contains_any finds JSON-equal values: "s:text",
    "n:<number>" (1 and 1.0 alike), "b:true", "null". A field holding an object has no keys."""
    facets: dict[str, list[str]] = {}
    for name, value in metadata.items():
        values = value if isinstance(value, list) else [value]
        keys = sorted({k for v in values if (k := _facet(v)) is not None})
        if keys:
            facets[name] = keys
    return facets


def _facet(value: Any) -> str | None:
    key = value_key(value)
    if key is None:
        return None
    kind, scalar = key
    if kind == "null":
        return "null"
    if kind == "bool":
        return "b:true" if scalar else "b:false"
    if kind == "number":
        if isinstance(scalar, float):
            if math.isfinite(scalar) and scalar.is_integer():
                return f"n:{int(scalar)}"
            return f"n:{scalar!r}"
        return f"n:{scalar}"
    return f"s:{scalar}"


def _create_index(client: Any, name: str, index: Any) -> None:
    """Create the collection's indexes and wait until they are built (polled here: pymilvus's own wait
    sleeps half a second before its first look)."""
    client.create_index(name, index, sync=False)
    deadline = time.monotonic() + INDEX_TIMEOUT
    pause = 0.01
    for index_name in client.list_indexes(name):
        while True:
            described = client.describe_index(name, index_name)
            state = str(described.get("state", ""))
            if state == "Finished":
                break
            if state == "Failed":
                raise st.StoreError(f"building index {index_name} of {name} failed: {described}")
            if time.monotonic() > deadline:
                raise st.StoreError(f"index {index_name} of {name} not built after {INDEX_TIMEOUT} s")
            time.sleep(pause)
            pause = min(pause * 2, 1.0)


def _count(client: Any, name: str) -> int:
    result = client.query(name, filter="", output_fields=["count(*)"], consistency_level="Strong")
    return int(result[0]["count(*)"])


# --- dropping versions ---------------------------------------------------------------------------


def drop_unaliased(location: MilvusLocation, keep: Iterable[str] = ()) -> list[str]:
    """Drop every version of the location's alias prefix that no alias points at and that is not in
    `keep` (checked here: milvus-lite would drop an aliased collection, and its alias with it). Returns
    the dropped version ids, sorted. A reader of a dropped version fails from then on. Only for the one
    writer: a version being published at the same moment (not yet aliased) would be dropped too."""
    client = location.guarded_client(INDEX_TIMEOUT)
    try:
        aliased: set[str] = set()
        for alias in client.list_aliases().get("aliases", []):
            aliased.add(client.describe_alias(alias)["collection_name"])
        versions: dict[str, list[str]] = {}
        prefix = location.alias + "_"
        for name in client.list_collections():
            if not name.startswith(prefix):
                continue
            version_id, _, kind = name[len(prefix) :].rpartition("_")
            if kind in KINDS and _VERSION.match(version_id):
                versions.setdefault(version_id, []).append(name)
        live = {
            version_id
            for version_id, names in versions.items()
            if any(name in aliased for name in names) or location.collection(version_id, "chunks") in aliased
        }
        dropped = sorted(set(versions) - live - set(keep))
        for version_id in dropped:
            for name in versions[version_id]:
                if name in aliased:  # checked again: never drop what an alias names
                    continue
                client.drop_collection(name)
        return dropped
    finally:
        client.close()


# --- reading a version ---------------------------------------------------------------------------


def open_milvus_reader(
    location: MilvusLocation, model_name: str | None = None, version_id: str | None = None
) -> MilvusStoreReader:
    """See `MilvusStoreReader.open`."""
    return MilvusStoreReader.open(location, model_name, version_id)


class MilvusStoreReader:
    """The version the alias pointed at when opened (indexer.reader.StoreReader): it keeps the concrete
    collections' names, so a later alias switch does not change what it reads; its collections
    dropped, its calls fail. Every call has a deadline; the engine failing is StoreUnavailableError."""

    def __init__(
        self,
        location: MilvusLocation,
        client: GuardedClient,
        version_id: str,
        manifest: st.Manifest,
        words: WordFrequencies | None,
        document_rows: int,
    ) -> None:
        self._location = location
        self._client = client
        self._version_id = version_id
        self._manifest = manifest
        self._words = words
        self._names = {kind: location.collection(version_id, kind) for kind in KINDS}
        self._dimension = manifest.model.dimension
        self._chunk_count = manifest.counts.chunks
        self._document_count = manifest.counts.documents
        self._document_rows = document_rows  # the documents collection's rows (parts of texts)
        self._has_bm25 = manifest.index.bm25 == LEXICAL_INDEX  # else written to a server without BM25
        from cachetools import LRUCache

        self._cache_lock = threading.Lock()  # cachetools' caches are not thread-safe
        self._documents: LRUCache[str, st.DocumentRecord | None] = LRUCache(
            DOCUMENT_CACHE_BYTES, getsizeof=lambda d: 1 + (len(d.text) if d is not None else 0)
        )
        self._chunks: LRUCache[tuple[int, str], Any] = LRUCache(CHUNK_CACHE)
        self._document_at: LRUCache[str, tuple[int, int]] = LRUCache(CHUNK_CACHE)  # doc_id: (row, parts)
        self._sentences: LRUCache[int, np.ndarray] = LRUCache(SENTENCE_CACHE)

    @classmethod
    def open(
        cls, location: MilvusLocation, model_name: str | None = None, version_id: str | None = None
    ) -> MilvusStoreReader:
        """The live version (or `version_id`): NoVersionError when the alias names none,
        ModelMismatchError for another model than `model_name`, StoreError when its collections are
        missing or their counts differ, StoreUnavailableError when the engine does not answer."""
        client = location.guarded_client()
        try:
            return cls._open(location, client, model_name, version_id)
        except BaseException:
            client.close()
            raise

    @classmethod
    def _open(
        cls, location: MilvusLocation, client: GuardedClient, model_name: str | None, version_id: str | None
    ) -> MilvusStoreReader:
        if version_id is None:
            version_id = live_version(location, client)
            if version_id is None:
                raise st.NoVersionError(
                    f"no published version: the Milvus alias {location.alias!r} names none"
                )
        names = {kind: location.collection(version_id, kind) for kind in KINDS}
        for name in names.values():
            if not client.has_collection(name):
                raise st.version_damaged(_where(location), version_id, f"its collection {name} is missing")
            client.load_collection(name, timeout=LOAD_TIMEOUT)
        manifest = st.Manifest.from_json(
            json.loads(_blob(client, names["meta"], "manifest")), f"the manifest of {version_id}"
        )
        if model_name is not None and manifest.model.name != model_name:
            raise st.ModelMismatchError(
                f"the Milvus version {version_id} was built with {manifest.model.name!r}, "
                f"not {model_name!r}; index the corpus again with this model"
            )
        counts = manifest.counts
        found = (_count(client, names["chunks"]), _count(client, names["sentences"]))
        if found != (counts.chunks, counts.sentences):
            raise st.version_damaged(
                _where(location),
                version_id,
                f"it holds {found[0]} chunks and {found[1]} sentences, its manifest says {counts.chunks} and "
                f"{counts.sentences}",
            )
        documents = client.query(
            names["documents"], filter="part == 0", output_fields=["count(*)"], consistency_level="Strong"
        )
        if int(documents[0]["count(*)"]) != counts.documents:
            raise st.version_damaged(_where(location), version_id, "its documents do not match its manifest")
        rows = _count(client, names["documents"])
        if manifest.index.bm25 != LEXICAL_INDEX:
            log.warning("milvus.no_bm25", extra={"version": version_id, "index": manifest.index.bm25})
        raw = json.loads(_blob(client, names["meta"], "words"))
        words = None
        if raw.get("words") == WORDS_SPEC:
            words = WordFrequencies(int(raw["texts"]), {str(k): int(v) for k, v in raw["df"].items()})
        return cls(location, client, version_id, manifest, words, rows)

    def close(self) -> None:
        self._client.close()

    # --- records --------------------------------------------------------------------------------

    @property
    def version_id(self) -> str:
        return self._version_id

    @property
    def manifest(self) -> st.Manifest:
        return self._manifest

    @property
    def document_count(self) -> int:
        return self._document_count

    @property
    def chunk_count(self) -> int:
        return self._chunk_count

    def _range(
        self,
        kind: str,
        key: str,
        low: int,
        high: int,
        fields: list[str],
        expression: str = "",
        ids_only: bool = False,
    ) -> Iterator[list[dict[str, Any]]]:
        """The rows whose integer `key` (dense: one row per value) is in low..high-1 and that match
        `expression`, a window of `page` values per query, each window's rows in key order. (Query
        iterators need AllocTimestamp, which milvus-lite lacks.)"""
        condition = f" and ({expression})" if expression else ""
        page = ID_PAGE_ROWS if ids_only else PAGE_ROWS
        for at in range(low, high, page):
            stop = min(at + page, high)
            rows = self._client.query(
                self._names[kind],
                filter=f"{key} >= {at} and {key} < {stop}{condition}",
                output_fields=fields,
                limit=stop - at,
            )
            yield sorted(rows, key=lambda r: int(r[key]))

    def find_document(self, doc_id: str) -> st.DocumentRecord | None:
        return self._cached(self._documents, doc_id, self._find_document)

    def _cached(self, cache: LRUCache[Any, Any], key: Any, read: Callable[[Any], Any]) -> Any:
        """`read(key)`, kept in `cache` (read outside the lock: two threads may both read it once)."""
        with self._cache_lock:
            if key in cache:
                return cache[key]
        value = read(key)
        with self._cache_lock, suppress(ValueError):  # a value larger than the cache is not kept
            cache[key] = value
        return value

    def _find_document(self, doc_id: str) -> st.DocumentRecord | None:
        with self._cache_lock:
            at = self._document_at.get(doc_id)
        if at is not None:  # known from one of its chunks: its rows by primary key
            where = f"row in {list(range(at[0], at[0] + at[1]))}"
        else:  # a scan of the doc_id column
            where = f"doc_id == {_string(doc_id)}"
        rows = self._client.query(
            self._names["documents"],
            filter=where,
            output_fields=_DOCUMENT_FIELDS,
            limit=MAX_TOP_K,  # a document's parts: up to ~1 GB of text
        )
        return _documents(rows)[0] if rows else None

    def document(self, doc_id: str) -> st.DocumentRecord:
        found = self.find_document(doc_id)
        if found is None:
            raise KeyError(f"no document with id {doc_id!r} in version {self.version_id}")
        return found

    def chunks_of(self, doc_id: str) -> int:
        rows = self._client.query(
            self._names["documents"],
            filter=f"doc_id == {_string(doc_id)} and part == 0",
            output_fields=["chunks"],
        )
        return int(rows[0]["chunks"]) if rows else 0

    def documents(self, first: int = 0, stop: int | None = None) -> Iterator[st.DocumentRecord]:
        first, stop, _ = slice(first, stop).indices(self._document_count)
        if first >= stop:
            return
        found = self._client.query(
            self._names["documents"],
            filter=f"position == {first} and part == 0",
            output_fields=["row"],
            limit=1,
        )
        if not found:
            raise st.version_damaged(
                _where(self._location), self.version_id, f"no document at position {first}"
            )
        pending: list[dict[str, Any]] = []
        rows = self._range("documents", "row", int(found[0]["row"]), self._document_rows, _DOCUMENT_FIELDS)
        for batch in rows:
            for row in batch:
                if pending and row["position"] != pending[0]["position"]:
                    yield _documents(pending)[0]
                    pending = []
                if int(row["position"]) >= stop:
                    return
                pending.append(row)
        if pending:
            yield _documents(pending)[0]

    def _chunk_rows(self, chunk_ids: Sequence[int], fields: list[str]) -> dict[int, dict[str, Any]]:
        ids = sorted({int(i) for i in chunk_ids})
        if not ids:
            return {}
        self._check_ids(np.asarray(ids, np.int64))
        found: dict[int, dict[str, Any]] = {}
        for at in range(0, len(ids), PAGE_ROWS):
            window = ids[at : at + PAGE_ROWS]
            rows = self._client.query(
                self._names["chunks"], filter=f"chunk_id in {window}", output_fields=fields, limit=len(window)
            )
            found.update((int(r["chunk_id"]), r) for r in rows)
        return found

    def _chunk_row(self, chunk_id: int, fields: list[str]) -> dict[str, Any]:
        chunk_id = int(chunk_id)
        if not 0 <= chunk_id < self._chunk_count:
            raise IndexError(f"no chunk {chunk_id} in version {self.version_id}")
        row = self._chunk_rows([chunk_id], fields).get(chunk_id)
        if row is None:
            raise IndexError(f"no chunk {chunk_id} in version {self.version_id}")
        return row

    def chunk(self, chunk_id: int) -> st.ChunkRecord:
        return _chunk(self._located(chunk_id))

    def _located(self, chunk_id: int) -> dict[str, Any]:
        """The chunk's row: its record, where its sentence vectors are, and where its document is
        (remembered by doc_id, so that reading the document is a lookup by primary key)."""
        row: dict[str, Any] = self._cached(
            self._chunks, (int(chunk_id), "row"), lambda key: self._chunk_row(key[0], _CHUNK_FIELDS)
        )
        with self._cache_lock:
            self._document_at[str(row["doc_id"])] = (int(row["document_row"]), int(row["document_parts"]))
        return row

    def chunk_text(self, chunk_id: int) -> str:
        def read(key: tuple[int, str]) -> str:
            row = self._chunk_row(key[0], ["chunk_id", "text", "text_start"])
            return str(row["text"])[int(row["text_start"]) :]

        return self._cached(self._chunks, (int(chunk_id), "text"), read)  # type: ignore[no-any-return]

    def chunk_records(self) -> Iterator[st.ChunkRecord]:
        for batch in self._range("chunks", "chunk_id", 0, self._chunk_count, _CHUNK_FIELDS):
            for row in batch:
                yield _chunk(row)

    # --- filters, vectors and search ------------------------------------------------------------

    def filter_expression(self, chunk_filter: ChunkFilter) -> str | None:
        """The filter as a Milvus expression on the chunks collection (None: no condition); a source
        prefix holding a LIKE wildcard is matched up to it (`matching_chunks` checks the rest)."""
        if chunk_filter.is_empty:
            return None
        conditions: list[str] = []
        if chunk_filter.doc_ids is not None:
            ids = sorted(set(chunk_filter.doc_ids))
            conditions.append(f"doc_id in [{', '.join(_string(d) for d in ids)}]" if ids else "chunk_id < 0")
        if chunk_filter.source_prefix is not None and chunk_filter.source_prefix:
            conditions.append(f"source like {_string(_literal_part(chunk_filter.source_prefix) + '%')}")
        for name, values in chunk_filter.metadata.items():
            keys = sorted({k for v in values if (k := _facet(v)) is not None})
            if not keys:
                conditions.append("chunk_id < 0")
                continue
            conditions.append(
                f"json_contains_any(facets[{_string(name)}], [{', '.join(_string(k) for k in keys)}])"
            )
        return " and ".join(f"({c})" for c in conditions) if conditions else "chunk_id >= 0"

    def matching_chunks(self, chunk_filter: ChunkFilter) -> np.ndarray | None:
        expression = self.filter_expression(chunk_filter)
        if expression is None:
            return None
        prefix = chunk_filter.source_prefix or ""
        exact = _literal_part(prefix) == prefix  # else LIKE matched a shorter prefix: check each source
        fields = ["chunk_id"] if exact else ["chunk_id", "source"]
        windows = self._range("chunks", "chunk_id", 0, self._chunk_count, fields, expression, ids_only=exact)
        found = [r for rows in windows for r in rows if exact or str(r["source"]).startswith(prefix)]
        ids = np.unique(np.asarray([int(r["chunk_id"]) for r in found], np.int64))
        ids.flags.writeable = False
        return ids

    def _check_ids(self, ids: np.ndarray) -> None:
        if len(ids) and (int(ids.min()) < 0 or int(ids.max()) >= self._chunk_count):
            raise IndexError(f"chunk ids out of 0..{self._chunk_count - 1} in version {self.version_id}")

    def _allowed(self, allowed: np.ndarray | None) -> tuple[str, int]:
        """The search's filter expression and how many chunks it may return."""
        if allowed is None:
            return "", self._chunk_count
        ids = np.unique(np.asarray(allowed, np.int64).reshape(-1))
        self._check_ids(ids)
        return f"chunk_id in [{', '.join(map(str, ids.tolist()))}]", len(ids)

    def dense(self, vector: np.ndarray, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        query = np.ascontiguousarray(vector, dtype=np.float32).reshape(-1)
        if len(query) != self._dimension:
            raise ValueError(f"a vector of {len(query)} values; this version's are {self._dimension}")
        if k <= 0:
            return []
        expression, among = self._allowed(allowed)
        limit = min(k, among, MAX_TOP_K)
        if limit <= 0:
            return []
        hits = self._client.search(
            self._names["chunks"],
            data=[query.tolist()],
            anns_field="vector",
            limit=limit,
            filter=expression,
            output_fields=["chunk_id"],
            search_params={"metric_type": "IP", "params": {"ef": max(limit, 64)}},
        )
        found = [(int(h["chunk_id"]), float(h["distance"])) for h in hits[0]]
        found.sort(key=lambda pair: -pair[1])
        return found

    def lexical(self, text: str, k: int, allowed: np.ndarray | None = None) -> list[tuple[int, float]]:
        """As StoreReader's; [] for a version written to a server without BM25 (Milvus < 2.5)."""
        if k <= 0 or not text.strip() or not self._has_bm25:
            return []
        expression, among = self._allowed(allowed)
        limit = min(k, among, MAX_TOP_K)
        if limit <= 0:
            return []
        hits = self._client.search(
            self._names["chunks"],
            data=[text],
            anns_field="sparse",
            limit=limit,
            filter=expression,
            output_fields=["chunk_id"],
            search_params={"metric_type": "BM25"},
        )
        # milvus-lite answers with the score negated, a server with the score itself.
        found = [(int(h["chunk_id"]), abs(float(h["distance"]))) for h in hits[0]]
        found = [pair for pair in found if pair[1] > 0]
        found.sort(key=lambda pair: -pair[1])
        return found

    def chunk_vectors(self, chunk_ids: Sequence[int]) -> np.ndarray:
        ids = np.asarray(chunk_ids, dtype=np.int64).reshape(-1)
        self._check_ids(ids)
        rows = self._chunk_rows(ids.tolist(), ["chunk_id", "vector"])
        out = np.empty((len(ids), self._dimension), np.float32)
        for n, chunk_id in enumerate(ids.tolist()):
            out[n] = rows[chunk_id]["vector"]
        return out

    def sentence_vectors_of(self, chunk_id: int) -> np.ndarray:
        return self._cached(self._sentences, int(chunk_id), self._sentence_vectors_of)  # type: ignore[no-any-return]

    def _sentence_vectors_of(self, chunk_id: int) -> np.ndarray:
        located = self._located(chunk_id)
        sentences, first = _chunk(located).sentences, int(located["sentence_row"])
        rows = self._client.query(
            self._names["sentences"],
            filter=f"row in {list(range(first, first + len(sentences)))}",
            output_fields=["position", "vector"],
            limit=max(len(sentences), 1),
        )
        if len(rows) != len(sentences):
            raise st.version_damaged(
                _where(self._location), self.version_id, f"chunk {chunk_id} has {len(rows)} sentence vectors"
            )
        out = np.empty((len(rows), self._dimension), np.float32)
        for row in rows:
            out[int(row["position"])] = row["vector"]
        out.flags.writeable = False
        return out

    def word_frequencies(self) -> WordFrequencies | None:
        return self._words


_DOCUMENT_FIELDS = ["row", "position", "part", "doc_id", "title", "source", "metadata", "sha256", "text"]
_CHUNK_FIELDS = [
    "chunk_id",
    "doc_id",
    "start",
    "end",
    "sentences",
    "hash",
    "sentence_row",
    "document_row",
    "document_parts",
]


def _documents(rows: list[dict[str, Any]]) -> list[st.DocumentRecord]:
    """The document of these rows (its parts, in any order)."""
    rows = sorted(rows, key=lambda r: int(r["part"]))
    head = rows[0]
    text = "".join(str(r["text"]) for r in rows)
    return [
        st.DocumentRecord(
            str(head["doc_id"]),
            str(head["title"]),
            str(head["source"]),
            text,
            dict(head["metadata"]),
            str(head["sha256"]),
        )
    ]


def _chunk(row: dict[str, Any]) -> st.ChunkRecord:
    return st.ChunkRecord(
        int(row["chunk_id"]),
        str(row["doc_id"]),
        int(row["start"]),
        int(row["end"]),
        tuple((int(s), int(e)) for s, e in row["sentences"]["spans"]),
        str(row["hash"]),
    )


def _blob(client: Any, name: str, blob: str) -> str:
    rows = client.query(
        name, filter=f"name == {_string(blob)}", output_fields=["part", "value"], consistency_level="Strong"
    )
    if not rows:
        raise st.StoreError(f"{name} holds no {blob}")
    return "".join(str(r["value"]) for r in sorted(rows, key=lambda r: int(r["part"])))


def _string(value: str) -> str:
    """A string literal of a Milvus expression."""
    return json.dumps(value, ensure_ascii=False)


def _literal_part(prefix: str) -> str:
    """`prefix` up to its first character that LIKE reads as other than itself (% _ and \\): Milvus
    versions differ in how LIKE escapes them (2.3 takes no escapes), so a source prefix holding one
    is matched by LIKE up to it, and exactly by `startswith` after the query."""
    cut = min((at for at in (prefix.find(c) for c in "%_\\") if at >= 0), default=len(prefix))
    return prefix[:cut]


def _where(location: MilvusLocation) -> Any:
    from pathlib import Path

    return Path(location.path or location.uri or "")
