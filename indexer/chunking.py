"""Sentence-aware chunking, budgeted in the embedding model's own tokens.

Sentences come from syntok (a maintained rule-based segmenter). Chunks are runs of whole sentences
that fit the model's window together with the title that is embedded in front of them, so that no
chunk is silently truncated; consecutive chunks overlap by whole sentences. A sentence longer than
the budget on its own is cut at token boundaries. Every span is a pair of character offsets into
the document text: `text[start:end]` is the chunk, and each sentence span lies inside it.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from dataclasses import dataclass
from typing import Any, Protocol

Span = tuple[int, int]
MAX_TITLE_TOKENS = 32


class Tokenizer(Protocol):
    """The part of a Hugging Face fast tokenizer that chunking uses."""

    def __call__(self, text: Any, **kwargs: Any) -> Any: ...


@dataclass(frozen=True)
class Chunk:
    start: int
    end: int
    sentences: tuple[Span, ...]


@dataclass(frozen=True)
class ChunkerSettings:
    max_tokens: int  # the model's window, special tokens included
    overlap_sentences: int = 1
    embed_title: bool = True


_BREAK = re.compile(r"\n[^\S\n]*\n\s*|^#{1,6}[ \t][^\n]*\n\s*", re.MULTILINE)


def split_sentences(text: str) -> list[Span]:
    """Sentence spans covering the text's non-blank content, trailing white space trimmed."""
    from syntok import segmenter

    starts: list[int] = []
    for paragraph in segmenter.analyze(text):
        for sentence in paragraph:
            if sentence:
                starts.append(sentence[0].offset)
    # A blank line, or the end of a Markdown heading line, always ends a sentence.
    starts += [m.end() for m in _BREAK.finditer(text) if m.end() < len(text)]
    starts = sorted(set(starts))
    # syntok skips U+200B as white space, Python does not: keep what comes before the first token.
    lead = len(text) - len(text.lstrip())
    if lead < len(text):
        starts[:1] = [min(starts[0], lead) if starts else lead]
    spans: list[Span] = []
    for i, start in enumerate(starts):
        end = starts[i + 1] if i + 1 < len(starts) else len(text)
        sentence = text[start:end]
        # syntok takes U+001C..U+001F for text, Python for white space: trim both ends alike.
        start += len(sentence) - len(sentence.lstrip())
        end = start + len(sentence.strip())
        if end > start:
            spans.append((start, end))
    return spans


class Chunker:
    def __init__(self, tokenizer: Tokenizer, settings: ChunkerSettings) -> None:
        self.tokenizer = tokenizer
        self.settings = settings
        self.special_tokens = len(tokenizer("", add_special_tokens=True)["input_ids"])

    def embed_prefix(self, title: str) -> str:
        """The title as it is embedded in front of every chunk (cut to MAX_TITLE_TOKENS, or less)."""
        # At most MAX_TITLE_TOKENS, and never more than half of the window left after the special tokens:
        # a long title must not leave a small window too little room for the chunk.
        limit = min(MAX_TITLE_TOKENS, (self.settings.max_tokens - self.special_tokens) // 2)
        if not self.settings.embed_title or not title.strip() or limit < 1:
            return ""
        offsets = self._offsets(title)
        if len(offsets) > limit:
            title = title[: offsets[limit - 1][1]]
        return title + "\n"

    def embed_text(self, title: str, chunk_text: str) -> str:
        return self.embed_prefix(title) + chunk_text

    def chunk(self, text: str, title: str = "") -> list[Chunk]:
        prefix = self.embed_prefix(title)
        budget = self.settings.max_tokens - self.special_tokens - len(self._offsets(prefix))
        if budget < 8:
            raise ValueError(f"the model window ({self.settings.max_tokens} tokens) is too small to chunk")
        token_starts = [s for s, _ in self._offsets(text)]
        # Long sentences are cut a little under the budget: a cut can split a word into
        # different word pieces than it had in place.
        units = self._units(text, token_starts, budget - 2)
        counts = [_tokens_in(token_starts, s, e) for s, e in units]
        return self._pack(text, prefix, units, counts, budget)

    # --- internals -------------------------------------------------------------------------

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        if not text:
            return []
        encoded = self.tokenizer(
            text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False
        )
        return [(s, e) for s, e in encoded["offset_mapping"] if e > s]

    def _units(self, text: str, starts: list[int], budget: int) -> list[Span]:
        """Sentences, with any sentence longer than the budget cut at token boundaries."""
        units: list[Span] = []
        for s, e in split_sentences(text):
            first, last = bisect_left(starts, s), bisect_left(starts, e)
            if last - first <= budget:
                units.append((s, e))
                continue
            piece = first
            while piece < last:
                piece_start = s if piece == first else starts[piece]
                following = min(piece + budget, last)
                while True:
                    piece_end = e if following >= last else starts[following]
                    piece_end = piece_start + len(text[piece_start:piece_end].rstrip())
                    # A piece that starts inside a word can take more word pieces alone than it had in
                    # place (no fixed margin is enough): check it, and give back tokens until it fits.
                    if following - piece <= 1 or self._tokens(text[piece_start:piece_end]) <= budget:
                        break
                    following -= 1
                if piece_end > piece_start:
                    units.append((piece_start, piece_end))
                piece = following
        return units

    def _pack(self, text: str, prefix: str, units: list[Span], counts: list[int], budget: int) -> list[Chunk]:
        chunks: list[Chunk] = []
        i, n = 0, len(units)
        new = 1  # every chunk takes the units before `new`: at least one no earlier chunk has had
        while i < n:
            j, used = i, 0
            while j < n and (j < new or used + counts[j] <= budget):
                used += counts[j]
                j += 1
            # The count above adds up sentences tokenized in place; check what is really embedded.
            while j > new and self._embedded_tokens(prefix + text[units[i][0] : units[j - 1][1]]) > (
                self.settings.max_tokens
            ):
                j -= 1
            chunks.append(Chunk(units[i][0], units[j - 1][1], tuple(units[i:j])))
            if j >= n:
                break
            # Start the next chunk up to `overlap` sentences back, as far back as still lets it
            # take the next new sentence: overlap never costs progress. Checked as embedded: a piece
            # cut inside a word can take more word pieces than counted in place.
            k = max(i + 1, j - self.settings.overlap_sentences)
            while k < j and self._embedded_tokens(prefix + text[units[k][0] : units[j][1]]) > (
                self.settings.max_tokens
            ):
                k += 1
            i, new = k, j + 1
        return chunks

    def _tokens(self, text: str) -> int:
        encoded = self.tokenizer(text, add_special_tokens=False, truncation=False, verbose=False)
        return len(encoded["input_ids"])

    def _embedded_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])


def _tokens_in(starts: list[int], s: int, e: int) -> int:
    return bisect_left(starts, e) - bisect_left(starts, s)
