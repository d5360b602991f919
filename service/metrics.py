"""Prometheus metrics: requests and latency per route, retrieval and answer timings, the index served."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from service.schemas import AskResponse

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.035, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.5, 5.0, 10.0)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "ragqa_http_requests_total",
            "HTTP requests",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "ragqa_http_request_seconds",
            "HTTP request latency",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.stage = Histogram(
            "ragqa_stage_seconds",
            "time spent in each stage of a question: encode, retrieve, answer",
            ["stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.abstentions = Counter(
            "ragqa_abstentions_total", "answers that abstained", registry=self.registry
        )
        self.fallbacks = Counter(
            "ragqa_llm_fallbacks_total",
            "generative answers that fell back to the extractive one, or were cut short",
            registry=self.registry,
        )
        self.unsupported = Counter(
            "ragqa_llm_unsupported_sentences_total",
            "generated sentences left out because no cited source supports them",
            registry=self.registry,
        )
        self.index_info = Gauge(
            "ragqa_index_info",
            "the index version served (value 1)",
            ["version", "model"],
            registry=self.registry,
        )
        self.index_documents = Gauge(
            "ragqa_index_documents", "documents in the served index", registry=self.registry
        )
        self.index_chunks = Gauge("ragqa_index_chunks", "chunks in the served index", registry=self.registry)

    def observe_stages(self, timings_ms: dict[str, float]) -> None:
        for stage, ms in timings_ms.items():
            self.stage.labels(stage).observe(ms / 1000)

    def observe_answer(self, response: AskResponse) -> None:
        self.observe_stages(response.timings_ms)
        self.abstentions.inc(response.abstained)
        self.fallbacks.inc(response.fallback_reason is not None)
        self.unsupported.inc(len(response.unsupported))

    def set_index(self, version: str, model: str, documents: int, chunks: int) -> None:
        self.index_info.clear()
        self.index_info.labels(version, model).set(1)
        self.index_documents.set(documents)
        self.index_chunks.set(chunks)
