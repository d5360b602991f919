"""The chat page in a real browser: Debian's chromium, driven by Playwright, against the real app
(`python -m service.cli`) on 127.0.0.1, over a store of the seed article, the small extra documents
and a document full of HTML that must stay inert text. The same store is served twice: with open reads
(`page_server`), and with reads behind API keys (`keyed_server`: RAGQA_READ_REQUIRES_KEY=true), where
the page has to ask for a key, keep it for the tab only and send it with every call."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import pytest
from playwright.sync_api import expect

from tests.service.conftest import (
    AUTH,
    CHROMIUM,
    CORPUS,
    KEY,
    STOLTENBERG,
    Server,
    chromium,
    index,
    start_server,
    stop_server,
    write_extra_documents,
)

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


WRONG_KEY = "not-the-key"
KEY_ITEM = "ragqa.apiKey"  # where app.js keeps the key in sessionStorage
VIEWPORT = {"width": 1280, "height": 800}


@pytest.fixture(scope="module")
def page_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("chat-page")
    extra = write_extra_documents(root / "extra")
    (extra / "beekeeping.txt").write_text(HOSTILE, encoding="utf-8")
    assert index([CORPUS, extra], root / "store").documents == 4
    return root / "store"


@pytest.fixture(scope="module")
def page_server(page_store: Path) -> Iterator[Server]:
    server = start_server(page_store, page_store.parent / "server.log", ready_path="/readyz")
    try:
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def keyed_server(page_store: Path) -> Iterator[Server]:
    """The same store served with reads behind keys (the service only reads its store)."""
    server = start_server(
        page_store,
        page_store.parent / "keyed-server.log",
        ready_path="/readyz",
        api_keys=f"{KEY},other-key",
        read_requires_key="true",
    )
    try:
        assert server.client.post("/v1/ask", json={"question": ARMENIA}).status_code == 401
        yield server
    finally:
        stop_server(server)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as browser:
        yield browser


def open_page(context: Any, base_url: str) -> Any:
    """A new tab of `context` on the chat page, recording every request it makes, every script error,
    every native dialog (alert, prompt) and every console message."""
    page = context.new_page()
    page.requests, page.errors, page.dialogs, page.console = [], [], [], []
    page.on("request", lambda request: page.requests.append(request))
    page.on("pageerror", lambda error: page.errors.append(str(error)))
    page.on("dialog", lambda dialog: (page.dialogs.append(dialog.message), dialog.dismiss()))
    page.on("console", lambda message: page.console.append(message.text))
    page.goto(base_url + "/")
    # Locator assertions, not wait_for_function: polling a JavaScript string is an eval, which the
    # page's Content-Security-Policy forbids.
    expect(page.locator("#status")).to_have_text(re.compile(r"^ready"), timeout=30_000)
    return page


@pytest.fixture
def page(browser: Any, page_server: Server, tmp_path: Path) -> Iterator[Any]:
    """A fresh page on the chat page of the service with open reads."""
    context = browser.new_context(viewport=VIEWPORT)
    page = open_page(context, page_server.base_url)
    yield page
    page.screenshot(path=str(tmp_path / "chat-page.png"), full_page=True)
    context.close()
    assert page.errors == [], page.errors


@pytest.fixture
def keyed_page(browser: Any, keyed_server: Server, tmp_path: Path) -> Iterator[Any]:
    """A fresh page on the chat page of the service whose reads need a key. At the end: no script
    error, no native dialog, and the key was never in a URL, the console, localStorage or a cookie."""
    context = browser.new_context(viewport=VIEWPORT)
    page = open_page(context, keyed_server.base_url)
    yield page
    page.screenshot(path=str(tmp_path / "keyed-chat-page.png"), full_page=True)
    try:
        assert_key_kept_private(page)
    finally:
        context.close()
    assert page.errors == [] and page.dialogs == [], (page.errors, page.dialogs)


def key_dialog(page: Any) -> Any:
    return page.get_by_role("dialog", name="API key")


def key_box(page: Any) -> Any:
    return page.get_by_label("Enter the API key")


def enter_key(page: Any, key: str) -> None:
    key_box(page).fill(key)
    key_box(page).press("Enter")


def session_values(page: Any) -> list[str]:
    """Every value in the tab's sessionStorage."""
    return page.evaluate("() => Object.values(sessionStorage)")  # type: ignore[no-any-return]


def api_requests(page: Any) -> list[Any]:
    """The page's calls to the service's API, in order (not the page, its script and its style)."""
    return [r for r in page.requests if urlsplit(r.url).path.startswith(("/v1/", "/readyz"))]


def authorization(request: Any) -> str | None:
    return request.all_headers().get("authorization")  # type: ignore[no-any-return]


def assert_key_kept_private(page: Any) -> None:
    """Neither key the tests type was ever in a URL or in the console, and the browser holds no
    localStorage and no cookie for the page."""
    for secret in (KEY, WRONG_KEY):
        assert not [r.url for r in page.requests if secret in r.url]
        assert not [text for text in page.console if secret in text]
    state = page.context.storage_state()
    assert state["cookies"] == [] and all(not origin["localStorage"] for origin in state["origins"]), state
    assert page.evaluate("() => [localStorage.length, document.cookie]") == [0, ""]


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


def api_ask(
    server: Server,
    question: str,
    history: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    body = {"question": question, "history": history or []}
    response = server.client.post("/v1/ask", json=body, headers=headers)
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

    # Reads need no key here: the page learnt so at load, never asks for one and sends none.
    probes = [r for r in api_requests(page) if r.url.split("?")[0].endswith("/v1/documents")]
    assert len(probes) == 1 and probes[0].response().status == 200
    expect(key_dialog(page)).to_be_hidden()
    expect(page.locator("#key-button")).to_be_hidden()
    assert [r.url for r in page.requests if authorization(r) is not None] == []


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
    assert "unsafe-inline" not in policy and "http" not in policy
    # Nothing inline that the policy would have to allow: no script body, no style, no handler.
    html = response.text
    scripts = re.findall(r"<script\b[^>]*>[^<]*</script>", html)
    assert scripts == ['<script src="/static/app.js" defer></script>'] and html.count("<script") == 1
    assert re.search(r"<style\b|\sstyle=|\son[a-z]+=", html) is None
    for asset in ("/static/app.js", "/static/app.css"):
        assert httpx.get(page_server.base_url + asset).status_code == 200


# --- reads behind API keys ---------------------------------------------------------------------


def test_a_keyed_service_gets_a_key_from_the_reader_refuses_a_wrong_one_and_answers_with_the_right_one(
    keyed_page: Any, keyed_server: Server, tmp_path: Path
) -> None:
    page = keyed_page
    dialog, box = key_dialog(page), key_box(page)
    # At load, before any question: the page's first read answered 401, so it asks for a key in
    # its own dialog (not a native prompt), with the box focused and the key hidden as it is typed.
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("alert")).to_contain_text("needs an API key")
    expect(box).to_be_focused()
    expect(box).to_have_attribute("type", "password")
    loaded = api_requests(page)
    assert sorted(urlsplit(r.url).path for r in loaded) == ["/readyz", "/v1/documents"]
    probe = next(r for r in loaded if "/v1/documents" in r.url)
    assert probe.response().status == 401 and authorization(probe) is None

    # A wrong key: one request checks it, the page says it was not accepted, keeps nothing and asks again.
    enter_key(page, WRONG_KEY)
    alert = dialog.get_by_role("alert")
    expect(alert).to_contain_text("not accepted")
    expect(alert).to_contain_text("the API key is not valid")
    expect(dialog).to_be_visible()
    expect(box).to_have_value("")
    expect(box).to_be_focused()
    assert session_values(page) == []
    page.wait_for_timeout(1500)  # nothing is retried by itself
    checked = api_requests(page)[len(loaded) :]
    assert len(checked) == 1 and authorization(checked[0]) == f"Bearer {WRONG_KEY}"
    assert checked[0].response().status == 401
    page.screenshot(path=str(tmp_path / "wrong-key.png"))

    # The right key: accepted, kept in the tab's sessionStorage, and sent with every call from now on.
    box.fill(KEY)
    page.get_by_role("button", name="Use this key").click()
    expect(dialog).to_be_hidden()
    assert session_values(page) == [KEY]
    expect(page.get_by_role("button", name="Change API key")).to_be_visible()
    before = len(api_requests(page))

    turn = ask(page, ARMENIA)
    expected = api_ask(keyed_server, ARMENIA, headers=AUTH)
    assert "security guarantees" in expected["answer"] and expected["citations"]
    assert turn.locator(".answer").text_content() == expected["answer"]
    assert "error" not in (turn.get_attribute("class") or "")
    citation = expected["citations"][0]
    turn.locator(f"button.marker[data-n='{citation['n']}']").click()
    shown = highlighted(page)
    document = keyed_server.client.get(f"/v1/documents/{quote(citation['doc_id'], safe='')}", headers=AUTH)
    assert shown["text"] == document.json()["text"]
    assert shown["mark"] == citation["excerpt"] and shown["start"] == citation["start"]

    used = api_requests(page)[before:]
    paths = [urlsplit(r.url).path for r in used]
    assert paths == ["/v1/ask", f"/v1/documents/{quote(citation['doc_id'], safe='')}"], paths
    assert used[0].all_headers()["accept"] == "text/event-stream"  # still the streaming ask
    assert [(authorization(r), r.response().status) for r in used] == [(f"Bearer {KEY}", 200)] * 2
    expect(dialog).to_be_hidden()


def test_the_key_is_kept_for_the_tab_only(browser: Any, keyed_server: Server) -> None:
    """sessionStorage: the key survives a reload of its tab, and no other tab or browser profile
    gets it."""
    context = browser.new_context(viewport=VIEWPORT)
    other_context = browser.new_context(viewport=VIEWPORT)
    try:
        page = open_page(context, keyed_server.base_url)
        expect(key_dialog(page)).to_be_visible()
        enter_key(page, KEY)
        expect(key_dialog(page)).to_be_hidden()

        with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/documents") as reloaded:
            page.reload()
        assert reloaded.value.status == 200 and authorization(reloaded.value.request) == f"Bearer {KEY}"
        expect(page.locator("#status")).to_have_text(re.compile(r"^ready"))
        expect(key_dialog(page)).to_be_hidden()
        assert session_values(page) == [KEY]
        turn = ask(page, ARMENIA)
        assert turn.locator("button.marker").count() >= 1

        # Another tab of the same browser profile, and another profile: neither has the key.
        for fresh in [open_page(c, keyed_server.base_url) for c in (context, other_context)]:
            expect(key_dialog(fresh)).to_be_visible()
            assert session_values(fresh) == []
            assert [authorization(r) for r in api_requests(fresh)] == [None, None]
            assert_key_kept_private(fresh)
            assert fresh.errors == [] and fresh.dialogs == []
        assert_key_kept_private(page)
        assert page.errors == [] and page.dialogs == []
    finally:
        other_context.close()
        context.close()


def test_the_key_can_be_forgotten_and_a_key_the_service_refuses_is_not_kept(
    keyed_page: Any, keyed_server: Server
) -> None:
    page = keyed_page
    dialog = key_dialog(page)
    enter_key(page, KEY)
    expect(dialog).to_be_hidden()

    # Forget it: the dialog offers to, and the tab no longer has it.
    page.get_by_role("button", name="Change API key").click()
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("alert")).to_contain_text("This tab has an API key")
    page.get_by_role("button", name="Forget the key").click()
    expect(dialog.get_by_role("alert")).to_contain_text("forgotten")
    expect(page.get_by_role("button", name="Forget the key")).to_be_hidden()
    assert session_values(page) == []
    page.get_by_role("button", name="Cancel").click()
    expect(dialog).to_be_hidden()
    expect(page.get_by_role("button", name="Enter API key")).to_be_visible()

    # Asking without a key: one 401, shown in the conversation; the dialog asks for the key and the
    # question waits in its box to be asked again.
    failed = ask(page, ARMENIA)
    expect(failed).to_have_class(re.compile(r"\berror\b"))
    expect(failed).to_contain_text("needs an API key")
    expect(dialog).to_be_visible()
    expect(page.get_by_label("Question")).to_have_value(ARMENIA)
    enter_key(page, KEY)
    expect(dialog).to_be_hidden()
    answered = ask(page, ARMENIA).locator(".answer").text_content()
    assert answered == api_ask(keyed_server, ARMENIA, headers=AUTH)["answer"]
    asks = [r for r in page.requests if urlsplit(r.url).path == "/v1/ask"]
    assert [(authorization(r), r.response().status) for r in asks] == [(None, 401), (f"Bearer {KEY}", 200)]

    # A key the tab holds that the service no longer accepts (its keys were changed): at the next load
    # the page says so, drops the key and asks again, with one request.
    page.evaluate("([item, key]) => sessionStorage.setItem(item, key)", [KEY_ITEM, WRONG_KEY])
    before = len(api_requests(page))
    with page.expect_response(lambda r: urlsplit(r.url).path == "/v1/documents") as reloaded:
        page.reload()
    assert reloaded.value.status == 401 and authorization(reloaded.value.request) == f"Bearer {WRONG_KEY}"
    expect(dialog).to_be_visible()
    expect(dialog.get_by_role("alert")).to_contain_text("not accepted")
    assert session_values(page) == []
    page.wait_for_timeout(1500)  # nothing is retried by itself
    assert sorted(urlsplit(r.url).path for r in api_requests(page)[before:]) == ["/readyz", "/v1/documents"]
