"""Service fixtures: a real store built with the real bundled model, and the app served two ways.

- In process (tier `unit`): `api` is the real app over the session's store with its real lifespan
  (`TestClient` as a context manager: Runtime.load, the hot-reload thread, the job worker), sharing
  the model the tests' process loaded once. `bare_app` builds the app with its runtime by hand over
  an empty store and a model that is loaded only if a question reaches it: the tests of validation,
  keys, limits and 503s run without the model.
- As a real process (tier `service`): `Server` is `python -m service.cli` on a free port of
  127.0.0.1, started and stopped through service/processes.py, with an httpx client bound to it;
  `server` is the session's one, over a copy of the same store. It is started in the background as
  soon as the session's tests are known to need it, so that its start (an interpreter importing
  torch and loading the model: seconds) overlaps the in-process tests, which run first."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.app import create_app
from service.config import ServiceSettings
from service.processes import (
    READY_TIMEOUT,
    RunningProcess,
    free_port,
    service_command,
    start_process,
    stop_process,
)

if TYPE_CHECKING:
    import subprocess

    from indexer.embedding import Embedder
    from indexer.pipeline import IndexReport
    from service.index import LoadedIndex

REPO = Path(__file__).resolve().parents[2]
CORPUS = REPO / "corpus"
STOLTENBERG = "stoltenberg-in-the-south-caucasus.md"
ODD_ID = "wiki:A/B#1"  # a jsonl `_id` with '/' and '#': must travel URL-encoded
ARMENIA = "Why did Armenia freeze CSTO membership?"
OFF_TOPIC = "What is the boiling point of mercury in Kelvin?"
KEY = "test-key-1"
AUTH = {"Authorization": f"Bearer {KEY}"}


class Reply(Protocol):
    """What the tests read of an HTTP response, from a real server (httpx) or in process (the
    TestClient's, which is httpx2's)."""

    @property
    def status_code(self) -> int: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def text(self) -> str: ...

    def json(self, **kwargs: Any) -> Any: ...


# --- what any app counted ------------------------------------------------------------------------


def request_counts(metrics_text: str) -> dict[tuple[str, str], float]:
    """(route, status) → requests, from a Prometheus exposition of the app's metrics."""
    counts: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics_text):
        for sample in family.samples:
            if sample.name == "ragqa_http_requests_total":
                key = (sample.labels["route"], sample.labels["status"])
                counts[key] = counts.get(key, 0) + sample.value
    return counts


def server_errors(counts: dict[tuple[str, str], float]) -> dict[tuple[str, str], float]:
    return {key: n for key, n in counts.items() if key[1].startswith("5")}


# --- the real server as a process ----------------------------------------------------------------


@dataclass
class Server:
    """A running `ragqa-serve` process (service.processes.RunningProcess) and a client bound to it."""

    running: RunningProcess
    store: str | Path
    client: httpx.Client

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.running.process

    @property
    def base_url(self) -> str:
        return self.running.url

    @property
    def log(self) -> Path:
        return self.running.log

    def log_tail(self, lines: int = 40) -> str:
        return self.running.log_tail(lines)

    def wait_for(self, path: str, status: int = 200, timeout: float = READY_TIMEOUT) -> httpx.Response:
        return self.running.wait_for(path, status, timeout)

    def statuses(self) -> dict[tuple[str, str], float]:
        """(route, status) → count, from the server's own /metrics."""
        return request_counts(self.client.get("/metrics").text)


def corpus_workdir(tmp_path_factory: pytest.TempPathFactory, name: str) -> Path:
    """A folder of its own with a copy of the default corpus (`corpus/`) and an empty `store/`: for a
    server whose uploads and index jobs change them."""
    root = tmp_path_factory.mktemp(name)
    shutil.copytree(CORPUS, root / "corpus")
    (root / "store").mkdir()
    return root


CHROMIUM = Path("/usr/bin/chromium")  # Debian's chromium, which .ci/run installs


@contextmanager
def chromium() -> Iterator[Any]:
    """Debian's chromium under Playwright, headless, without its background traffic (the browser tests'
    pages talk to nothing but the server under test)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield browser
        browser.close()


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll `condition` until it holds; the seconds that took, or an AssertionError naming `what`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if condition():
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{what}: not within {timeout} s")


def server_env(**settings: str) -> dict[str, str]:
    """The test process's environment without any RAGQA_* setting, offline, plus `settings`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAGQA_")}
    env.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.update({f"RAGQA_{k.upper()}": v for k, v in settings.items()})
    return env


def start_server(store: str | Path, log: Path, ready_path: str = "/healthz", **settings: str) -> Server:
    """`python -m service.cli --store STORE` on a free port; returns once `ready_path` answers 200
    (/healthz: the process serves, with or without an index; /readyz: an index is loaded)."""
    port = free_port()
    running = start_process(
        service_command(store, port),
        f"http://127.0.0.1:{port}",
        log,
        ready_path=ready_path,
        env=server_env(**settings),
        cwd=REPO,
    )
    return Server(running, store, httpx.Client(base_url=running.url, timeout=30))


def stop_server(server: Server) -> None:
    """SIGTERM, and check that uvicorn shut down gracefully (lifespan closed, process finished). Uvicorn
    re-raises the signal it handled, so a clean exit is -SIGTERM (or 0). SIGKILL if it hangs."""
    server.client.close()
    if not stop_process(server.running, timeout=20):
        raise AssertionError(f"server ignored SIGTERM for 20 s:\n{server.log_tail()}")
    code = server.process.returncode
    clean = code in (0, -signal.SIGTERM) and "Application shutdown complete" in server.log_tail()
    assert clean, f"server did not shut down cleanly (exit {code}):\n{server.log_tail()}"


# --- stores --------------------------------------------------------------------------------------


def write_extra_documents(folder: Path) -> Path:
    """Small documents beside the seed article: one whose id holds '/' and '#', and one about another
    Georgia (the U.S. state), so that a follow-up about Georgia has to use the conversation."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "wiki.jsonl").write_text(
        '{"_id": "wiki:A/B#1", "title": "Honey bee", "text": "The western honey bee lives in colonies of '
        "tens of thousands of workers. Worker bees build combs of wax and store honey made from flower "
        'nectar."}\n',
        encoding="utf-8",
    )
    (folder / "georgia.md").write_text(
        "# Georgia (U.S. state)\n\nGeorgia is a state in the southeastern United States. Its capital and "
        "largest city is Atlanta. Georgia is known for peaches, peanuts and pecans, and the port of Savannah "
        "is one of the busiest on the Atlantic coast.\n",
        encoding="utf-8",
    )
    return folder


def index(paths: Sequence[Path], store: Path) -> IndexReport:
    """Index in this process with the real model (loaded once per process, then cached)."""
    from indexer.config import IndexSettings
    from indexer.pipeline import run_index

    return run_index(list(paths), IndexSettings(store=store))


@pytest.fixture(scope="session")
def store(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> Path:
    """corpus/ plus the extra documents, indexed into a temporary store with the bundled model."""
    root = tmp_path_factory.mktemp("service-store")
    extra = write_extra_documents(root / "extra")
    report = index([CORPUS, extra], root / "store")
    assert report.published and report.documents == 3
    return root / "store"


SMALL_DOCUMENTS = {
    "lighthouse.md": "# Lighthouses\n\nA keeper tended the lamp of the lighthouse every night. The beam "
    "warned ships away from the rocks. Keepers lived in cottages beside the tower. Storms cut them off "
    "for weeks at a time.\n\nToday most lighthouses run automatically. Their lamps switch on at dusk.\n",
    "bread.md": "# Bread\n\nBakers knead the dough and leave it to rise. Sourdough rises with a starter of "
    "wild yeast. A hot oven gives the loaf its crust. Rye bread is dense and dark.\n",
    "volcano.md": "# Volcanoes\n\nA volcano erupts when molten rock reaches the surface. Ash clouds can "
    "ground aircraft for days. Lava cools into black basalt. Some islands were built by eruptions.\n",
}


@pytest.fixture(scope="session")
def small_index(tmp_path_factory: pytest.TempPathFactory, embedder: Embedder) -> LoadedIndex:
    """Three tiny documents indexed in this process with small chunks (several per document, so that
    chunks differ in how their sentences match), loaded as the service loads a store version."""
    from indexer.config import IndexSettings
    from indexer.pipeline import run_index
    from service.index import LoadedIndex

    root = tmp_path_factory.mktemp("small-store")
    (root / "docs").mkdir()
    for name, text in SMALL_DOCUMENTS.items():
        (root / "docs" / name).write_text(text, encoding="utf-8")
    settings = IndexSettings(store=root / "store", chunk_tokens=40)
    assert run_index([root / "docs"], settings).documents == len(SMALL_DOCUMENTS)
    return LoadedIndex.load(settings.store, settings.model)


# --- the app in process --------------------------------------------------------------------------


def app_errors(app: FastAPI) -> dict[tuple[str, str], float]:
    """The requests an in-process app answered with a 5xx, from its own metrics."""
    return server_errors(request_counts(generate_latest(app.state.metrics.registry).decode()))


def save_tiny_bert(folder: Path, model_class: Any, **config: Any) -> Path:
    """A BERT of `model_class` (a transformers head) with random weights, 2 layers of width 32, and
    the bundled model's tokenizer, saved to `folder`: the test double of the optional models that do
    not exist offline here (a cross-encoder, a reader). `initializer_range` 0.5 spreads its random
    outputs far apart, so that the order they give is clear."""
    import torch
    from transformers import AutoTokenizer, BertConfig

    from indexer.embedding import DEFAULT_MODEL, resolve_model_path

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(DEFAULT_MODEL), local_files_only=True)
    torch.manual_seed(0)
    settings = BertConfig(
        vocab_size=tokenizer.vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        initializer_range=0.5,
        **config,
    )
    model_class(settings).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


@contextmanager
def serving(settings: ServiceSettings) -> Iterator[TestClient]:
    """The real app with its real lifespan, in this process: Runtime.load takes the model this
    process already loaded (`load_embedder` caches it), the holder loads the store's live version and
    watches for newer ones, the job worker runs. Stopped on exit."""
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="session")
def api(store: Path, embedder: Embedder) -> Iterator[TestClient]:
    """The session's in-process app over the session's store. At the end: no request got a 5xx."""
    with serving(ServiceSettings(store=store)) as client:
        yield client
        errors = app_errors(cast(FastAPI, client.app))
    assert not errors, f"requests answered with 5xx: {errors}"


class DeferredModel:
    """The real bundled model, loaded on the first text it has to encode (`load_embedder` caches it
    per process). Not a stand-in: it answers with the real model's vectors. An app built over it
    starts without loading the model, so the tests that never reach an answer do not load it, and
    `loaded` tells whether any of them did."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.loaded = False

    def encode_short(self, texts: Sequence[str]) -> np.ndarray:
        from indexer.embedding import load_embedder

        self.loaded = True
        return load_embedder(self.name).encode_short(texts)


@dataclass
class BareApp:
    client: TestClient
    model: DeferredModel
    settings: ServiceSettings


@contextmanager
def bare_app(store: Path, **overrides: Any) -> Iterator[BareApp]:
    """The real app (create_app) with a runtime built by hand, as its lifespan would but without
    loading the model: a DeferredModel behind the real BatchingEncoder. `store` is usually an empty
    folder (no index yet: reads answer 503). The job worker is not started: a test here never gets
    as far as an index job."""
    from indexer.embedding import Embedder
    from service.encoder import BatchingEncoder
    from service.holder import IndexHolder
    from service.qa import QAService
    from service.retrieval import Retriever
    from service.runtime import Runtime
    from service.writes import Jobs

    settings = ServiceSettings(store=store, **overrides)
    app = create_app(settings)
    holder = IndexHolder(settings.store, settings.model, settings.reload_interval)
    holder.refresh()
    model = DeferredModel(settings.model)
    # BatchingEncoder calls nothing of its embedder but encode_short, which DeferredModel has.
    encoder = BatchingEncoder(cast(Embedder, model), settings.max_batch)
    qa = QAService(settings, holder, encoder, Retriever(settings))
    app.state.runtime = Runtime(settings, app.state.metrics, holder, encoder, qa, Jobs(settings))
    try:
        yield BareApp(TestClient(app), model, settings)
    finally:
        encoder.close()


# --- the real server as a process, shared by the session -----------------------------------------


@dataclass
class EarlyServer:
    """The session's server, being started in a background thread over `folder/store` (still empty:
    the `server` fixture publishes the session's store into it, and its hot reload loads it)."""

    folder: Path
    future: Future[Server]


EARLY_SERVER = pytest.StashKey[EarlyServer]()


def launch_session_server(folder: Path) -> EarlyServer:
    executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ragqa-session-server")
    future = executor.submit(start_server, folder / "store", folder / "server.log")
    executor.shutdown(wait=False)
    return EarlyServer(folder, future)


@pytest.hookimpl(trylast=True)  # after `-m` and `-k` have deselected what will not run
def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    if config.option.collectonly or session.testsfailed:  # nothing will run
        return
    if any("server" in getattr(item, "fixturenames", ()) for item in items):
        folder = Path(tempfile.mkdtemp(prefix="ragqa-session-server-"))
        config.stash[EARLY_SERVER] = launch_session_server(folder)


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Whatever happened to the session (the `server` fixture stops the server it got and checks how
    it ended), no server process outlives it, nor its folder."""
    early = session.config.stash.get(EARLY_SERVER, None)
    if early is None:
        return
    with suppress(Exception):  # a start that failed was reported by the `server` fixture
        stop_process(early.future.result(timeout=READY_TIMEOUT).running)
    shutil.rmtree(early.folder, ignore_errors=True)


def publish_copy(store: Path, target: Path) -> None:
    """Copy a store folder to `target` whole: a server watching `target` sees all of it or nothing."""
    partial = target.with_name(f"{target.name}.partial")
    shutil.copytree(store, partial)
    if target.exists():
        target.rmdir()  # an empty folder, if the server made one
    partial.rename(target)


@pytest.fixture(scope="session")
def server(
    request: pytest.FixtureRequest, store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Server]:
    """One real server for the session, over a copy of the session's store (test_reload.py publishes
    versions into it while it serves). At the end: no request of any test got a 5xx, and the process
    shuts down cleanly on SIGTERM."""
    early = request.config.stash.get(EARLY_SERVER, None)
    if early is None:  # not foreseen at collection: start it now
        early = launch_session_server(tmp_path_factory.mktemp("session-server"))
    running = early.future.result()
    try:
        publish_copy(store, Path(running.store))
        running.wait_for("/readyz")  # answered 503 until the store was there: not the tests' doing
        before = server_errors(running.statuses())
        yield running
        after = server_errors(running.statuses())
        errors = {key: n - before.get(key, 0) for key, n in after.items() if n > before.get(key, 0)}
        assert not errors, f"requests answered with 5xx: {errors}"
    finally:
        stop_server(running)


@pytest.fixture(scope="session")
def client(server: Server) -> httpx.Client:
    return server.client


@pytest.fixture(scope="session")
def sources(store: Path) -> list[Path]:
    """The folders the session's store was indexed from: a new version of the same documents."""
    return [CORPUS, store.parent / "extra"]
