"""The two ways of encoding with the real bundled model give the same vectors."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = pytest.mark.unit


def test_encode_short_gives_the_vectors_of_encode(embedder):
    texts = [
        "Why did Armenia freeze CSTO membership?",
        "NATO",
        "word " * 600,  # past the model's window: both truncate it the same way
        "Why did Armenia freeze CSTO membership?",
    ]
    short = embedder.encode_short(texts)
    assert short.shape == (4, embedder.info.dimension) and short.dtype == np.float32
    assert np.allclose(short, embedder.encode(texts), atol=1e-5)
    assert np.allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    assert embedder.encode_short([]).shape == (0, embedder.info.dimension)
