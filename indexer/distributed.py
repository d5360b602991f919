"""An index run's heavy work fanned out on Ray (`ragqa-index --ray [ADDRESS]`): documents loaded as Ray
tasks, chunked as Ray tasks, and embedded with Ray Data's `map_batches` over a pool of actors, each
holding one model. The run itself (plan, cache, segment, commit) stays in the driver, as without Ray:
the store, its lock and its embedding cache are the driver's, and a worker only ever sees texts.

Nothing imports Ray unless a run asks for it: `ray` is the optional extra `ragqa[ray]`. Without an
address, a local Ray of this machine's cores is started for the run and stopped after it; with one,
the run joins that cluster (its workers need ragqa installed, with the same model). With a Milvus
server as the store, the new version's rows are written into Milvus by Ray write tasks through
indexer.milvus_datasink.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

from indexer.chunking import Chunker, ChunkerSettings
from indexer.documents import Loaded, LoadError, SourceFile, load

if TYPE_CHECKING:
    from indexer.milvus_store import Insert, MilvusLocation

Span = tuple[int, int]
LOCAL = "local"  # `--ray` without an address: a Ray of this machine, for this run
FILES_PER_TASK = 32
DOCUMENTS_PER_TASK = 64


class RayUnavailableError(Exception):
    pass


@contextmanager
def ray_session(address: str) -> Iterator[Any]:
    """Ray, connected (to `address`, or a local Ray of this machine's cores for LOCAL); shut down on
    exit. RayUnavailableError when Ray is not installed."""
    try:
        import ray
    except ImportError as exc:
        raise RayUnavailableError("--ray needs Ray: pip install 'ragqa[ray]' (ray[data]==2.60.0)") from exc
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address == LOCAL:
        options["num_cpus"] = os.cpu_count() or 1
    else:
        options["address"] = address
    ray.init(**options)
    try:
        yield ray
    finally:
        ray.shutdown()


class RayWork:
    """The three fanned-out steps of a run, on a connected Ray."""

    def __init__(self, ray: Any, model: str, batch_size: int, actors: int | None = None) -> None:
        self.ray = ray
        self.model = model
        self.batch_size = batch_size
        cpus = int(ray.cluster_resources().get("CPU", 1))
        self.actors = actors or max(1, cpus)

    def milvus_insert(self, location: MilvusLocation) -> Insert:
        """How a publish to Milvus writes a collection's rows on this cluster: by Ray write tasks
        (indexer.milvus_datasink), one block of rows per actor's worth of CPU."""
        from indexer import milvus_datasink

        def insert(collection: str, rows: Iterable[dict[str, Any]]) -> None:
            milvus_datasink.write(location, collection, rows, self.actors)

        return insert

    def load(self, sources: Sequence[SourceFile], max_bytes: int) -> list[Loaded | Exception]:
        """Each source loaded by a Ray task (FILES_PER_TASK a task), in order: its documents, or the
        exception that skipped it."""
        task = self.ray.remote(_load_files)
        parts = [sources[at : at + FILES_PER_TASK] for at in range(0, len(sources), FILES_PER_TASK)]
        results = self.ray.get([task.remote(list(part), max_bytes) for part in parts])
        return [item for part in results for item in part]

    def chunk(
        self, documents: Sequence[tuple[str, str]], settings: ChunkerSettings
    ) -> list[list[tuple[int, int, tuple[Span, ...]]]]:
        """Each (title, text) cut into chunks by Ray tasks (DOCUMENTS_PER_TASK a task), in order:
        (start, end, sentence spans) of each chunk, as `Chunker.chunk` gives them."""
        task = self.ray.remote(_chunk_documents)
        parts = [
            documents[at : at + DOCUMENTS_PER_TASK] for at in range(0, len(documents), DOCUMENTS_PER_TASK)
        ]
        results = self.ray.get([task.remote(self.model, settings, list(part)) for part in parts])
        return [item for part in results for item in part]

    def embed(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        on_done: Callable[[list[int], list[np.ndarray]], None],
    ) -> None:
        """Every text's vector and its sentences' vectors (as `Embedder.encode_with_sentences`), by
        Ray Data's `map_batches` over a pool of `actors` actors (one model each); `on_done(indices,
        vectors)` for each batch as it comes back."""
        import ray.data

        rows = [
            {"i": i, "text": t, "spans": np.asarray(s, np.int64).reshape(-1, 2)}
            for i, (t, s) in enumerate(zip(texts, spans, strict=True))
        ]
        dataset = ray.data.from_items(rows).map_batches(
            _Embed,
            fn_constructor_args=(self.model, self.batch_size),
            batch_size=self.batch_size * 4,
            batch_format="numpy",
            compute=ray.data.ActorPoolStrategy(size=self.actors),
        )
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            indices = [int(i) for i in batch["i"]]
            vectors = [np.asarray(v, np.float32).reshape(-1, batch["dimension"][0]) for v in batch["vectors"]]
            on_done(indices, vectors)


def _load_files(sources: list[SourceFile], max_bytes: int) -> list[Loaded | Exception]:
    found: list[Loaded | Exception] = []
    for source in sources:
        try:
            found.append(load(source, max_bytes))
        except LoadError as exc:
            found.append(exc)
        except Exception as exc:  # a loader's library failing on odd input: skipped, as without Ray
            found.append(LoadError(f"could not be read: {type(exc).__name__}: {exc}"))
    return found


def _chunk_documents(
    model: str, settings: ChunkerSettings, documents: list[tuple[str, str]]
) -> list[list[tuple[int, int, tuple[Span, ...]]]]:
    from indexer.embedding import load_embedder

    chunker = Chunker(load_embedder(model).tokenizer, settings)  # one model a worker process (cached)
    return [[(c.start, c.end, c.sentences) for c in chunker.chunk(text, title)] for title, text in documents]


class _Embed:
    """A Ray Data actor: one model, loaded once, embedding batch after batch."""

    def __init__(self, model: str, batch_size: int) -> None:
        from indexer.embedding import load_embedder

        self.embedder = load_embedder(model, batch_size)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        texts = [str(t) for t in batch["text"]]
        spans = [[(int(s), int(e)) for s, e in np.asarray(p).reshape(-1, 2)] for p in batch["spans"]]
        vectors = self.embedder.encode_with_sentences(texts, spans)
        dimension = self.embedder.info.dimension
        flat = np.empty(len(vectors), dtype=object)  # rows of different lengths (1 + sentences)
        for n, v in enumerate(vectors):
            flat[n] = np.asarray(v, np.float32).reshape(-1)
        return {"i": batch["i"], "vectors": flat, "dimension": np.full(len(texts), dimension)}
