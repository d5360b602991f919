"""Loaders by format: find the files under the given paths and turn each into Documents.

A Document has a stable id (the path relative to the indexed root, or a jsonl line's `_id`), a
title, its source path, its text and metadata. A file that cannot be read becomes a `Skipped`
entry with the reason; it never stops the run.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import stat
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from pathlib import Path
from typing import Any

SUPPORTED_SUFFIXES = frozenset({".txt", ".md", ".markdown", ".html", ".htm", ".pdf", ".docx", ".jsonl"})
MAX_TITLE_CHARS = 200


@dataclass(frozen=True)
class Document:
    doc_id: str
    title: str
    source: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Skipped:
    path: str
    reason: str


@dataclass(frozen=True)
class SourceFile:
    """A file found under an indexed root: `path` as the user can see it, `root` it is relative to."""

    path: Path
    root: Path

    @property
    def relative(self) -> str:
        return self.path.relative_to(self.root).as_posix()


@dataclass
class Loaded:
    documents: list[Document] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)


class LoadError(Exception):
    """The file cannot be indexed; the message is the reason shown to the user."""


class PathNotFoundError(Exception):
    pass


def discover(paths: list[Path]) -> tuple[list[SourceFile], list[Skipped]]:
    """Every supported, non-hidden file under `paths`, in a stable order, and the files passed over."""
    found: list[SourceFile] = []
    skipped: list[Skipped] = []
    for given in paths:
        if not given.exists():
            raise PathNotFoundError(f"path does not exist: {given}")
        if given.is_file():
            candidates: Iterator[Path] = iter([given])
            root = given.parent
        else:
            candidates = _walk(given, skipped)
            root = given
        for path in candidates:
            if path.suffix.lower() in SUPPORTED_SUFFIXES:
                found.append(SourceFile(path=path, root=root))
            else:
                skipped.append(Skipped(str(path), f"unsupported file type {path.suffix or '(none)'!r}"))
    return found, skipped


def _walk(folder: Path, skipped: list[Skipped]) -> Iterator[Path]:
    def unlisted(exc: OSError) -> None:
        skipped.append(
            Skipped(str(exc.filename or folder), f"folder cannot be listed: {exc.strerror or exc}")
        )

    for dirpath, dirnames, filenames in os.walk(folder, onerror=unlisted):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if not name.startswith("."):
                yield Path(dirpath) / name


def load(source: SourceFile, max_bytes: int) -> Loaded:
    """Read one file into documents. Raises LoadError with the reason when nothing can be used."""
    try:
        info = source.path.stat()
        if stat.S_ISDIR(info.st_mode):
            raise LoadError("is a directory")
        if not stat.S_ISREG(info.st_mode):  # reading a named pipe would block the run forever
            raise LoadError("not a regular file (a pipe, socket or device)")
        size = info.st_size
        if size > max_bytes:
            raise LoadError(f"file too large ({size} bytes; the limit is {max_bytes})")
        data = source.path.read_bytes()
    except FileNotFoundError as exc:
        raise LoadError("file vanished before it could be read") from exc
    except PermissionError as exc:
        raise LoadError("unreadable: permission denied") from exc
    except IsADirectoryError as exc:
        raise LoadError("is a directory") from exc
    except OSError as exc:
        raise LoadError(f"unreadable: {exc.strerror or exc}") from exc
    if not data.strip():
        raise LoadError("empty file")

    suffix = source.path.suffix.lower()
    if suffix == ".jsonl":
        return _load_jsonl(data, source)
    loader = _LOADERS[suffix]
    title, text, metadata = loader(data)
    text = _normalise_newlines(text)
    if not text.strip():
        raise LoadError("no text found in the file")
    title = _clean_title(title) or source.path.stem
    document = Document(
        doc_id=source.relative, title=title, source=str(source.path), text=text, metadata=metadata
    )
    return Loaded(documents=[document])


# --- text ------------------------------------------------------------------------------------


def decode_text(data: bytes) -> str:
    """UTF-8 when it is UTF-8; otherwise the encoding charset-normalizer detects; binary is refused."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        pass
    import charset_normalizer

    has_bom = data.startswith((b"\xff\xfe", b"\xfe\xff"))
    if b"\x00" in data[:8192] and not has_bom:
        raise LoadError("binary file (not text)")
    # Without a BOM, UTF-16/32 text has NULs (refused above): such a guess misreads short legacy text.
    readings = [
        str(match)
        for match in charset_normalizer.from_bytes(data)
        if has_bom or not match.encoding.startswith(("utf_16", "utf_32"))
    ]
    if not readings:
        raise LoadError("binary file or unknown text encoding")
    if has_bom or not _is_latin(readings[0]):
        return readings[0]
    # charset-normalizer cannot tell the single-byte Latin code pages apart (it reads French cp1252 as
    # cp1257: "Déją vu"): take the reading whose accented letters one language actually writes, in
    # its order on a tie; cp1252, the usual legacy encoding, is a candidate even when it dropped it.
    with contextlib.suppress(UnicodeDecodeError):
        readings.append(data.decode("cp1252"))
    return max(readings, key=_language_fit)


# The letters beyond ASCII that Latin-script languages write.
_LATIN_ALPHABETS = (
    "àâæçéèêëîïôœùûüÿ",  # French
    "äöüß",  # German
    "áéíñóúü",  # Spanish
    "àáâãçéêíóôõú",  # Portuguese
    "àèéìíîòóù",  # Italian
    "àçèéíïòóúü",  # Catalan
    "áäéëèïóöü",  # Dutch
    "åäöé",  # Swedish, Finnish
    "æøåéó",  # Danish, Norwegian
    "áðéíóúýþæö",  # Icelandic
    "ąćęłńóśźż",  # Polish
    "áčďéěíňóřšťúůýž",  # Czech
    "áäčďéíĺľňóôŕšťúýž",  # Slovak
    "áéíóöőúüű",  # Hungarian
    "čćđšž",  # Croatian, Slovene, Bosnian
    "ăâîșțşţ",  # Romanian
    "ąčęėįšųūž",  # Lithuanian
    "āčēģīķļņšūž",  # Latvian
    "äõöüšž",  # Estonian
    "çğıöşü",  # Turkish
)


def _is_latin(text: str) -> bool:
    return all(
        unicodedata.name(c, "").startswith("LATIN") for c in set(text) if c.isalpha() and not c.isascii()
    )


def _language_fit(text: str) -> float:
    """The share of the accented letters (and combining accents) in `text` one language's alphabet holds."""
    counts: dict[str, int] = {}
    for char in text[:100_000].lower():
        if not char.isascii() and (char.isalpha() or unicodedata.combining(char)):
            counts[char] = counts.get(char, 0) + 1
    if not counts:
        return 1.0
    total = sum(counts.values())
    return max(sum(n for c, n in counts.items() if c in alphabet) for alphabet in _LATIN_ALPHABETS) / total


def _normalise_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")


def _clean_title(title: Any) -> str:
    if title is None:
        return ""
    return " ".join(str(title).split())[:MAX_TITLE_CHARS]


def _load_txt(data: bytes) -> tuple[str, str, dict[str, Any]]:
    text = decode_text(data)
    if "\x00" in text:
        raise LoadError("binary file (not text)")
    return _plain_text_title(text), text, {}


def _plain_text_title(text: str) -> str:
    """A first line that reads like a heading (short, no closing full stop) names the document."""
    for line in text.splitlines():
        line = line.strip()
        if line:
            if len(line) <= 120 and not line.endswith((".", ",", ";", ":")):
                return line
            return ""
    return ""


_ATX_HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)


def _load_markdown(data: bytes) -> tuple[str, str, dict[str, Any]]:
    import frontmatter

    raw = decode_text(data)
    try:
        post = frontmatter.loads(raw)
        metadata = {str(k): _json_safe(v) for k, v in post.metadata.items()}
        text = post.content
    except Exception:  # malformed front matter: index the whole file as text rather than lose it
        metadata, text = {}, raw
    title = metadata.pop("title", "")
    if not title:
        heading = _ATX_HEADING.search(text)
        title = heading.group(1) if heading else ""
    return str(title), text, metadata


def _json_safe(value: Any) -> Any:
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return str(value)


# fmt: off
_BLOCK_TAGS = [
    "address", "article", "aside", "blockquote", "dd", "details", "dialog", "div", "dl", "dt", "fieldset",
    "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6", "header", "hr", "li",
    "main", "nav", "ol", "p", "pre", "section", "summary", "table", "tr", "ul", "caption",
]
# fmt: on


def _load_html(data: bytes) -> tuple[str, str, dict[str, Any]]:
    from bs4 import BeautifulSoup, NavigableString

    soup = BeautifulSoup(decode_text(data), "lxml")
    title = soup.title.get_text() if soup.title else ""
    metadata: dict[str, Any] = {}
    description = soup.find("meta", attrs={"name": "description"})  # in <head>: read it before dropping that
    if description is not None and description.get("content"):
        metadata["description"] = str(description["content"])
    for tag in soup(["script", "style", "noscript", "template", "head", "svg"]):
        tag.decompose()
    for string in soup.find_all(string=True):  # a line break in the source is a space, except in <pre>
        if type(string) is NavigableString and string.find_parent(["pre", "textarea"]) is None:
            string.replace_with(re.sub(r"\s+", " ", string))
    for tag in soup.find_all("br"):
        tag.replace_with("\n")
    for tag in soup.find_all(["td", "th"]):
        tag.insert_after(" ")
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_before("\n\n")
        tag.insert_after("\n\n")
    if not title:
        heading = soup.find("h1")
        title = heading.get_text() if heading else ""
    return title, _tidy_whitespace(soup.get_text()), metadata


def _tidy_whitespace(text: str) -> str:
    lines = [" ".join(line.split()) for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def _load_pdf(data: bytes) -> tuple[str, str, dict[str, Any]]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                opened = reader.decrypt("")
            except Exception as exc:
                raise LoadError(f"encrypted PDF that cannot be opened: {exc}") from exc
            if not opened:
                raise LoadError("encrypted PDF (a password is required)")
        pages = list(reader.pages)
    except LoadError:
        raise
    except (PdfReadError, Exception) as exc:
        raise LoadError(f"corrupt PDF: {exc}") from exc
    texts: list[str] = []
    failed: list[int] = []
    for number, page in enumerate(pages, start=1):
        try:
            texts.append(page.extract_text() or "")
        except Exception:
            failed.append(number)
    text = "\n\n".join(t.strip() for t in texts if t.strip())
    if not text:
        reason = "no extractable text (a scanned PDF needs OCR first)"
        if failed:
            reason = f"corrupt PDF: no page could be read ({len(failed)} failed)"
        raise LoadError(reason)
    metadata: dict[str, Any] = {"pages": len(pages)}
    if failed:
        metadata["unreadable_pages"] = failed
    title = ""
    try:
        info = reader.metadata
        if info is not None:
            title = info.title or ""
            if info.author:
                metadata["author"] = str(info.author)
    except Exception:
        pass
    if not _clean_title(title):
        title = _plain_text_title(text)
    return str(title), text, metadata


def _load_docx(data: bytes) -> tuple[str, str, dict[str, Any]]:
    import docx
    from docx.table import Table

    try:
        document = docx.Document(io.BytesIO(data))
    except Exception as exc:
        raise LoadError(f"corrupt or unreadable DOCX: {exc}") from exc
    blocks: list[str] = []
    heading = ""
    for item in document.iter_inner_content():
        if isinstance(item, Table):
            for row in item.rows:
                row_cells = row.cells  # a merged cell is listed once per grid column it spans: keep one
                cells = [
                    c.text.strip()
                    for i, c in enumerate(row_cells)
                    if i == 0 or c._tc is not row_cells[i - 1]._tc
                ]
                if any(cells):
                    blocks.append(" | ".join(cells))
            continue
        text = item.text.strip()
        if not text:
            continue
        style = (item.style.name if item.style is not None else "") or ""
        if not heading and (style.startswith("Heading") or style == "Title"):
            heading = text
        blocks.append(text)
    properties = document.core_properties
    metadata: dict[str, Any] = {}
    if properties.author:
        metadata["author"] = properties.author
    if properties.created:
        metadata["created"] = properties.created.isoformat()
    return properties.title or heading, "\n\n".join(blocks), metadata


def _load_jsonl(data: bytes, source: SourceFile) -> Loaded:
    """One document a line: `{"_id", "title", "text", "metadata"?}` (the layout of ../shared/data)."""
    loaded = Loaded()
    seen: set[str] = set()
    text = decode_text(data)
    # Lines end at "\n" only: splitlines() would also cut at U+2028, U+0085... that JSON strings may hold.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        where = f"{source.path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            loaded.skipped.append(Skipped(where, f"invalid JSON: {exc.msg}"))
            continue
        if not isinstance(record, dict):
            loaded.skipped.append(Skipped(where, "a line must be a JSON object"))
            continue
        doc_id = record.get("_id")
        body = record.get("text")
        if not isinstance(doc_id, str | int) or str(doc_id) == "":
            loaded.skipped.append(Skipped(where, 'missing "_id"'))
            continue
        doc_id = str(doc_id)
        if not isinstance(body, str) or not body.strip():
            loaded.skipped.append(Skipped(where, f'document {doc_id!r} has no "text"'))
            continue
        if doc_id in seen:
            loaded.skipped.append(Skipped(where, f"duplicate _id {doc_id!r}"))
            continue
        seen.add(doc_id)
        metadata = record.get("metadata")
        loaded.documents.append(
            Document(
                doc_id=doc_id,
                title=_clean_title(record.get("title")) or doc_id,
                source=str(source.path),
                text=_normalise_newlines(body),
                metadata={str(k): _json_safe(v) for k, v in metadata.items()}
                if isinstance(metadata, dict)
                else {},
            )
        )
    if not loaded.documents and not loaded.skipped:
        raise LoadError("no documents in the file")
    return loaded


_LOADERS = {
    ".txt": _load_txt,
    ".md": _load_markdown,
    ".markdown": _load_markdown,
    ".html": _load_html,
    ".htm": _load_html,
    ".pdf": _load_pdf,
    ".docx": _load_docx,
}
