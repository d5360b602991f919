"""Small builders for indexer tests: corpora written to disk, the CLI run as a real subprocess."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from indexer.embedding import Embedder

WORDS = (
    "alliance border capital ceasefire charter coalition council delegation diplomacy election envoy "
    "frontier government harbour minister mission negotiation parliament partnership pipeline province "
    "referendum region republic sanctions security summit territory treaty valley visit"
).split()


def sentence(rng: random.Random, words: int = 14) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return body[0].upper() + body[1:] + "."


def paragraph(rng: random.Random, sentences: int = 6) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def write_corpus(folder: Path, documents: int, paragraphs: int = 3, seed: int = 0) -> Path:
    """Markdown documents with a heading each: enough text for several chunks per document."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(documents):
        body = "\n\n".join(paragraph(rng) for _ in range(paragraphs))
        (folder / f"doc-{n:04d}.md").write_text(f"# Document {n}\n\n{body}\n", encoding="utf-8")
    return folder


REPO = Path(__file__).resolve().parents[2]


def single_segment(store: Path, model_name: str | None = None) -> Any:
    """The records and files of the store's live commit when it holds one segment (an index run into an
    empty store, or a rebuild, writes one): an indexer.store.Version."""
    from indexer import segments as sg
    from indexer import store as st

    commit = sg.read_commit(store)
    if model_name is not None:
        st.check_model(store, commit.manifest, model_name)
    assert len(commit.segments) == 1, [s.name for s in commit.segments]
    entry = commit.segments[0]
    return st.open_folder(store, commit.folder(store, entry), entry.name)


def segment_folder(store: Path) -> Path:
    """The folder of the live commit's one segment."""
    return Path(single_segment(store).path)


def resummed(store: Path) -> Path:
    """The store with its live commit's file sums made anew: a segment changed on purpose by a test then
    reads as written so (its checksums pass), and what is checked is the reader's other checks."""
    from dataclasses import replace

    from indexer import segments as sg

    commit = sg.read_commit(store)
    entries = [replace(e, files=sg.sum_folder(commit.folder(store, e))) for e in commit.segments]
    sg.publish_commit(store, replace(commit, segments=tuple(entries)))
    return store


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`ragqa-index ARGS` in a fresh interpreter, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def last_json(stdout: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result


def as_written_before_records(folder: Path, sentence_vectors: np.ndarray | None = None) -> None:
    """Turn a version folder as written today into one as ragqa wrote it before records/, idf.json and
    float16 sentence vectors: those removed, sentences.npy float32 (`sentence_vectors`, or today's
    values widened), and no sentence_vectors_dtype in the manifest. Every other file was written then
    as it is now."""
    shutil.rmtree(folder / "records")
    (folder / "idf.json").unlink()
    vectors = np.load(folder / "sentences.npy") if sentence_vectors is None else sentence_vectors
    np.save(folder / "sentences.npy", np.asarray(vectors, dtype=np.float32))
    manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    del manifest["sentence_vectors_dtype"]
    text = json.dumps(manifest, ensure_ascii=False, indent=1)
    (folder / "manifest.json").write_text(text, encoding="utf-8")


@contextmanager
def perturbed(embedder: Embedder) -> Iterator[None]:
    """The model with one weight changed (other weights under the same name), restored on exit. The
    indexer and an in-process service use this same instance (load_embedder caches it)."""
    import torch

    parameter = next(embedder.model.parameters())
    saved = parameter.detach().clone()
    with torch.no_grad():
        parameter.mul_(1.5)
    try:
        yield
    finally:
        with torch.no_grad():
            parameter.copy_(saved)
