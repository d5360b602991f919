"""Crash safety and concurrency: a killed indexer leaves the live version intact, two indexers never
corrupt a store. The indexer runs as a real subprocess and is killed with SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from indexer import segments as sg
from indexer import store as st
from indexer.config import IndexSettings
from indexer.pipeline import run_index
from indexer.reader import open_reader
from tests.indexer.helpers import REPO, last_json, run_cli, write_corpus


def assert_version_loads(store: Path, version_id: str) -> None:
    """The live commit is `version_id`, and opens (every file's checksum verified) and reads whole."""
    reader = open_reader(store)
    assert reader.version_id == version_id
    chunks = list(reader.chunk_records())
    assert len(chunks) == reader.chunk_count == reader.manifest.counts.chunks
    for chunk in chunks:
        assert reader.chunk_text(chunk.chunk_id).strip()
    assert len(reader.dense(reader.chunk_vectors([chunks[0].chunk_id])[0], len(chunks))) == len(chunks)


def start_indexer(*args: str | Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", *map(str, args), "--json", "--log-level", "INFO"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def wait_for_event(process: subprocess.Popen, event: str, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    assert process.stderr is not None
    while time.monotonic() < deadline:
        line = process.stderr.readline()
        if not line:
            raise AssertionError(f"indexer ended before {event!r} (exit {process.wait()})")
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if entry.get("event") == event:
            return entry
    raise AssertionError(f"no {event!r} within {timeout}s")


def cached_vectors(store: Path) -> int:
    with sqlite3.connect(store / "cache" / "embeddings.sqlite") as db:
        (count,) = db.execute("SELECT count(*) FROM embeddings").fetchone()
    return int(count)


def wait_for_cached_vectors(store: Path, more_than: int, timeout: float = 120) -> None:
    """Until the running indexer has saved its first slab of vectors to the cache."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cached_vectors(store) > more_than:
            return
        time.sleep(0.1)
    raise AssertionError("the indexer saved no vectors in time")


@pytest.mark.slow
def test_sigkill_mid_run_leaves_the_previous_version_live_and_the_next_run_completes(tmp_path):
    store = tmp_path / "store"
    small = write_corpus(tmp_path / "small", documents=2, paragraphs=1)
    live = run_index([small], IndexSettings(store=store)).version

    baseline = cached_vectors(store)
    big = write_corpus(tmp_path / "big", documents=120, paragraphs=4, seed=7)
    process = start_indexer(big, "--store", store)
    entry = wait_for_event(process, "index.embed")
    assert entry["to_embed"] > 200
    wait_for_cached_vectors(store, more_than=baseline)  # well into embedding; the version is not written
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL

    assert st.current_version_id(store) == live
    assert_version_loads(store, live)

    rerun = run_cli(big, "--store", store, "--json")
    assert rerun.returncode == 0, rerun.stderr
    report = last_json(rerun.stdout)
    assert report["documents"] == 120
    # What the killed run had embedded was kept in the cache and is not embedded again.
    assert report["reused"] > 0 and report["embedded"] < report["chunks"]
    assert_version_loads(store, report["version"])
    leftovers = [p.name for p in (store / sg.SEGMENTS).iterdir() if p.name.startswith(st.TMP_PREFIX)]
    assert leftovers == []


@pytest.mark.slow
def test_sigkill_while_writing_the_version_leaves_the_previous_one_live(tmp_path):
    store = tmp_path / "store"
    corpus = write_corpus(tmp_path / "corpus", documents=30, paragraphs=2)
    live = run_index([corpus], IndexSettings(store=store)).version
    # one document changed and one removed: a few chunks to embed, then the run writes its segment, its
    # tombstone and its commit
    edited = corpus / "doc-0001.md"
    edited.write_text(edited.read_text(encoding="utf-8") + "\nA new closing sentence.\n", encoding="utf-8")
    (corpus / "doc-0000.md").unlink()

    process = start_indexer(corpus, "--store", store)
    wait_for_event(process, "index.embed")
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    current = st.current_version_id(store)
    assert current is not None
    assert_version_loads(store, current)  # either the old version or a complete new one, never half of one
    if current == live:
        rerun = run_index([corpus], IndexSettings(store=store))
        assert rerun.published and rerun.documents == 29
        assert_version_loads(store, rerun.version)


@pytest.mark.service
def test_a_second_indexer_fails_clearly_while_the_lock_is_held(tmp_path):
    store = tmp_path / "store"
    corpus = write_corpus(tmp_path / "corpus", documents=1, paragraphs=1)
    with st.writer_lock(store, wait_seconds=0):
        result = run_cli(corpus, "--store", store, "--wait", "0")
    assert result.returncode == 3
    assert "another ragqa-index is writing" in result.stderr and "Traceback" not in result.stderr
    assert st.current_version_id(store) is None


@pytest.mark.slow  # an indexer process that waits, then loads the model
def test_a_second_indexer_waits_for_the_lock_then_completes(tmp_path):
    store = tmp_path / "store"
    corpus = write_corpus(tmp_path / "corpus", documents=1, paragraphs=1)
    held = threading.Event()
    release = threading.Event()

    def hold() -> None:
        with st.writer_lock(store, wait_seconds=0):
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold)
    holder.start()
    held.wait(5)
    process = subprocess.Popen(
        [sys.executable, "-m", "indexer.cli", str(corpus), "--store", str(store), "--wait", "60", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    time.sleep(2)
    assert process.poll() is None, "the second indexer must wait, not fail"
    release.set()
    holder.join()
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert_version_loads(store, last_json(stdout)["version"])


@pytest.mark.slow  # two indexer processes racing, each loading the model
def test_two_indexers_started_together_leave_one_consistent_store(tmp_path):
    store = tmp_path / "store"
    a = write_corpus(tmp_path / "a", documents=20, paragraphs=2, seed=1)
    b = write_corpus(tmp_path / "b", documents=25, paragraphs=2, seed=2)
    first = start_indexer(a, "--store", store)
    second = start_indexer(b, "--store", store)
    out_a, _ = first.communicate(timeout=300)
    out_b, _ = second.communicate(timeout=300)
    assert first.returncode == 0 and second.returncode == 0
    versions = {last_json(out_a)["version"], last_json(out_b)["version"]}
    current = st.current_version_id(store)
    assert current in versions
    assert_version_loads(store, current)
    assert open_reader(store).document_count in (20, 25)


# A merge in a process of its own, on a store of synthetic segments (no model): it logs
# "index.merging" before it reads anything, then writes the merged segment and commits it.
MERGE_WORKER = """
import sys
from pathlib import Path
from indexer import logs
from indexer import segments as sg
from indexer import store as st
logs.configure("INFO")
store = Path(sys.argv[1])
with st.writer_lock(store, 0):
    live = sg.LiveStore.open(store)
    positions = list(range(len(live.segments)))
    entry = sg.merge(live, positions, prefix_of=lambda title: title + "\\n")
    commit = sg.new_commit(live.manifest, [entry])
    sg.publish_commit(store, commit)
    sg.collect_garbage(store, [commit, live.commit])
print(commit.version, flush=True)
"""


def segmented_store(store: Path, parts: int, documents: int) -> sg.Commit:
    """A store of `parts` synthetic segments (random vectors), some documents deleted."""
    from tests.indexer.test_segments import delete
    from tests.indexer.test_store_format import synthetic

    entries = []
    for n in range(parts):
        texts = {
            f"p{n}-d{i}": f"Part {n} document {i} talks of harbours. It ends here {i}."
            for i in range(documents)
        }
        entries.append(sg.write_segment(store, synthetic(texts, seed=n)))
    commit = sg.new_commit(synthetic({"x": "x."}).manifest, entries)
    sg.publish_commit(store, commit)
    return delete(store, commit, ["p0-d1", f"p{parts - 1}-d0"])


@pytest.mark.slow  # SIGKILL at several moments of a merge (it takes about a second here)
@pytest.mark.parametrize("delay", [0.0, 0.4, 0.8, 1.05, 1.3])
def test_sigkill_during_a_merge_loses_nothing(tmp_path: Path, delay: float) -> None:
    store = tmp_path / "store"
    before_commit = segmented_store(store, parts=3, documents=1500)
    before = open_reader(store)
    expected = {d.doc_id: d.text for d in before.documents()}
    process = subprocess.Popen(
        [sys.executable, "-c", MERGE_WORKER, str(store)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    wait_for_event(process, "index.merging")
    time.sleep(delay)
    process.send_signal(signal.SIGKILL)  # a no-op when the merge is already over
    process.wait()

    current = st.current_version_id(store)
    assert current is not None
    after = open_reader(store)  # the commit before the merge, or the merged one: whole either way
    assert {d.doc_id: d.text for d in after.documents()} == expected
    assert len(sg.read_commit(store).segments) in (1, len(before_commit.segments))
    # the next writer removes what the killed one left half-written
    with st.writer_lock(store, 0):
        sg.collect_garbage(store, [sg.read_commit(store)])
    names = {p.name for p in (store / sg.SEGMENTS).iterdir()}
    assert names == {e.name for e in sg.read_commit(store).segments}
    assert {d.doc_id for d in open_reader(store).documents()} == set(expected)
