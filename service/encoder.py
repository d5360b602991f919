"""Question encoding shared by concurrent requests: one model call for every question waiting.

A single worker thread owns the model. It takes the first waiting question and every other one that
is already queued (up to `max_batch`) and encodes them together, so at low load a question waits for
nobody and at high load sixteen questions cost little more than one. Recent questions are cached."""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from indexer.embedding import Embedder

log = logging.getLogger("ragqa.service")

CACHE_SIZE = 4096


class QuestionEncoder(Protocol):
    tokenizer: Any  # the model's tokenizer (a Hugging Face one)

    def encode_short(self, texts: Sequence[str]) -> np.ndarray:
        """Normalised float32 vectors of a few short texts, one row each."""
        ...


def question_encoder(
    embedder: Embedder, backend: str, cache: Path | None = None, weights: str | None = None
) -> QuestionEncoder:
    """What encodes the questions: `embedder`'s model on ONNX Runtime (indexer.onnx_encoder) for
    backend "onnx", checked against PyTorch, or `embedder` itself ("torch"). An ONNX encoder that
    cannot be had (onnxruntime missing, the export failing, or its vectors not PyTorch's) is not
    used: the service encodes with PyTorch and logs why."""
    if backend == "onnx":
        try:
            from indexer.onnx_encoder import load_onnx_encoder

            encoder = load_onnx_encoder(embedder, cache, weights=weights)
        except Exception as exc:
            log.error(
                "encoder.onnx_unavailable", extra={"error": f"{type(exc).__name__}: {exc}", "using": "torch"}
            )
        else:
            log.info("encoder.loaded", extra={"backend": "onnx", "export": str(encoder.path)})
            return encoder
    log.info("encoder.loaded", extra={"backend": "torch"})
    return embedder


class BatchingEncoder:
    def __init__(self, embedder: QuestionEncoder, max_batch: int = 32) -> None:
        self.embedder = embedder
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[tuple[str, Future[np.ndarray]] | None] = queue.SimpleQueue()
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name="ragqa-encoder", daemon=True)
        self._thread.start()

    async def encode(self, text: str) -> np.ndarray:
        return await asyncio.wrap_future(self.submit(text))

    def submit(self, text: str) -> Future[np.ndarray]:
        future: Future[np.ndarray] = Future()
        with self._lock:
            cached = self._cache.get(text)
            if cached is not None:
                self._cache.move_to_end(text)
        if cached is not None:
            future.set_result(cached)
        else:
            self._queue.put((text, future))
        return future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < self.max_batch:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    self._queue.put(None)
                    break
                batch.append(more)
            self._encode(batch)

    def _encode(self, batch: list[tuple[str, Future[np.ndarray]]]) -> None:
        texts = list(dict.fromkeys(text for text, _ in batch))
        try:
            # Each vector its own copy: a row view would keep its whole batch's array alive in the cache.
            vectors = {
                text: row.copy() for text, row in zip(texts, self.embedder.encode_short(texts), strict=True)
            }
        except Exception as exc:  # the model failing must fail these requests, not the worker
            for _, future in batch:
                future.set_exception(exc)
            return
        with self._lock:
            for text, vector in vectors.items():
                vector.setflags(write=False)
                self._cache[text] = vector
            while len(self._cache) > CACHE_SIZE:
                self._cache.popitem(last=False)
        for text, future in batch:
            future.set_result(vectors[text])
