"""The long-lived parts of a serving app, built once when it starts and closed when it stops: the
index holder (hot reload), the question encoder (the model), the QA service and the index jobs.

The app's lifespan builds a `Runtime` with `Runtime.load`, starts it, and keeps it on
`app.state.runtime`, where the routes' dependencies (service/deps.py) find it. A test builds one
by hand (any encoder that has `encode` and `submit`) to serve without loading a model."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from indexer.embedding import load_embedder
from service.config import ServiceSettings
from service.encoder import BatchingEncoder, question_encoder
from service.holder import IndexHolder
from service.metrics import Metrics
from service.qa import QAService
from service.reader import Reader
from service.retrieval import Retriever, load_reranker
from service.writes import Jobs


@dataclass
class Runtime:
    settings: ServiceSettings
    metrics: Metrics
    holder: IndexHolder
    encoder: BatchingEncoder
    qa: QAService
    jobs: Jobs

    @classmethod
    def load(cls, settings: ServiceSettings, metrics: Metrics) -> Runtime:
        """Load the model (and the cross-encoder and the reader, if configured) and warm it up;
        nothing started yet."""
        import faiss

        # One query at a time needs no OpenMP team, and idle OpenMP threads spinning after a search
        # take CPU from the model's threads.
        faiss.omp_set_num_threads(1)
        holder = IndexHolder(settings.store, settings.model, settings.reload_interval)
        # The store's live version opens (files checked, indexes read) while the model loads: both
        # take seconds, much of them outside the GIL (reading, checksums; torch's own work).
        opening = threading.Thread(target=holder.refresh, name="ragqa-open-index", daemon=True)
        opening.start()
        embedder = load_embedder(settings.model, settings.batch_size)
        weights = embedder.weights_digest()  # 0.1 s: once, for the ONNX export's key and the holder
        questions = question_encoder(embedder, settings.question_encoder, settings.onnx_cache, weights)
        encoder = BatchingEncoder(questions, settings.max_batch)
        # The model's first call costs seconds: make it before /readyz says ready, on the encoder's
        # own thread (the only thread that runs the model in the service).
        encoder.submit("warm up the model before the first question").result()
        reranker = load_reranker(settings.reranker) if settings.reranker else None
        reader = Reader(settings.reader) if settings.reader else None
        opening.join()
        holder.require_weights(weights)
        qa = QAService(settings, holder, encoder, Retriever(settings, reranker), reader)
        return cls(settings, metrics, holder, encoder, qa, Jobs(settings))

    def start(self) -> None:
        """Load the current index version (if `load` could not, or a newer one is live) and watch for
        newer ones; start the index job worker (it needs the running event loop)."""
        self.holder.start()
        self.jobs.start()

    async def close(self) -> None:
        await self.jobs.stop()
        self.holder.stop()
        await self.qa.close()
        self.encoder.close()
