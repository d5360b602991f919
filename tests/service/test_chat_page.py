"""The chat page in a real browser: Debian's chromium, driven by Playwright, against the real app
(`python -m service.cli`) on 127.0.0.1, over a store of the seed article, the small extra documents
and a document full of HTML that must stay inert text."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from playwright.sync_api import expect

from tests.service.conftest import (
    CORPUS,
    STOLTENBERG,
    Server,
    index,
    start_server,
    stop_server,
    write_extra_documents,
)

CHROMIUM = Path("/usr/bin/chromium")
ARMENIA = "Why did Armenia freeze CSTO membership?"
OFF_TOPIC = "What is the boiling point of mercury in Kelvin?"
BEES = "How many eggs does a queen bee lay in a day?"
HOSTILE = (
    "Beekeeping notes\n\n"
    "A hive has one queen. <script>window.__ragqa_xss = 'script'</script> The queen bee lays up to two "
    "thousand eggs in a day <img src=x onerror=\"window.__ragqa_xss = 'img'\"> during the spring.\n"
)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not CHROMIUM.exists() and not os.environ.get("CI"),
        reason="needs Debian's chromium (apt-get install chromium); CI installs it and runs this",
    ),
]


@pytest.fixture(scope="module")
def page_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("chat-page")
    extra = write_extra_documents(root / "extra")
    (extra / "beekeeping.txt").write_text(HOSTILE, encoding="utf-8")
    assert index([CORPUS, extra], root / "store").documents == 4
    server = start_server(root / "store", root / "server.log", ready_path="/readyz")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=[
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        yield browser
        browser.close()


@pytest.fixture
def page(browser: Any, page_server: Server, tmp_path: Path) -> Iterator[Any]:
    """A fresh page on the chat page, recording every request it makes and every script error."""
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    page = context.new_page()
    page.requests, page.errors, page.dialogs = [], [], []
    page.on("request", lambda request: page.requests.append(request))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.goto(page_server.base_url + "/")
    # Locator assertions, not wait_for_function: polling a JavaScript string is an eval, which the
    # page's Content-Security-Policy forbids.
    expect(page.locator("#status")).to_have_text(re.compile(r"^ready"), timeout=30_000)
    yield page
    page.screenshot(path=str(tmp_path / "chat-page.png"), full_page=True)
    context.close()
    assert page.errors == [], page.errors


def ask(page: Any, question: str) -> Any:
    """Type the question, press Enter, wait for the answer to finish streaming; the answer's turn."""
    turns = page.locator(".turn.assistant")
    before = turns.count()
    page.get_by_label("Question").fill(question)
    page.get_by_label("Question").press("Enter")
    turn = turns.nth(before)
    turn.wait_for()
    expect(turn).not_to_have_class(re.compile(r"\bpending\b"), timeout=60_000)
    return turn


def api_ask(server: Server, question: str, history: list[dict[str, str]] | None = None) -> dict[str, Any]:
    response = server.client.post("/v1/ask", json={"question": question, "history": history or []})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def highlighted(page: Any) -> dict[str, Any]:
    """What the document viewer shows: the whole text, the highlighted part and where it starts."""
    page.locator("#viewer mark").wait_for()
    return page.evaluate(
        """() => {
            const text = document.getElementById('viewer-text');
            const mark = text.querySelector('mark');
            const range = document.createRange();
            range.setStart(text, 0);
            range.setEndBefore(mark);
            return {text: text.textContent, mark: mark.textContent, start: range.toString().length,
                    title: document.getElementById('viewer-title').textContent};
        }"""
    )


def test_the_seed_question_streams_an_answer_whose_citations_open_their_exact_spans(
    page: Any, page_server: Server, tmp_path: Path
) -> None:
    turn = ask(page, ARMENIA)
    expected = api_ask(page_server, ARMENIA)
    assert "security guarantees" in expected["answer"]
    assert turn.locator(".answer").text_content() == expected["answer"]
    assert "abstained" not in (turn.get_attribute("class") or "")

    # The page asked for the stream, not the whole answer at once.
    asks = [r for r in page.requests if r.url.endswith("/v1/ask")]
    assert len(asks) == 1
    assert asks[0].headers["accept"] == "text/event-stream" and asks[0].post_data_json["stream"] is True

    markers = turn.locator("button.marker")
    assert markers.count() == len(expected["citations"]) >= 1
    for citation in expected["citations"]:
        turn.locator(f"button.marker[data-n='{citation['n']}']").click()
        shown = highlighted(page)
        document = page_server.client.get(f"/v1/documents/{quote(citation['doc_id'], safe='')}").json()
        assert shown["text"] == document["text"]
        assert shown["mark"] == citation["excerpt"]
        assert shown["start"] == citation["start"]
        assert shown["title"] == citation["title"]
    assert page.locator("#viewer mark").is_visible()

    page.screenshot(path=str(tmp_path / "answer.png"))
    # Everything the page loaded came from the app itself.
    assert {r.url.split("/")[2] for r in page.requests} == {page_server.base_url.split("/")[2]}


def test_a_follow_up_sends_the_conversation(page: Any, page_server: Server) -> None:
    first = ask(page, ARMENIA).locator(".answer").text_content()
    turn = ask(page, "And what about Georgia?")
    history = [{"role": "user", "content": ARMENIA}, {"role": "assistant", "content": first}]
    follow_up = api_ask(page_server, "And what about Georgia?", history)
    assert [r.post_data_json["history"] for r in page.requests if r.url.endswith("/v1/ask")][-1] == history
    assert turn.locator(".answer").text_content() == follow_up["answer"]
    assert follow_up["citations"] and all(c["doc_id"] == STOLTENBERG for c in follow_up["citations"])
    assert follow_up["answer"] != api_ask(page_server, "And what about Georgia?")["answer"]

    page.get_by_role("button", name="New conversation").click()
    assert page.locator(".turn").count() == 0
    ask(page, "And what about Georgia?")
    assert [r.post_data_json["history"] for r in page.requests if r.url.endswith("/v1/ask")][-1] == []


def test_the_source_filter_is_sent_and_restricts_the_citations(page: Any, page_server: Server) -> None:
    """ "Where is Georgia?" cites the U.S. state's document; with only the seed article's folder
    allowed, the page sends `filter.source_prefix` and the answer cites the seed article."""
    question, prefix = "Where is Georgia?", f"{CORPUS}/"
    unfiltered = api_ask(page_server, question)
    assert any(c["doc_id"] != STOLTENBERG for c in unfiltered["citations"]), (
        "the filter must change something"
    )
    response = page_server.client.post(
        "/v1/ask", json={"question": question, "filter": {"source_prefix": prefix}}
    )
    expected = response.json()
    assert not expected["abstained"] and {c["doc_id"] for c in expected["citations"]} == {STOLTENBERG}

    page.get_by_label("Only sources starting with").fill(prefix)
    turn = ask(page, question)
    sent = [r.post_data_json for r in page.requests if r.url.endswith("/v1/ask")]
    assert sent[-1]["filter"] == {"source_prefix": prefix}
    assert turn.locator(".answer").text_content() == expected["answer"]
    markers = turn.locator("button.marker")
    assert markers.count() == len(expected["citations"])
    for citation in expected["citations"]:
        turn.locator(f"button.marker[data-n='{citation['n']}']").click()
        shown = highlighted(page)
        assert shown["title"] == citation["title"] and shown["mark"] == citation["excerpt"]
    assert page.locator(".turn.user .note").last.text_content() == f"Only sources starting with {prefix}"

    # Blank again (white space only): no filter is sent, and the answer is the unfiltered one.
    page.get_by_role("button", name="New conversation").click()
    page.get_by_label("Only sources starting with").fill("   ")
    turn = ask(page, question)
    assert "filter" not in [r.post_data_json for r in page.requests if r.url.endswith("/v1/ask")][-1]
    assert turn.locator(".answer").text_content() == unfiltered["answer"]


def test_an_abstention_looks_different_and_offers_the_closest_passages(page: Any) -> None:
    turn = ask(page, OFF_TOPIC)
    assert "abstained" in (turn.get_attribute("class") or "")
    assert turn.locator(".badge").text_content() == "Not answered by the documents"
    assert turn.locator("button.marker").count() == 0
    passages = turn.locator("details.sources")
    assert passages.locator("summary").text_content().startswith("Closest passages")
    passages.locator("summary").click()
    passages.locator("li button").first.click()
    assert highlighted(page)["mark"].strip()
    answered = ask(page, ARMENIA)
    assert answered.evaluate("t => getComputedStyle(t).backgroundColor") != turn.evaluate(
        "t => getComputedStyle(t).backgroundColor"
    )


def test_html_in_documents_stays_text(page: Any, page_server: Server) -> None:
    turn = ask(page, BEES)
    expected = api_ask(page_server, BEES)
    assert not expected["abstained"] and any("<" in c["excerpt"] for c in expected["citations"]), expected
    assert turn.locator(".answer").text_content() == expected["answer"]
    turn.locator("button.marker").first.click()
    shown = highlighted(page)
    assert "<script>" in shown["text"] and "onerror=" in shown["text"]
    turn.locator("details.sources summary").click()
    # Shown as characters, never made into elements, and nothing ran.
    assert page.locator("main script, main img").count() == 0
    assert page.evaluate("window.__ragqa_xss") is None
    assert page.dialogs == []


def test_keyboard_and_errors(page: Any) -> None:
    box = page.get_by_label("Question")
    box.fill("first line")
    box.press("Shift+Enter")
    box.type("second line")
    assert box.input_value() == "first line\nsecond line"
    assert page.locator(".turn").count() == 0  # Shift+Enter did not send

    # A question past the service's limit (typed past the box's maxlength by a script) is refused by
    # the service: the page shows its message.
    box.evaluate("(box, text) => { box.value = text; }", "x" * 2001)
    box.press("Enter")
    error = page.locator(".turn.error")
    error.wait_for()
    assert "422" in error.text_content() and "question" in error.text_content()
    assert page.get_by_role("button", name="Ask").is_enabled()


def test_the_page_sets_a_strict_content_policy(page_server: Server) -> None:
    response = httpx.get(page_server.base_url + "/")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "default-src 'none'" in policy
    for asset in ("/static/app.js", "/static/app.css"):
        assert httpx.get(page_server.base_url + asset).status_code == 200
