"""The store as segments (indexer.segments): a commit of several segments reads as one corpus, deleted
documents are gone from every read, an update writes what it changes, merges keep every answer, damaged
files are refused at open, a hot reload opens only the new segments, and a format-2 store is migrated.
No model: synthetic versions with random vectors (tests/indexer/test_store_format.py's `synthetic`)."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from indexer import segments as sg
from indexer import store as st
from indexer.filters import ChunkFilter
from indexer.reader import LocalStoreReader, StoreReader, open_reader
from service.holder import IndexHolder
from tests.indexer.test_store_format import MODEL, synthetic, write

pytestmark = pytest.mark.unit

PARTS = {
    "a": {f"a{n}": f"Alpha sentence number {n} about harbours. Second alpha sentence {n}." for n in range(6)},
    "b": {f"b{n}": f"Bravo text {n} on treaties and summits. More bravo words {n}." for n in range(5)},
    "c": {"c0": "Charlie alone mentions a pipeline. And a valley."},
}


def part(name: str, seed: int) -> st.VersionData:
    return synthetic(PARTS[name], seed=seed)


def commit_of(store: Path, parts: list[st.VersionData]) -> sg.Commit:
    entries = [sg.write_segment(store, data) for data in parts]
    commit = sg.new_commit(parts[0].manifest, entries)
    sg.publish_commit(store, commit)
    return commit


def whole(*parts: st.VersionData) -> st.VersionData:
    """The parts as one version's data (chunk ids renumbered in order)."""
    documents = [d for p in parts for d in p.documents]
    chunks = [c for p in parts for c in p.chunks]
    chunks = [replace(c, chunk_id=n) for n, c in enumerate(chunks)]
    first = parts[0].manifest
    return st.VersionData(
        replace(first, counts=st.Counts(len(documents), len(chunks), sum(len(c.sentences) for c in chunks))),
        documents,
        chunks,
        [],
        np.concatenate([p.vectors for p in parts]),
        np.concatenate([p.sentence_vectors for p in parts]),
        [t for p in parts for t in p.bm25_texts],
    )


def delete(store: Path, commit: sg.Commit, doc_ids: list[str]) -> sg.Commit:
    """A commit with these documents deleted, as an index run writes one."""
    live = sg.LiveStore.open(store)
    rows: dict[int, list[int]] = {}
    for doc_id in doc_ids:
        at = live.find(doc_id)
        assert at is not None
        rows.setdefault(at[0], []).append(at[1])
    entries = []
    for n, segment in enumerate(live.segments):
        if n in rows:
            deleted = np.union1d(segment.deleted, np.asarray(rows[n], np.int64))
            chunks = len(sg.deleted_chunks(segment.version.chunks.document_rows, deleted))
            entries.append(sg.write_deletions(store, segment.entry, deleted, chunks))
        else:
            entries.append(segment.entry)
    new = sg.new_commit(commit.manifest, entries)
    sg.publish_commit(store, new)
    return new


def texts_by_document(reader: StoreReader) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for chunk in reader.chunk_records():
        found.setdefault(chunk.doc_id, []).append(reader.chunk_text(chunk.chunk_id))
    return found


@pytest.fixture
def parts() -> list[st.VersionData]:
    return [part("a", 1), part("b", 2), part("c", 3)]


@pytest.fixture
def three(tmp_path: Path, parts: list[st.VersionData]) -> Path:
    store = tmp_path / "store"
    commit_of(store, parts)
    return store


def test_a_commit_of_segments_reads_as_one_version(tmp_path: Path, three: Path, parts) -> None:
    reader = open_reader(three, model_name=MODEL)
    write(tmp_path / "one", whole(*parts))
    one = open_reader(tmp_path / "one")
    assert reader.document_count == one.document_count == 12
    assert reader.chunk_count == one.chunk_count
    assert [d.doc_id for d in reader.documents()] == [d.doc_id for d in one.documents()]
    assert [d.doc_id for d in reader.documents(5, 8)] == ["a5", "b0", "b1"]
    assert [c.chunk_id for c in reader.chunk_records()] == list(range(reader.chunk_count))
    assert [reader.chunk(i) for i in range(reader.chunk_count)] == list(one.chunk_records())
    assert texts_by_document(reader) == texts_by_document(one)
    assert reader.document("b3") == one.document("b3")
    rng = np.random.default_rng(0)
    for _ in range(5):
        vector = rng.standard_normal(384).astype(np.float32)
        vector /= np.linalg.norm(vector)
        # the same vectors in the same order: the same ids and cosines, exact search either way
        got, want = reader.dense(vector, 7), one.dense(vector, 7)
        assert [i for i, _ in got] == [i for i, _ in want]
        assert np.allclose([s for _, s in got], [s for _, s in want], atol=1e-6)
        ids = [0, 5, reader.chunk_count - 1]
        assert np.allclose(reader.chunk_vectors(ids), one.chunk_vectors(ids))
        assert np.allclose(reader.sentence_vectors_of(ids[-1]), one.sentence_vectors_of(ids[-1]))
    # corpus-level statistics: the idf is the whole corpus's, whichever segment a chunk is in
    assert {i for i, _ in reader.lexical("pipeline valley", 5)} == {
        i for i, _ in one.lexical("pipeline valley", 5)
    }
    assert reader.word_frequencies() == one.word_frequencies()
    assert reader.manifest.counts == st.Counts(12, one.chunk_count, one.manifest.counts.sentences)


def test_deleted_documents_are_gone_from_every_read(three: Path) -> None:
    before = open_reader(three)
    commit = sg.read_commit(three)
    gone = {"a2", "b0", "c0"}
    gone_chunks = {c.chunk_id for c in before.chunk_records() if c.doc_id in gone}
    delete(three, commit, sorted(gone))
    reader = open_reader(three)
    assert reader.document_count == 9
    assert reader.chunk_count == before.chunk_count - len(gone_chunks)
    assert {d.doc_id for d in reader.documents()} == {d.doc_id for d in before.documents()} - gone
    assert [d.doc_id for d in reader.documents(5, 7)] == ["b1", "b2"]  # positions skip the deleted
    assert reader.chunks_of("a3") == before.chunks_of("a3") == 1
    for doc_id in gone:
        assert reader.chunks_of(doc_id) == 0 and before.chunks_of(doc_id) == 1
        assert reader.find_document(doc_id) is None
        with pytest.raises(KeyError):
            reader.document(doc_id)
    ids = [c.chunk_id for c in reader.chunk_records()]
    assert not gone_chunks & set(ids)
    for chunk_id in gone_chunks:
        with pytest.raises(IndexError):
            reader.chunk(chunk_id)
    # the others keep their ids and texts
    for chunk_id in ids:
        assert reader.chunk(chunk_id) == before.chunk(chunk_id)
    vector = before.chunk_vectors([min(gone_chunks)])[0]
    hits = reader.dense(vector, reader.chunk_count + 10)
    assert len(hits) == reader.chunk_count and not gone_chunks & {i for i, _ in hits}
    assert not gone_chunks & {i for i, _ in reader.lexical("alpha bravo charlie pipeline", 100)}
    matching = reader.matching_chunks(ChunkFilter(source_prefix="folder/"))
    assert matching is not None and set(matching.tolist()) == set(ids)
    assert reader.matching_chunks(ChunkFilter(doc_ids=("c0",))).tolist() == []  # type: ignore[union-attr]
    frequencies = reader.word_frequencies()
    assert frequencies is not None and "charli" not in frequencies.counts
    assert frequencies.texts == reader.chunk_count


def test_an_update_of_one_document_writes_that_document_not_the_corpus(tmp_path: Path) -> None:
    big = synthetic({f"d{n}": f"Document {n} says something. It has two sentences." for n in range(400)})
    store = tmp_path / "store"
    commit = commit_of(store, [big])
    before = {p: p.stat().st_mtime_ns for p in store.rglob("*") if p.is_file()}
    size_before = sum(p.stat().st_size for p in before)

    one = synthetic({"d7": "Document 7 was rewritten. Its new text is here."}, seed=9)
    live = sg.LiveStore.open(store)
    at = live.find("d7")
    assert at is not None
    old = sg.write_deletions(store, live.segments[0].entry, np.array([at[1]], np.int64), 1)
    new = sg.new_commit(commit.manifest, [old, sg.write_segment(store, one)])
    sg.publish_commit(store, new)

    after = {p: p.stat() for p in store.rglob("*") if p.is_file()}
    written = sum(s.st_size for p, s in after.items() if p not in before or s.st_mtime_ns != before[p])
    unchanged = [p for p in before if p in after and after[p].st_mtime_ns == before[p]]
    assert all(p in unchanged for p in before if sg.SEGMENTS in p.parts)  # the old segment is untouched
    assert written < size_before / 10, (written, size_before)
    reader = open_reader(store)
    assert reader.document("d7").text == "Document 7 was rewritten. Its new text is here."
    assert reader.document_count == 400


def test_a_reload_opens_only_the_new_segments(three: Path) -> None:
    first = LocalStoreReader.open(three)
    commit = sg.read_commit(three)
    extra = synthetic({"z0": "Zulu is new here. It arrives later."}, seed=7)
    entries = [*commit.segments, sg.write_segment(three, extra)]
    sg.publish_commit(three, sg.new_commit(commit.manifest, entries))
    second = LocalStoreReader.open(three, previous=first)
    shared = [a is b for a, b in zip(first._placed, second._placed, strict=False)]
    assert len(second._placed) == 4
    assert all(p.segment is q.segment for p, q in zip(first._placed, second._placed[:3], strict=True)), shared
    assert second.document("z0").title.startswith("Title")
    assert first.find_document("z0") is None  # the old reader is unchanged


@pytest.mark.parametrize("damage", ["truncate", "flip", "remove"])
def test_a_damaged_segment_file_is_refused_at_open_and_the_service_keeps_serving(
    three: Path, damage: str, caplog: pytest.LogCaptureFixture
) -> None:
    holder = IndexHolder(three, MODEL, interval=3600)
    holder.refresh()
    served = holder.current.version_id
    commit = sg.read_commit(three)
    extra = synthetic({"z0": "Zulu is new here. It arrives later."}, seed=7)
    entry = sg.write_segment(three, extra)
    sg.publish_commit(three, sg.new_commit(commit.manifest, [*commit.segments, entry]))
    victim = three / sg.SEGMENTS / entry.name / "sentences.npy"
    if damage == "truncate":
        os.truncate(victim, victim.stat().st_size - 10)
    elif damage == "flip":
        raw = bytearray(victim.read_bytes())
        raw[len(raw) // 2] ^= 0xFF
        victim.write_bytes(bytes(raw))
    else:
        victim.unlink()
    expected = {"truncate": "truncated", "flip": "checksum", "remove": "missing"}[damage]
    with pytest.raises(st.StoreError, match=expected):
        open_reader(three)
    with caplog.at_level(logging.ERROR, logger="ragqa.service"):
        assert holder.refresh() is False
    assert holder.current.version_id == served
    assert holder.last_error is not None and "sentences.npy" in holder.last_error


def test_a_damaged_tombstone_is_refused(three: Path) -> None:
    commit = delete(three, sg.read_commit(three), ["a1"])
    entry = next(e for e in commit.segments if e.deletions is not None)
    assert entry.deletions is not None
    path = three / sg.TOMBSTONES / entry.deletions.file
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(st.StoreError, match="deletions of segment"):
        open_reader(three)


def test_merging_keeps_every_answer_and_drops_the_deleted(three: Path) -> None:
    commit = delete(three, sg.read_commit(three), ["a0", "b4"])
    before = open_reader(three)
    live = sg.LiveStore.open(three)
    entry = sg.merge(live, [0, 1, 2], prefix_of=lambda title: pytest.fail("the prefixes are stored"))
    merged = sg.new_commit(commit.manifest, [entry])
    sg.publish_commit(three, merged)
    after = open_reader(three)
    assert entry.deletions is None and entry.documents == 10
    assert [d for d in before.documents()] == [d for d in after.documents()]
    assert sorted(texts_by_document(before).items()) == sorted(texts_by_document(after).items())
    assert after.word_frequencies() == before.word_frequencies()
    vector = before.chunk_vectors([3])[0]
    old = [(before.chunk(i).doc_id, round(s, 5)) for i, s in before.dense(vector, 5)]
    new = [(after.chunk(i).doc_id, round(s, 5)) for i, s in after.dense(vector, 5)]
    assert old == new
    # BM25's statistics count deleted documents until a merge drops them (as Lucene's): the scores move,
    # the order of these equally long texts does not
    old_lexical = [before.chunk(i).doc_id for i, _ in before.lexical("bravo treaties pipeline", 6)]
    new_lexical = [after.chunk(i).doc_id for i, _ in after.lexical("bravo treaties pipeline", 6)]
    assert old_lexical == new_lexical and "c0" in new_lexical
    # the merged-away segments go when no kept commit lists them
    removed = sg.collect_garbage(three, [merged])
    assert {p.name for p in (three / sg.SEGMENTS).iterdir()} == {entry.name}
    assert not any((three / sg.TOMBSTONES).iterdir())
    assert any(r.startswith("commits/") for r in removed)
    assert open_reader(three).document_count == 10


def test_the_merge_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    def entry(chunks: int, deleted: int = 0) -> sg.SegmentEntry:
        deletions = sg.Deletions("x", deleted, deleted, sg.FileSum(0, 0)) if deleted else None
        return sg.SegmentEntry("s", chunks, chunks, chunks, {}, deletions)

    monkeypatch.setattr(sg, "MERGE_FACTOR", 4)
    assert sg.merge_plan([entry(1000), entry(3), entry(2), entry(1)]) == []
    assert sg.merge_plan([entry(1000), entry(3), entry(2), entry(1), entry(1)]) == [1, 2, 3, 4]
    assert sg.merge_plan([entry(1000, deleted=600), entry(3)]) == [0]
    assert sg.merge_plan([entry(1000, deleted=400), entry(3)]) == []


def test_leftovers_of_a_crashed_run_are_removed(three: Path) -> None:
    commit = sg.read_commit(three)
    (three / sg.SEGMENTS / f"{st.TMP_PREFIX}half").mkdir()
    (three / sg.SEGMENTS / "orphan").mkdir()
    (three / sg.COMMITS / "orphan.json").write_text("{}")
    removed = sg.collect_garbage(three, [commit])
    assert sorted(removed) == ["commits/orphan.json", f"segments/{st.TMP_PREFIX}half", "segments/orphan"]
    assert open_reader(three).document_count == 12


def test_a_format_2_store_is_read_then_migrated_without_copying(
    tmp_path: Path, parts, caplog: pytest.LogCaptureFixture
) -> None:
    store = tmp_path / "store"
    folder = write(store, whole(*parts))
    legacy = open_reader(store)
    assert legacy.document_count == 12
    with caplog.at_level(logging.WARNING, logger="ragqa.indexer"):
        commit = sg.migrate(store)
    assert commit is not None and st.current_version_id(store) == commit.version
    assert any(r.message == "store.migrated" for r in caplog.records)
    segment = store / sg.SEGMENTS / commit.segments[0].name
    assert (segment / "index.faiss").stat().st_ino == (folder / "index.faiss").stat().st_ino  # a link
    migrated = open_reader(store)
    assert list(migrated.chunk_records()) == list(legacy.chunk_records())
    assert sg.migrate(store) is None  # once
    assert json.loads(sg.commit_path(store, commit.version).read_text())["format"] == sg.FORMAT
    sg.collect_garbage(store, [commit])
    assert not st.versions_dir(store).exists() or not any(st.versions_dir(store).iterdir())
    assert open_reader(store).document("a3").text == legacy.document("a3").text
