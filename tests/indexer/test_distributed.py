"""`ragqa-index --ray`: loading, chunking and embedding fanned out on a real local Ray (2 CPUs), giving
the store the plain indexer gives, and with a Milvus server as the store, the same version written into
Milvus by Ray write tasks (indexer.milvus_datasink); without --ray nothing imports Ray."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from indexer.config import IndexSettings
from indexer.pipeline import run_index
from indexer.reader import StoreReader, open_reader
from tests.indexer.helpers import REPO, last_json, run_cli, write_corpus
from tests.indexer.test_milvus_store import CLUSTER, engine

# RAY_ADDRESS: run on that Ray cluster (its workers need this ragqa and the model), else a local Ray of
# this machine's cores; the Milvus store is RAGQA_TEST_MILVUS_URI's cluster when set (the workers
# write to it), else a `milvus-lite server` on 127.0.0.1.
RAY_ADDRESS = os.environ.get("RAY_ADDRESS")


@pytest.mark.unit
def test_without_ray_nothing_imports_it() -> None:
    code = (
        "import sys, indexer.cli, indexer.pipeline, service.app, service.cli; "
        "assert 'ray' not in sys.modules, 'ray imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr


@pytest.mark.slow  # a local Ray cluster and two model-loading processes
def test_an_index_run_on_ray_writes_the_store_the_plain_run_writes(tmp_path: Path) -> None:
    corpus = write_corpus(tmp_path / "corpus", documents=10, paragraphs=3, seed=4)
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7 not really")
    plain = run_index([corpus], IndexSettings(store=tmp_path / "plain", lock_wait=0))

    # into a Milvus server (through the Ray datasink) and the local store it is exported from
    with engine("cluster" if CLUSTER else "server", tmp_path / "milvus") as store:
        env = {**os.environ, "RAGQA_WORK_STORE": str(tmp_path / "ray")}
        ray = ["--ray", *([RAY_ADDRESS] if RAY_ADDRESS else [])]  # a cluster's, or a local Ray
        result = run_cli(corpus, "--store", store, "--json", *ray, "--log-level", "INFO", env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        exported = [json.loads(line) for line in result.stderr.splitlines() if '"index.exported"' in line]
        assert [e["by"] for e in exported] == ["ray datasink"]
        milvus = open_reader(store)
        assert_same_version(open_reader(tmp_path / "ray"), milvus)
        milvus.close()  # type: ignore[attr-defined]
    report = last_json(result.stdout)
    assert report["exported"]
    assert report["documents"] == plain.documents and report["chunks"] == plain.chunks
    assert report["embedded"] == report["chunks"]  # a fresh store: every chunk embedded, on Ray
    assert [s["path"] for s in report["skipped"]] == [s["path"] for s in plain.skipped]

    a, b = open_reader(tmp_path / "plain"), open_reader(tmp_path / "ray")
    chunks = list(a.chunk_records())
    assert list(b.chunk_records()) == chunks
    ids = [c.chunk_id for c in chunks]
    assert np.allclose(a.chunk_vectors(ids), b.chunk_vectors(ids), atol=1e-5)
    for chunk_id in ids[:5]:
        assert np.allclose(a.sentence_vectors_of(chunk_id), b.sentence_vectors_of(chunk_id), atol=1e-3)
    assert [d.doc_id for d in a.documents()] == [d.doc_id for d in b.documents()]


def assert_same_version(local: StoreReader, milvus: StoreReader) -> None:
    """The Milvus version holds what the local store's live commit holds (chunk ids may differ: a
    local store's skip deleted chunks, a Milvus version's run 0..n-1)."""
    assert [d.doc_id for d in milvus.documents()] == [d.doc_id for d in local.documents()]
    assert [d.text for d in milvus.documents()] == [d.text for d in local.documents()]
    local_chunks, milvus_chunks = list(local.chunk_records()), list(milvus.chunk_records())
    strip = [(c.doc_id, c.start, c.end, c.sentences, c.hash) for c in local_chunks]
    assert [(c.doc_id, c.start, c.end, c.sentences, c.hash) for c in milvus_chunks] == strip
    assert np.allclose(
        milvus.chunk_vectors([c.chunk_id for c in milvus_chunks]),
        local.chunk_vectors([c.chunk_id for c in local_chunks]),
        atol=1e-6,
    )
    for a, b in list(zip(local_chunks, milvus_chunks, strict=True))[:5]:
        assert np.allclose(
            milvus.sentence_vectors_of(b.chunk_id), local.sentence_vectors_of(a.chunk_id), atol=1e-6
        )
