"""The question encoder on ONNX Runtime (indexer.onnx_encoder), exported from the real bundled model:
the same vectors as PyTorch, one export per weights, an export with other vectors refused, and the
service falling back to PyTorch then."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from indexer import onnx_encoder as ox
from indexer.embedding import Embedder
from service.encoder import question_encoder
from tests.indexer.helpers import perturbed

pytestmark = pytest.mark.unit

QUESTIONS = [
    "Why did Armenia freeze CSTO membership?",
    "when did the ottoman empire fall",
    "What did Stoltenberg say in Baku about the peace agreement with Armenia and the border?",
    "Ünïcode, 日本語 and an emoji 🙂?",
    "a",
]


def test_the_onnx_encoder_gives_the_pytorch_vectors(embedder: Embedder, tmp_path: Path) -> None:
    encoder = ox.load_onnx_encoder(embedder, tmp_path)
    for batch in ([QUESTIONS[0]], QUESTIONS):  # alone, and padded in a batch of different lengths
        got, expected = encoder.encode_short(batch), embedder.encode_short(batch)
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
        assert float((got * expected).sum(axis=1).min()) >= ox.MIN_COSINE
    assert encoder.encode_short([]).shape == (0, embedder.info.dimension)


def test_the_export_fuses_the_transformer_and_leaves_the_model_as_it_was(
    embedder: Embedder, tmp_path: Path
) -> None:
    import onnx

    transformer: Any = embedder.model[0].auto_model
    config = transformer.config
    before = config._attn_implementation
    encoder = ox.load_onnx_encoder(embedder, tmp_path)
    operators = {node.op_type for node in onnx.load(str(encoder.path)).graph.node}
    # ONNX Runtime's fused operators, in place of the traced attention and layer norms
    assert {"Attention", "SkipLayerNormalization", "EmbedLayerNormalization"} <= operators
    assert "Softmax" not in operators
    assert config._attn_implementation == before  # traced eager, set back after
    assert not list(tmp_path.glob(".tmp-*"))  # no temporary file left behind


def test_a_failed_fusion_keeps_the_traced_graph(
    embedder: Embedder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The optimizer is made to fail (a stand-in: the real one fuses this model): the export is the
    traced graph, which still gives the PyTorch vectors."""
    import onnx
    import onnxruntime.transformers.optimizer as optimizer

    def failing(*args: object, **kwargs: object) -> None:
        raise RuntimeError("no pattern")

    monkeypatch.setattr(optimizer, "optimize_model", failing)
    encoder = ox.load_onnx_encoder(embedder, tmp_path)
    operators = {node.op_type for node in onnx.load(str(encoder.path)).graph.node}
    assert "Attention" not in operators and "Softmax" in operators
    expected = embedder.encode_short(QUESTIONS)
    assert float((encoder.encode_short(QUESTIONS) * expected).sum(axis=1).min()) >= ox.MIN_COSINE
    assert not list(tmp_path.glob("*.fused"))


def test_one_export_per_weights(embedder: Embedder, tmp_path: Path) -> None:
    first = ox.load_onnx_encoder(embedder, tmp_path)
    written = first.path.stat().st_mtime_ns
    again = ox.load_onnx_encoder(embedder, tmp_path)
    assert again.path == first.path and again.path.stat().st_mtime_ns == written  # reused, not exported again
    key = ox.export_key(embedder)
    with perturbed(embedder):
        assert ox.export_key(embedder) != key
    assert ox.export_key(embedder) == key


def test_an_export_with_other_vectors_is_refused(
    embedder: Embedder, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / f"{ox.export_key(embedder)}.onnx"
    with perturbed(embedder):  # other weights exported under this model's key
        ox.export(embedder, path)
    with pytest.raises(ox.OnnxMismatchError, match="other vectors"):
        ox.load_onnx_encoder(embedder, tmp_path)
    with caplog.at_level(logging.ERROR, logger="ragqa.service"):
        assert question_encoder(embedder, "onnx", tmp_path) is embedder  # the service uses PyTorch
    assert any(r.message == "encoder.onnx_unavailable" for r in caplog.records)
    assert question_encoder(embedder, "torch", tmp_path) is embedder
