"""The document loaders: real files of every supported format, built at test time, and bad input.

Bad input must never crash a run: each case ends as a LoadError (one file) or a Skipped entry (one jsonl
line, one unsupported or unlistable path) whose message says why.
"""

from __future__ import annotations

import io
import json
import os
import random
from pathlib import Path

import pytest

from indexer.documents import (
    Document,
    LoadError,
    PathNotFoundError,
    SourceFile,
    decode_text,
    discover,
    load,
)

pytestmark = pytest.mark.unit

MB = 1024 * 1024
FRENCH = "Café Déjà vu résumé. Le garçon a mangé une crème brûlée à côté de la fenêtre. "


# --- helpers ---------------------------------------------------------------------------------------


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content, encoding="utf-8")
    return path


def load_one(path: Path, root: Path | None = None, max_bytes: int = MB) -> Document:
    """Load a file that must give exactly one document and nothing skipped."""
    loaded = load(SourceFile(path=path, root=root or path.parent), max_bytes)
    assert loaded.skipped == []
    assert len(loaded.documents) == 1
    return loaded.documents[0]


def load_error(path: Path, max_bytes: int = MB) -> str:
    """The reason a file cannot be indexed."""
    with pytest.raises(LoadError) as caught:
        load(SourceFile(path=path, root=path.parent), max_bytes)
    return str(caught.value)


def make_pdf(lines: list[str], title: str | None = None, pages: int = 1) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    if title is not None:
        pdf.set_title(title)
    pdf.set_font("helvetica", size=12)
    for page in range(pages):
        pdf.add_page()
        for line in lines:
            pdf.cell(0, 10, f"{line} (page {page + 1})" if pages > 1 else line, new_x="LMARGIN", new_y="NEXT")
    return bytes(pdf.output())


def encrypt_pdf(data: bytes, user_password: str, owner_password: str | None) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password=user_password, owner_password=owner_password, algorithm="AES-256")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


def docx_bytes(document) -> bytes:
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


# --- plain text ------------------------------------------------------------------------------------


def test_utf8_text_keeps_every_character_and_takes_its_title_from_a_heading_like_first_line(tmp_path):
    text = "Über uns\n\nWir sind ein Café in Zürich — seit 1999. 東京にも支店があります。\n"
    path = write(tmp_path / "notes.txt", text)

    doc = load_one(path)

    assert doc.text == text
    assert doc.title == "Über uns"
    assert doc.doc_id == "notes.txt"
    assert doc.source == str(path)
    assert doc.metadata == {}


def test_utf8_with_bom_drops_the_bom(tmp_path):
    path = write(tmp_path / "bom.txt", b"\xef\xbb\xbf" + "Résumé of the meeting\nAll good.".encode())

    doc = load_one(path)

    assert doc.text == "Résumé of the meeting\nAll good."
    assert doc.title == "Résumé of the meeting"


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_legacy_western_text_is_decoded_to_the_right_accented_characters(tmp_path, encoding):
    text = FRENCH * 6
    path = write(tmp_path / "fr.txt", text.encode(encoding))

    doc = load_one(path)

    assert "Café Déjà vu résumé" in doc.text
    assert "garçon" in doc.text and "crème brûlée à côté de la fenêtre" in doc.text
    assert doc.text == text


def test_cp1252_only_characters_euro_quotes_and_dashes_are_decoded(tmp_path):
    text = "Le prix est de 5 € — « très » cher, n’est-ce pas ? Voilà l’œuvre d’André. " * 4
    path = write(tmp_path / "prix.txt", text.encode("cp1252"))

    assert load_one(path).text == text


def test_a_short_legacy_word_is_not_misread_as_utf16(tmp_path):
    """Four cp1252 bytes pass as (nonsense) BOM-less UTF-16; the loader must not take that reading."""
    path = write(tmp_path / "short.txt", "Café".encode("cp1252"))

    assert load_one(path).text == "Café"


@pytest.mark.parametrize(
    ("encoding", "text"),
    [
        (
            "cp1250",
            "Ledňáček říční je průměrně 16,5 cm velký pták z čeledi ledňáčkovitých. Je velmi výrazně "
            "zbarvený s oranžovou spodinou a modrým hřbetem, křídly a temenem. ",
        ),
        ("cp1251", "Съешь же ещё этих мягких французских булок, да выпей чаю. Москва — столица России. " * 2),
    ],
    ids=["czech-cp1250", "russian-cp1251"],
)
def test_other_legacy_encodings_are_still_detected(tmp_path, encoding, text):
    path = write(tmp_path / "other.txt", text.encode(encoding))

    assert load_one(path).text == text


@pytest.mark.parametrize("codec", ["utf-16", "utf-16-be-bom"])
def test_utf16_with_bom_is_decoded(tmp_path, codec):
    text = "Grüße aus Köln\nNaïve café, déjà vu: ça marche.\n"
    data = text.encode("utf-16") if codec == "utf-16" else b"\xfe\xff" + text.encode("utf-16-be")
    path = write(tmp_path / "wide.txt", data)

    doc = load_one(path)

    assert doc.text == text
    assert "\ufeff" not in doc.text
    assert doc.title == "Grüße aus Köln"


def test_windows_and_old_mac_line_endings_become_newlines(tmp_path):
    path = write(tmp_path / "crlf.txt", b"one\r\ntwo\rthree\n")

    assert load_one(path).text == "one\ntwo\nthree\n"


def test_a_first_line_that_is_a_sentence_is_not_a_title_so_the_file_name_is(tmp_path):
    path = write(tmp_path / "meeting-notes.txt", "We met on Monday and agreed on the plan.\nMore later.\n")

    assert load_one(path).title == "meeting-notes"


# --- markdown --------------------------------------------------------------------------------------


def test_markdown_front_matter_gives_title_and_metadata_and_is_not_part_of_the_text(tmp_path):
    path = write(
        tmp_path / "post.md",
        "---\n"
        "title: Release notes\n"
        "date: 2024-01-15\n"
        "subtitle: What changed in 2.0\n"
        "tags: [search, 2024-03-01]\n"
        "---\n"
        "# Version 2.0\n\nFaster indexing.\n",
    )

    doc = load_one(path)

    assert doc.title == "Release notes"
    assert doc.metadata["date"] == "2024-01-15"
    assert doc.metadata["subtitle"] == "What changed in 2.0"
    assert doc.metadata["tags"] == ["search", "2024-03-01"]  # dates inside lists become ISO strings too
    assert "title" not in doc.metadata
    json.dumps(doc.metadata)  # metadata is stored as JSON
    assert doc.text == "# Version 2.0\n\nFaster indexing."
    assert "subtitle" not in doc.text


def test_markdown_without_front_matter_takes_its_title_from_the_first_heading(tmp_path):
    path = write(tmp_path / "guide.md", "Some intro line.\n\n## Getting started ##\n\nRun it.\n\n# Later\n")

    doc = load_one(path)

    assert doc.title == "Getting started"
    assert doc.metadata == {}
    assert "Run it." in doc.text


def test_markdown_with_malformed_front_matter_still_indexes_the_text(tmp_path):
    path = write(tmp_path / "broken.md", "---\ntitle: [unclosed\n---\n# Install\n\nUse pip to install it.\n")

    doc = load_one(path)

    assert "Use pip to install it." in doc.text
    assert doc.title == "Install"
    assert doc.metadata == {}


def test_markdown_without_heading_or_front_matter_is_named_after_the_file(tmp_path):
    path = write(tmp_path / "scratch.markdown", "just some words\n")

    doc = load_one(path)

    assert doc.title == "scratch"
    assert doc.text.strip() == "just some words"


# --- html ------------------------------------------------------------------------------------------


HTML_PAGE = """<!DOCTYPE html>
<html><head>
  <title>  The   Handbook
  </title>
  <meta name="description" content="How we work">
  <style>p { color: red; }</style>
  <script>var secret = "do not index";</script>
</head>
<body>
  <!-- a comment that is not content -->
  <h1>Welcome</h1>
  <p>Read the
     <a href="/manual">manual</a> before you <b>start</b> the machine.</p>
  <div>Second block</div>
  <ul><li>first item</li><li>second item</li></ul>
  <p>Line one<br>Line two</p>
  <pre>code line 1
code line 2</pre>
  <script>alert("nor this")</script>
</body></html>
"""


def test_html_title_text_and_metadata(tmp_path):
    path = write(tmp_path / "handbook.html", HTML_PAGE)

    doc = load_one(path)
    lines = doc.text.splitlines()

    assert doc.title == "The Handbook"
    assert doc.metadata == {"description": "How we work"}
    assert "Read the manual before you start the machine." in lines  # inline tags and source wraps
    assert "Welcome" in lines and "Second block" in lines
    assert "first item" in lines and "second item" in lines
    assert lines.index("Line two") == lines.index("Line one") + 1
    assert lines.index("code line 2") == lines.index("code line 1") + 1
    assert "secret" not in doc.text and "alert" not in doc.text and "color" not in doc.text
    assert "comment" not in doc.text
    assert "The Handbook" not in doc.text  # the head is not body text


def test_html_without_title_is_named_after_its_first_h1(tmp_path):
    path = write(tmp_path / "page.htm", "<html><body><h1>Pricing</h1><p>It is free.</p></body></html>")

    doc = load_one(path)

    assert doc.title == "Pricing"
    assert doc.text == "Pricing\n\nIt is free."


def test_html_with_only_scripts_has_no_text(tmp_path):
    path = write(tmp_path / "app.html", "<html><body><script>render()</script></body></html>")

    assert "no text" in load_error(path)


# --- pdf -------------------------------------------------------------------------------------------


def test_pdf_text_and_title_from_its_metadata(tmp_path):
    path = write(
        tmp_path / "report.pdf", make_pdf(["Revenue grew by ten percent.", "Costs fell."], "Q3 Report")
    )

    doc = load_one(path)

    assert doc.title == "Q3 Report"
    assert "Revenue grew by ten percent." in doc.text
    assert doc.text.index("Revenue") < doc.text.index("Costs fell.")
    assert doc.metadata["pages"] == 1
    assert doc.doc_id == "report.pdf"


def test_pdf_pages_are_all_read_in_order(tmp_path):
    path = write(tmp_path / "long.pdf", make_pdf(["Chapter text"], "Book", pages=3))

    doc = load_one(path)

    assert doc.metadata["pages"] == 3
    positions = [doc.text.index(f"(page {n})") for n in (1, 2, 3)]
    assert positions == sorted(positions)


def test_pdf_without_metadata_title_uses_its_first_line(tmp_path):
    path = write(tmp_path / "untitled.pdf", make_pdf(["Safety instructions", "Wear a helmet."]))

    assert load_one(path).title == "Safety instructions"


@pytest.mark.parametrize(
    "damage",
    [
        lambda pdf: pdf[: len(pdf) // 2],
        lambda pdf: pdf[:300],
        lambda pdf: b"%PDF-1.7\n" + bytes(random.Random(7).randrange(256) for _ in range(2000)),
    ],
    ids=["truncated-half", "truncated-header", "garbage-after-header"],
)
def test_corrupt_pdf_is_reported_as_corrupt(tmp_path, damage):
    path = write(tmp_path / "broken.pdf", damage(make_pdf(["Some text here."], "Title")))

    assert "corrupt" in load_error(path).lower()


def test_pdf_with_a_user_password_is_reported_as_encrypted(tmp_path):
    data = encrypt_pdf(
        make_pdf(["Top secret plans."], "Plans"), user_password="secret", owner_password="owner"
    )
    path = write(tmp_path / "locked.pdf", data)

    reason = load_error(path).lower()

    assert "encrypted" in reason and "password" in reason


def test_pdf_encrypted_with_an_empty_user_password_opens(tmp_path):
    data = encrypt_pdf(
        make_pdf(["Printable but not editable."], "Policy"), user_password="", owner_password="o"
    )
    path = write(tmp_path / "restricted.pdf", data)

    doc = load_one(path)

    assert "Printable but not editable." in doc.text
    assert doc.title == "Policy"


def test_pdf_with_no_text_says_so(tmp_path):
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    path = write(tmp_path / "scan.pdf", bytes(pdf.output()))

    assert "no extractable text" in load_error(path)


# --- docx ------------------------------------------------------------------------------------------


def _docx_with_table():
    import docx

    document = docx.Document()
    document.add_heading("Onboarding", level=1)
    document.add_paragraph("Welcome to the team.")
    table = document.add_table(rows=2, cols=2)
    for (row, col), text in {(0, 0): "Name", (0, 1): "Role", (1, 0): "Ada", (1, 1): "Engineer"}.items():
        table.cell(row, col).text = text
    document.add_paragraph("See you on Monday.")
    return document


def test_docx_paragraphs_and_table_cells_in_document_order_with_core_title(tmp_path):
    document = _docx_with_table()
    document.core_properties.title = "Employee Handbook"
    document.core_properties.author = "HR"
    path = write(tmp_path / "handbook.docx", docx_bytes(document))

    doc = load_one(path)

    assert doc.title == "Employee Handbook"
    assert (
        doc.text
        == "Onboarding\n\nWelcome to the team.\n\nName | Role\n\nAda | Engineer\n\nSee you on Monday."
    )
    assert doc.metadata["author"] == "HR"


def test_docx_without_core_title_is_named_after_its_first_heading(tmp_path):
    document = _docx_with_table()
    document.core_properties.title = ""
    path = write(tmp_path / "untitled.docx", docx_bytes(document))

    assert load_one(path).title == "Onboarding"


def test_docx_merged_cell_text_appears_once(tmp_path):
    document = _docx_with_table()
    table = document.tables[0]
    merged = table.cell(0, 0).merge(table.cell(0, 1))
    merged.text = "Team roster"
    path = write(tmp_path / "merged.docx", docx_bytes(document))

    doc = load_one(path)

    assert doc.text.count("Team roster") == 1
    assert "Ada | Engineer" in doc.text


def test_docx_without_title_or_heading_is_named_after_the_file(tmp_path):
    import docx

    document = docx.Document()
    document.add_paragraph("Only a body paragraph.")
    path = write(tmp_path / "memo.docx", docx_bytes(document))

    doc = load_one(path)

    assert doc.title == "memo"
    assert doc.text == "Only a body paragraph."


def test_corrupt_docx_is_reported(tmp_path):
    path = write(tmp_path / "broken.docx", b"PK\x03\x04 this is not really a zip archive")

    assert "corrupt" in load_error(path).lower()


# --- jsonl -----------------------------------------------------------------------------------------


def test_jsonl_loads_good_lines_and_reports_each_bad_line_with_its_line_number(tmp_path):
    lines = [
        json.dumps(
            {"_id": "d1", "title": "First", "text": "Alpha text.", "metadata": {"lang": "en", "n": 3}}
        ),
        '{"_id": "d2", "title": "Broken", "text": ',
        json.dumps({"title": "No id", "text": "orphan"}),
        json.dumps({"_id": "d3", "title": "Empty", "text": "   "}),
        "",
        json.dumps({"_id": "d1", "title": "Again", "text": "Duplicate text."}),
        json.dumps(["not", "an", "object"]),
        json.dumps({"_id": 42, "text": "Numeric id, no title."}),
    ]
    path = write(tmp_path / "corpus.jsonl", "\n".join(lines) + "\n")

    loaded = load(SourceFile(path=path, root=tmp_path), MB)

    assert [(d.doc_id, d.title, d.text) for d in loaded.documents] == [
        ("d1", "First", "Alpha text."),
        ("42", "42", "Numeric id, no title."),
    ]
    assert loaded.documents[0].metadata == {"lang": "en", "n": 3}
    assert loaded.documents[1].metadata == {}
    assert all(d.source == str(path) for d in loaded.documents)
    reasons = {s.path: s.reason for s in loaded.skipped}
    assert set(reasons) == {f"{path}:{n}" for n in (2, 3, 4, 6, 7)}  # line 5 is blank: not an entry
    assert "invalid JSON" in reasons[f"{path}:2"]
    assert "_id" in reasons[f"{path}:3"]
    assert "text" in reasons[f"{path}:4"]
    assert "duplicate" in reasons[f"{path}:6"] and "d1" in reasons[f"{path}:6"]
    assert "object" in reasons[f"{path}:7"]


def test_jsonl_text_with_unicode_line_separators_stays_one_record(tmp_path):
    """JSON allows U+2028, U+2029 and U+0085 raw inside strings; only "\\n" ends a jsonl line."""
    records = [
        {"_id": "a", "title": "A", "text": "before\u2028after\u2029end\x85tail"},
        {"_id": "b", "title": "B", "text": "second"},
    ]
    path = write(tmp_path / "sep.jsonl", "\n".join(json.dumps(r, ensure_ascii=False) for r in records))

    loaded = load(SourceFile(path=path, root=tmp_path), MB)

    assert loaded.skipped == []
    assert [d.doc_id for d in loaded.documents] == ["a", "b"]
    assert loaded.documents[0].text == "before\u2028after\u2029end\x85tail"


def test_jsonl_with_crlf_line_endings(tmp_path):
    path = write(tmp_path / "win.jsonl", b'{"_id": "x", "text": "one"}\r\n{"_id": "y", "text": "two"}\r\n')

    loaded = load(SourceFile(path=path, root=tmp_path), MB)

    assert loaded.skipped == []
    assert [(d.doc_id, d.text) for d in loaded.documents] == [("x", "one"), ("y", "two")]


# --- bad input -------------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".txt", ".md", ".html"])
def test_binary_content_is_refused_as_binary(tmp_path, suffix):
    rng = random.Random(1234)
    data = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(rng.randrange(256) for _ in range(4096))
    path = write(tmp_path / f"image{suffix}", data)

    assert "binary" in load_error(path)


@pytest.mark.parametrize("suffix", [".txt", ".md", ".html", ".pdf", ".docx", ".jsonl"])
@pytest.mark.parametrize("content", [b"", b"  \n\t\r\n  "], ids=["empty", "whitespace"])
def test_empty_and_whitespace_only_files_are_reported_empty(tmp_path, suffix, content):
    path = write(tmp_path / f"blank{suffix}", content)

    assert "empty" in load_error(path)


def test_a_file_that_vanished_before_loading(tmp_path):
    path = tmp_path / "gone.txt"  # found by discover, deleted before load: it was never created here

    assert "vanished" in load_error(path)


def test_a_file_deleted_between_discover_and_load(tmp_path):
    write(tmp_path / "doomed.md", "# Doomed\n")
    (source,), _ = discover([tmp_path])
    source.path.unlink()

    with pytest.raises(LoadError, match="vanished"):
        load(source, MB)


def test_a_directory_with_a_supported_suffix(tmp_path):
    folder = tmp_path / "archive.txt"
    write(folder / "inner.md", "# Inner\n")

    assert "directory" in load_error(folder)
    assert "directory" in load_error(folder, max_bytes=1)  # not "too large": a folder has no content size
    found, skipped = discover([tmp_path])
    assert [f.relative for f in found] == ["archive.txt/inner.md"]
    assert skipped == []


def test_an_unreadable_file(tmp_path, monkeypatch):
    """Permission denied on read is reported, not raised.

    A test double is used because the tests run as root, which reads a file whatever its permission
    bits say, so chmod 000 cannot produce the error here.
    """
    path = write(tmp_path / "private.txt", "secret")

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_bytes", denied)

    assert "permission denied" in load_error(path)


@pytest.mark.timeout(10)
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="named pipes need a POSIX system")
def test_a_named_pipe_is_refused_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)  # reading it would wait forever for a writer

    assert "not a regular file" in load_error(fifo)


def test_a_file_over_the_size_limit_is_too_large(tmp_path):
    path = write(tmp_path / "big.txt", "x" * 11)

    reason = load_error(path, max_bytes=10)

    assert "too large" in reason and "11" in reason
    assert load_one(path, max_bytes=11).text == "x" * 11  # the limit itself is allowed


def test_every_discovered_file_loads_or_gives_a_reason(tmp_path):
    """A folder of good and bad files: nothing raises anything but LoadError, and nothing is lost."""
    write(tmp_path / "good.txt", "Good text.\n")
    write(tmp_path / "empty.md", "")
    write(tmp_path / "junk.pdf", b"%PDF-1.4 junk")
    write(tmp_path / "bin.txt", b"\x00\x01\x02\xff" * 64)
    write(tmp_path / "docs.jsonl", '{"_id": "j", "text": "ok"}\nnot json\n')
    write(tmp_path / "fake.docx", b"not a zip")

    found, _ = discover([tmp_path])
    documents, reasons = [], {}
    for source in found:
        try:
            loaded = load(source, MB)
        except LoadError as exc:
            reasons[source.relative] = str(exc)
            continue
        documents += loaded.documents
        reasons.update({s.path: s.reason for s in loaded.skipped})

    assert sorted(d.doc_id for d in documents) == ["good.txt", "j"]
    assert set(reasons) == {"empty.md", "junk.pdf", "bin.txt", "fake.docx", f"{tmp_path / 'docs.jsonl'}:2"}
    assert all(reasons.values())


# --- discover --------------------------------------------------------------------------------------


def test_discover_finds_supported_files_recursively_and_skips_hidden_ones(tmp_path):
    for name in [
        "zeta.txt",
        "alpha.md",
        "guide/intro.html",
        "guide/deep/spec.PDF",
        "guide/deep/table.docx",
        "data/corpus.jsonl",
        "page.htm",
        ".hidden.txt",
        ".git/config.md",
        "guide/.drafts/secret.md",
        "image.png",
        "Makefile",
    ]:
        write(tmp_path / name, "x")

    found, skipped = discover([tmp_path])

    assert [f.relative for f in found] == [
        "alpha.md",
        "page.htm",
        "zeta.txt",
        "data/corpus.jsonl",
        "guide/intro.html",
        "guide/deep/spec.PDF",
        "guide/deep/table.docx",
    ]
    assert all(f.root == tmp_path for f in found)
    assert all("\\" not in f.relative for f in found)
    assert sorted((Path(s.path).name, s.reason) for s in skipped) == [
        ("Makefile", "unsupported file type '(none)'"),
        ("image.png", "unsupported file type '.png'"),
    ]


def test_discovered_files_get_ids_relative_to_their_root(tmp_path):
    write(tmp_path / "kb" / "team" / "faq.md", "# FAQ\n")

    (source,), _ = discover([tmp_path / "kb"])
    doc = load_one(source.path, root=source.root)

    assert doc.doc_id == "team/faq.md"
    assert doc.source == str(tmp_path / "kb" / "team" / "faq.md")


def test_discover_a_single_file_uses_its_name_as_id(tmp_path):
    path = write(tmp_path / "sub" / "one.txt", "One\n")

    found, skipped = discover([path])

    assert skipped == []
    assert [(f.path, f.relative) for f in found] == [(path, "one.txt")]


def test_discover_a_single_unsupported_file_reports_it(tmp_path):
    path = write(tmp_path / "table.csv", "a,b\n")

    found, skipped = discover([path])

    assert found == []
    assert [(s.path, s.reason) for s in skipped] == [(str(path), "unsupported file type '.csv'")]


def test_discover_a_missing_path_raises(tmp_path):
    missing = tmp_path / "nope"

    with pytest.raises(PathNotFoundError, match="nope"):
        discover([tmp_path, missing])


def test_discover_order_is_stable_and_follows_the_given_paths(tmp_path):
    names = ["b.txt", "a.txt", "c/z.md", "c/a.md", "d.md"]
    for name in reversed(names):  # creation order must not matter
        write(tmp_path / "one" / name, "x")
    write(tmp_path / "two" / "0.txt", "x")

    first, _ = discover([tmp_path / "two", tmp_path / "one"])
    again, _ = discover([tmp_path / "two", tmp_path / "one"])

    assert first == again
    assert [f.relative for f in first] == ["0.txt", "a.txt", "b.txt", "d.md", "c/a.md", "c/z.md"]
    assert [f.root.name for f in first] == ["two", "one", "one", "one", "one", "one"]


def test_discover_reports_a_folder_it_cannot_list(tmp_path, monkeypatch):
    """An unlistable folder is a Skipped entry, not a silent hole in the index.

    A test double is used because the tests run as root, which lists any folder whatever its permission
    bits say; os.walk lists folders through os.scandir, so that is what fails here.
    """
    write(tmp_path / "open" / "a.txt", "a")
    write(tmp_path / "locked" / "b.txt", "b")
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path).name == "locked":
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)

    found, skipped = discover([tmp_path])

    assert [f.relative for f in found] == ["open/a.txt"]
    assert [(s.path, s.reason) for s in skipped] == [
        (str(tmp_path / "locked"), "folder cannot be listed: Permission denied")
    ]


def test_decode_text_refuses_undecodable_binary():
    with pytest.raises(LoadError, match="binary"):
        decode_text(b"\x00\xff\xfe\x00" * 100)
