"""Shared fixtures: the real bundled model, real stores in temporary folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# The bundled model is a local folder: nothing may reach for a model hub during tests.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def embedder():
    from indexer.embedding import DEFAULT_MODEL, load_embedder

    return load_embedder(DEFAULT_MODEL)


@pytest.fixture(scope="session")
def tokenizer(embedder):
    return embedder.tokenizer
