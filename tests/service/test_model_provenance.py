"""The service serves only vectors of the model it loaded: a store built with other weights under the
same model name (a model folder whose files changed) is refused, with the reason on /readyz, until it
is rebuilt. The real runtime (model, ONNX question encoder, holder) in process."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from indexer.embedding import load_embedder
from indexer.pipeline import run_index
from service.config import ServiceSettings
from service.metrics import Metrics
from service.runtime import Runtime
from tests.indexer.helpers import perturbed

pytestmark = pytest.mark.unit


def test_a_store_of_other_weights_is_not_served_until_rebuilt(tmp_path: Path, repo: Path) -> None:
    settings = ServiceSettings(store=tmp_path / "store", lock_wait=0)
    embedder = load_embedder(settings.model, settings.batch_size)  # the indexer's and the runtime's
    with perturbed(embedder):
        run_index([repo / "corpus"], settings)

    runtime = Runtime.load(settings, Metrics())
    try:
        assert not runtime.holder.ready
        assert runtime.holder.last_error is not None and "other weights" in runtime.holder.last_error
        runtime.holder.refresh()  # asked again, the same version is refused again
        assert not runtime.holder.ready

        run_index([repo / "corpus"], settings, rebuild=True)
        assert runtime.holder.refresh() and runtime.holder.ready
        assert runtime.holder.current.model.weights == embedder.weights_digest()
        assert runtime.holder.current.model.encoder == "pytorch"
    finally:
        asyncio.run(runtime.close())
