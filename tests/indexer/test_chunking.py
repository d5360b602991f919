"""Chunking: sentence-aware, budgeted in the real model's word pieces, offsets exact into the document."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from indexer.chunking import MAX_TITLE_TOKENS, Chunk, Chunker, ChunkerSettings, split_sentences

SEED_PARAGRAPH = (
    "Stoltenberg's visit to Yerevan held special significance for two reasons. First, it marked his first "
    "visit to that capital as secretary general, a position he has held for a decade. Second, Armenia's "
    "foreign policy is shifting. Its government decided earlier this year to “freeze” Armenian membership "
    "in the Russia-led Collective Security Treaty Organization. Prime Minister Nikol Pashinyan has publicly "
    "criticized Russia for its inability to provide his country with security guarantees following "
    "Azerbaijan’s recapture of the disputed territory of Nagorno-Karabakh. He now advocates for broader "
    "public dialogue on closer ties with the West, including the possibility of EU membership."
)

# In place this word is lava|##ifice|##mme|##piece|##physical|##orous; cut after "lavaifice", the rest
# alone is mm|##ep|##iec|##ep|##hy|##sic|##alo|##rous, 4 more. With 26 one-token words in front, a window
# of 32 cuts the run-on sentence exactly there (found by search, not by hypothesis).
ODD_WORD = "lavaificemmepiecephysicalorous"
MID_WORD_CUT = " ".join(["a"] * 26 + [ODD_WORD] + ["a"] * 84)
# Found by hypothesis (shrunk by hand): the long middle sentence is cut inside "aaoa", and the piece
# "oa aaa…" takes more word pieces alone than counted in place. The chunk after (29, 162) was planned as
# that piece plus the next sentence, then cut back to the piece alone, (58, 162): nothing new in it.
NO_PROGRESS = (
    "..a..a a.a..a......a.a.a.a..a.a.a.a.a.a.a.a...a.a..a.a..aaoa "
    + "a" * 101
    + " (..a..a.a.a.a.a..a.a.a.a...."
)


def chunker_for(tokenizer, max_tokens: int, overlap: int = 1) -> Chunker:
    return Chunker(tokenizer, ChunkerSettings(max_tokens=max_tokens, overlap_sentences=overlap))


def embedded_tokens(tokenizer, text: str) -> int:
    return len(tokenizer(text, truncation=False, verbose=False)["input_ids"])


def check_chunks(tokenizer, chunker: Chunker, text: str, title: str, chunks: list[Chunk]) -> None:
    """The properties every chunking must have, whatever the input."""
    max_tokens = chunker.settings.max_tokens
    overlap = chunker.settings.overlap_sentences
    for chunk in chunks:
        # 1. Exact offsets; the chunk is not blank and carries no white space at either end.
        assert 0 <= chunk.start < chunk.end <= len(text)
        piece = text[chunk.start : chunk.end]
        assert piece.strip(), chunk
        assert piece == piece.strip(), chunk
        # 2. Sentence spans are ordered, disjoint, inside the chunk and span it exactly.
        assert chunk.sentences
        assert chunk.sentences[0][0] == chunk.start
        assert chunk.sentences[-1][1] == chunk.end
        for s, e in chunk.sentences:
            assert chunk.start <= s < e <= chunk.end
        for (_, e1), (s2, _) in zip(chunk.sentences, chunk.sentences[1:], strict=False):
            assert e1 <= s2
        # 4. What is embedded fits the model's window: nothing is silently truncated.
        assert embedded_tokens(tokenizer, chunker.embed_text(title, piece)) <= max_tokens, chunk

    # 3. Coverage: no non-white-space character of the document is lost.
    covered = [False] * len(text)
    for chunk in chunks:
        covered[chunk.start : chunk.end] = [True] * (chunk.end - chunk.start)
    lost = [i for i, c in enumerate(text) if not c.isspace() and not covered[i]]
    assert not lost, (lost[:10], [text[i] for i in lost[:10]])

    # 5. Document order; consecutive chunks share at most `overlap` whole sentences and nothing else.
    for previous, following in zip(chunks, chunks[1:], strict=False):
        assert previous.start < following.start
        assert previous.end < following.end, (previous, following)  # every chunk brings new text
        shared = [span for span in following.sentences if span[0] < previous.end]
        assert len(shared) <= overlap
        assert all(span in previous.sentences for span in shared), (previous, following)
        if overlap == 0:
            assert previous.end <= following.start


# --- strategies --------------------------------------------------------------------------------

BROAD = st.characters(codec="utf-8")  # every code point except surrogates: emoji, CJK, marks, RTL, controls
SCRIPTS = st.sampled_from(
    [
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
        "éèêëüöäßçñÉÜÖ",
        "中文字符日本語の文章한국어",
        "שלוםעולםمرحباالعالم",
        "привет мир",
        "😀🎉👍🏽🇦🇲‍❤️",
        "e\u0301a\u0300o\u0308\u0327",  # combining marks
        "0123456789",
    ]
)
LETTERS = SCRIPTS.flatmap(lambda alphabet: st.text(alphabet=alphabet, min_size=1, max_size=14))
KNOWN_WORDS = st.sampled_from(
    [
        "the",
        "Mr.",
        "Dr.",
        "U.S.",
        "e.g.",
        "i.e.",
        "etc.",
        "NATO",
        "Pashinyan",
        "Nagorno-Karabakh",
        "Russia’s",
        "“freeze”",
        "(the",
        "year)",
        "2008",
        "3.14",
        "$5",
        "--",
        "—",
        "...",
        "well-known",
        "unbelievably",
        "hyphen-",
        "ated",
        "don't",
        "x",
        "A.",
        "No.",
        "St.",
        "’",
    ]
)
LONG_WORD = st.text(alphabet="abcdefghijklmnop", min_size=60, max_size=400)
SHORT_ANYTHING = st.text(BROAD, min_size=1, max_size=6)
WORD = st.one_of(KNOWN_WORDS, KNOWN_WORDS, LETTERS, LETTERS, LONG_WORD, SHORT_ANYTHING)
SPACE = st.sampled_from(
    [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\r", " \u00a0", "\u3000", "\u200b", "\u2028", "\x1c"]
)
TERMINATOR = st.sampled_from([".", ".", "!", "?", "...", "?!", '."', ".)", "。", "…", "", ":", ";"])
PARAGRAPH_BREAK = st.sampled_from(["\n\n", "\r\n\r\n", "\n \t\n\n", "\n", " "])


@st.composite
def sentences(draw) -> str:
    words = draw(st.lists(st.tuples(WORD, SPACE), min_size=1, max_size=30))
    return "".join(w + s for w, s in words[:-1]) + words[-1][0] + draw(TERMINATOR)


@st.composite
def long_run_on_sentences(draw) -> str:
    """A sentence with no punctuation at all, far longer than any window."""
    words = draw(st.lists(st.one_of(LETTERS, KNOWN_WORDS.filter(str.isalpha)), min_size=80, max_size=400))
    return " ".join(words)


@st.composite
def prose(draw) -> str:
    parts = draw(
        st.lists(
            st.tuples(
                st.one_of(
                    sentences(),
                    sentences(),
                    sentences(),
                    long_run_on_sentences(),
                    st.text(alphabet=" \t\r\n\u00a0", min_size=1, max_size=8),  # white-space-only runs
                    st.text(BROAD, max_size=40),
                ),
                st.one_of(SPACE, PARAGRAPH_BREAK),
            ),
            max_size=25,
        )
    )
    return draw(st.sampled_from(["", " ", "\n", "\ufeff"])) + "".join(p + s for p, s in parts)


DOCUMENTS = st.one_of(
    st.text(BROAD, max_size=600),
    st.text(alphabet=st.one_of(BROAD, st.sampled_from(" .!?\n")), max_size=600),
    prose(),
    prose(),
    prose(),
)
TITLES = st.one_of(
    st.just(""),
    st.sampled_from(["Stoltenberg in the South Caucasus", "   ", "\n", "Mr. Smith goes to Washington."]),
    st.text(BROAD, max_size=30),
    st.lists(WORD, min_size=40, max_size=120).map(" ".join),  # far over the 32-token title limit
    LONG_WORD,
)


# --- properties --------------------------------------------------------------------------------


@pytest.mark.slow  # hypothesis fuzzing: 150 generated documents through the chunker
@settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    text=DOCUMENTS,
    title=TITLES,
    max_tokens=st.sampled_from([32, 64, 256]),
    overlap=st.sampled_from([0, 1, 2]),
)
# Found by hypothesis (shrunk), kept as regressions; NO_PROGRESS by a longer, randomised run:
@example(text="", title="a" * 60, max_tokens=32, overlap=0)  # a long title left no room: ValueError
@example(text="\u200b", title="", max_tokens=32, overlap=0)  # syntok skips U+200B: character lost
@example(text="\x1f0", title="", max_tokens=32, overlap=0)  # chunk began with white space U+001F
@example(text=NO_PROGRESS, title="", max_tokens=32, overlap=1)  # a chunk that brought nothing new
# Written by hand:
@example(text="Hello. \x1cWorld again.", title="", max_tokens=64, overlap=1)
@example(text="\u200bHello there.", title="word " * 60, max_tokens=64, overlap=0)
@example(text=MID_WORD_CUT, title="", max_tokens=32, overlap=0)  # a cut piece over the window
def test_chunking_properties(tokenizer, text: str, title: str, max_tokens: int, overlap: int) -> None:
    chunker = chunker_for(tokenizer, max_tokens, overlap)
    chunks = chunker.chunk(text, title)
    check_chunks(tokenizer, chunker, text, title, chunks)
    # 6. Determinism: the same input gives the same chunks, also from a fresh chunker.
    assert chunker.chunk(text, title) == chunks
    assert chunker_for(tokenizer, max_tokens, overlap).chunk(text, title) == chunks


@pytest.mark.unit
@settings(max_examples=60, deadline=None, derandomize=True)
@given(text=DOCUMENTS)
def test_split_sentences_spans_are_trimmed_ordered_and_cover_the_text(text: str) -> None:
    spans = split_sentences(text)
    previous_end = 0
    for s, e in spans:
        assert previous_end <= s < e <= len(text)
        assert text[s:e] == text[s:e].strip() != ""
        previous_end = e
    covered: set[int] = set()
    for s, e in spans:
        covered.update(range(s, e))
    assert all(i in covered for i, c in enumerate(text) if not c.isspace())


# --- examples ----------------------------------------------------------------------------------


def sentence_texts(text: str) -> list[str]:
    return [text[s:e] for s, e in split_sentences(text)]


@pytest.mark.unit
def test_seed_paragraph_splits_at_sentence_ends() -> None:
    found = sentence_texts(SEED_PARAGRAPH)
    assert found == [
        "Stoltenberg's visit to Yerevan held special significance for two reasons.",
        "First, it marked his first visit to that capital as secretary general, a position he has held for a "
        "decade.",
        "Second, Armenia's foreign policy is shifting.",
        "Its government decided earlier this year to “freeze” Armenian membership in the Russia-led "
        "Collective Security Treaty Organization.",
        "Prime Minister Nikol Pashinyan has publicly criticized Russia for its inability to provide his "
        "country with security guarantees following Azerbaijan’s recapture of the disputed territory of "
        "Nagorno-Karabakh.",
        "He now advocates for broader public dialogue on closer ties with the West, including the "
        "possibility of EU membership.",
    ]


@pytest.mark.unit
def test_seed_file_sentences_keep_the_quoted_and_parenthesised_ones_whole(repo) -> None:
    text = (repo / "seeds" / "000_c691a4b25f50d746.txt").read_text(encoding="utf-8")
    found = sentence_texts(text)
    assert 'Stoltenberg commended Pashinyan for his pursuit of a "more independent" foreign policy' in next(
        s for s in found if s.startswith("Stoltenberg commended")
    )
    reiterated = next(s for s in found if s.startswith("Stoltenberg reiterated"))
    assert reiterated.endswith(
        "(the country holds a presidential election in the second half of this year) "
        "and full Euro-Atlantic integration."
    )
    assert found[-1] == "Russia’s dominance in that corner of the world may just be nearing an end."
    # Paragraph breaks end sentences even without punctuation: the title line is a sentence of its own.
    assert found[0] == "Stoltenberg in the South Caucasus"


@pytest.mark.unit
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "Mr. Smith went to Washington. He arrived on time.",
            ["Mr. Smith went to Washington.", "He arrived on time."],
        ),
        (
            "Dr. Jones met Mrs. Brown at 3 p.m. today. Then they left.",
            ["Dr. Jones met Mrs. Brown at 3 p.m. today.", "Then they left."],
        ),
        (
            "The U.S. economy grew by 3.5 percent. Exports rose.",
            ["The U.S. economy grew by 3.5 percent.", "Exports rose."],
        ),
    ],
)
def test_abbreviations_and_numbers_do_not_split(text: str, expected: list[str]) -> None:
    assert sentence_texts(text) == expected


@pytest.mark.unit
def test_blank_document_has_no_chunks(tokenizer) -> None:
    chunker = chunker_for(tokenizer, 256)
    for text in ["", " ", "\n\n\t \r\n", "\u3000\u00a0"]:
        assert chunker.chunk(text, "Some title") == []
        assert split_sentences(text) == []


@pytest.mark.unit
def test_sentence_longer_than_the_budget_is_cut_into_pieces_that_fit(tokenizer) -> None:
    words = ["Alpha", "beta", "gamma", "delta", "unbelievably", "Karabakh", "antidisestablishmentarianism"]
    sentence = " ".join(words[i % len(words)] for i in range(700)) + "."
    text = "Short one. " + sentence + " Another short one."
    chunker = chunker_for(tokenizer, 64, overlap=0)
    title = "Stoltenberg in the South Caucasus"
    chunks = chunker.chunk(text, title)
    check_chunks(tokenizer, chunker, text, title, chunks)
    start = text.index("Alpha")
    inside = [c for c in chunks if start <= c.start and c.end <= start + len(sentence)]
    assert len(inside) > 5
    # The pieces follow each other with nothing but white space between them and cover the sentence.
    end = start + len(sentence)
    pieces = sorted({span for c in chunks for span in c.sentences if start <= span[0] < end})
    assert pieces[0][0] == start and pieces[-1][1] == end
    for (_, e1), (s2, _) in zip(pieces, pieces[1:], strict=False):
        assert e1 <= s2 and not text[e1:s2].strip()
    for s, e in pieces:
        assert embedded_tokens(tokenizer, chunker.embed_text(title, text[s:e])) <= 64


@pytest.mark.unit
@pytest.mark.parametrize("max_tokens", [32, 64, 256])
def test_piece_cut_inside_a_word_still_fits(tokenizer, max_tokens: int) -> None:
    # Cut at a word-piece boundary, the rest of a word can take more word pieces alone than it had in
    # place: the pieces of a long sentence are checked as they are embedded, not counted in place.
    in_place = tokenizer(ODD_WORD, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    assert len(tokenizer(ODD_WORD[9:], add_special_tokens=False)["input_ids"]) == len(in_place) - 2 + 4
    before = max_tokens - 4 - 2  # the chunker cuts long sentences at its budget less two tokens
    text = " ".join(["a"] * before + [ODD_WORD] + ["a"] * 3 * max_tokens)
    chunker = chunker_for(tokenizer, max_tokens, overlap=0)
    chunks = chunker.chunk(text)
    check_chunks(tokenizer, chunker, text, "", chunks)
    assert len(chunks) > 3


@pytest.mark.unit
def test_overlap_of_one_repeats_the_last_sentence(tokenizer) -> None:
    text = " ".join(f"Sentence number {i} is short." for i in range(40))
    chunker = chunker_for(tokenizer, 64, overlap=1)
    chunks = chunker.chunk(text, "A title")
    check_chunks(tokenizer, chunker, text, "A title", chunks)
    assert len(chunks) > 3
    for previous, following in zip(chunks, chunks[1:], strict=False):
        assert previous.sentences[-1] == following.sentences[0]
        assert len(following.sentences) > 1  # every chunk makes progress


@pytest.mark.unit
def test_overlap_of_zero_shares_nothing(tokenizer) -> None:
    text = " ".join(f"Sentence number {i} is short." for i in range(40))
    chunks = chunker_for(tokenizer, 64, overlap=0).chunk(text)
    assert len(chunks) > 3
    for previous, following in zip(chunks, chunks[1:], strict=False):
        assert previous.end < following.start
        assert text[previous.end : following.start].isspace()


@pytest.mark.unit
def test_whole_document_fits_one_chunk_at_the_model_window(tokenizer) -> None:
    chunker = chunker_for(tokenizer, 256)
    chunks = chunker.chunk(SEED_PARAGRAPH, "Stoltenberg in the South Caucasus")
    assert chunks == [Chunk(0, len(SEED_PARAGRAPH), tuple(split_sentences(SEED_PARAGRAPH)))]


@pytest.mark.unit
def test_embed_prefix_cuts_a_long_title(tokenizer) -> None:
    chunker = chunker_for(tokenizer, 256)
    title = " ".join(["Stoltenberg in the South Caucasus and the unbelievably long title"] * 20)
    prefix = chunker.embed_prefix(title)
    assert prefix.endswith("\n") and title.startswith(prefix[:-1])
    assert len(tokenizer(prefix, add_special_tokens=False)["input_ids"]) == MAX_TITLE_TOKENS
    assert chunker.embed_text(title, "chunk") == prefix + "chunk"
    # Short titles are kept whole; blank ones, or a chunker that does not embed titles, add nothing.
    assert chunker.embed_prefix("Short title") == "Short title\n"
    assert chunker.embed_prefix("  \n ") == ""
    no_titles = Chunker(tokenizer, ChunkerSettings(max_tokens=256, embed_title=False))
    assert no_titles.embed_prefix(title) == ""
    assert no_titles.embed_text(title, "chunk") == "chunk"


@pytest.mark.unit
@pytest.mark.parametrize("max_tokens", [32, 64])
def test_long_title_in_a_small_window_still_chunks(tokenizer, max_tokens: int) -> None:
    chunker = chunker_for(tokenizer, max_tokens)
    title = "word " * 100
    prefix_tokens = len(tokenizer(chunker.embed_prefix(title), add_special_tokens=False)["input_ids"])
    assert 0 < prefix_tokens <= MAX_TITLE_TOKENS
    chunks = chunker.chunk(SEED_PARAGRAPH, title)
    check_chunks(tokenizer, chunker, SEED_PARAGRAPH, title, chunks)


@pytest.mark.unit
def test_window_too_small_is_refused(tokenizer) -> None:
    with pytest.raises(ValueError, match="too small"):
        chunker_for(tokenizer, 8).chunk("Some text here.")
