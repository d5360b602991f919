"""Shared fixtures (the real bundled model, real stores in temporary folders) and the tiers.

Every test carries exactly one tier mark (pyproject.toml declares them):

- `unit`: in process, no subprocess; the model only where the behaviour needs it.
- `service`: a real process, cheap enough for every run: the session's one shared server (started once,
  in the background) and what runs against it (curl, the CLI client), indexer runs that end before
  they load the model.
- `slow`: the LLM server, the browser, SIGKILL crash tests, fuzzing (schemathesis; hypothesis over the
  chunker), and every other process that loads the model (a server of its own, index jobs, indexer
  runs that embed, ragqa-eval): importing torch and loading the model costs each of them seconds.

`make test-fast` runs `-m "not slow"`. A test with no tier, or with two, fails the run at collection.
The tiers run in that order (stable within each): the in-process tests first, while the session's
real server starts in the background (tests/service/conftest.py)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from indexer.embedding import Embedder

# The bundled model is a local folder: nothing may reach for a model hub during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# Every setting a test depends on, it sets: none comes from the shell that runs the tests (the
# settings classes, in process and in the processes the tests start, read RAGQA_* variables). Kept:
# what points the Milvus contract tests at a real cluster (RAGQA_TEST_MILVUS_URI) and its token.
KEPT = ("RAGQA_TEST_MILVUS_URI", "RAGQA_MILVUS_TOKEN")
for name in [name for name in os.environ if name.startswith("RAGQA_") and name not in KEPT]:
    del os.environ[name]

pytest_plugins = ["pytester"]  # tests/test_tiers.py runs small pytest sessions against the tier check

REPO = Path(__file__).resolve().parents[1]
TIERS = ("unit", "service", "slow")


def tier_of(item: pytest.Item) -> str | None:
    """The test's one tier mark; None when it has none, or several."""
    tiers = {mark.name for mark in item.iter_markers() if mark.name in TIERS}
    return tiers.pop() if len(tiers) == 1 else None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything: every collected test is checked
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    problems = []
    for item in items:
        if tier_of(item) is None:
            found = sorted({mark.name for mark in item.iter_markers() if mark.name in TIERS})
            problems.append(f"  {item.nodeid}: {', '.join(found) if found else 'none'}")
    if problems:
        raise pytest.UsageError(
            "every test needs exactly one tier mark of "
            + ", ".join(TIERS)
            + " (a module's `pytestmark` or the test's own; see tests/conftest.py):\n"
            + "\n".join(problems)
        )
    items.sort(key=lambda item: TIERS.index(tier_of(item) or "slow"))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def embedder() -> Embedder:
    """The real bundled model, loaded once per process (`load_embedder` caches it, so the indexer
    and an in-process app's runtime get this same instance)."""
    from indexer.embedding import DEFAULT_MODEL, load_embedder

    return load_embedder(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(embedder: Embedder) -> Any:
    return embedder.tokenizer
