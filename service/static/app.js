// The ragqa chat page. Everything that comes from the service (answers, excerpts, documents) is put
// on the page as text (textContent, text nodes), never as HTML.
"use strict";

const MAX_HISTORY_TURNS = 20; // the service accepts at most 20 earlier turns
const MAX_TURN_CHARS = 8000;

const conversation = document.getElementById("conversation");
const form = document.getElementById("ask-form");
const question = document.getElementById("question");
const send = document.getElementById("send");
const sourcePrefix = document.getElementById("source-prefix");
const statusLine = document.getElementById("status");
const viewer = document.getElementById("viewer");
const keyDialog = document.getElementById("key-dialog");
const keyForm = document.getElementById("key-form");
const keyInput = document.getElementById("key-input");
const keyMessage = document.getElementById("key-message");
const keySave = document.getElementById("key-save");
const keyForget = document.getElementById("key-forget");
const keyButton = document.getElementById("key-button");
const documents = new Map(); // doc_id → promise of the document (fetched once)
let turns = []; // the conversation so far, sent as `history` with each question

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function scrollToEnd() {
  conversation.scrollTop = conversation.scrollHeight;
}

// --- the API key -------------------------------------------------------------------------------
// With RAGQA_READ_REQUIRES_KEY=true every read (ask, documents) needs `Authorization: Bearer KEY`.
// The page learns it from a 401: at load (one small read, `PROBE`) or from any later call. It then
// asks for the key in its dialog, keeps it in this tab's sessionStorage only (gone with the tab;
// never localStorage, never a cookie) and sends it in that header on every call to the service,
// never in a URL. Nothing is retried by itself: a call that answers 401 fails, and only the user's
// next action (entering a key, asking again) makes another request.

const KEY_ITEM = "ragqa.apiKey";
const PROBE = "/v1/documents?offset=0&limit=1"; // the smallest read there is
const KEY_NEEDED = "This service needs an API key to answer questions. Enter the key you were given.";
let memoryKey = null; // only if this browser refuses sessionStorage: then the key lasts as long as the page
let keyRequired = false; // the service answered 401 to a read

class KeyNeeded extends Error {}

function storedKey() {
  try {
    return window.sessionStorage.getItem(KEY_ITEM);
  } catch (_) {
    return memoryKey;
  }
}

function storeKey(key) {
  try {
    window.sessionStorage.setItem(KEY_ITEM, key);
  } catch (_) {
    memoryKey = key;
  }
  updateKeyButton();
}

function forgetKey() {
  memoryKey = null;
  try {
    window.sessionStorage.removeItem(KEY_ITEM);
  } catch (_) {
    // nothing was stored there
  }
  documents.clear(); // what was read with the key is not kept without it
  updateKeyButton();
}

function updateKeyButton() {
  const key = storedKey();
  keyButton.hidden = !key && !keyRequired;
  keyButton.textContent = key ? "Change API key" : "Enter API key";
}

function withKey(headers, key) {
  const all = new Headers(headers);
  if (key) all.set("Authorization", `Bearer ${key}`);
  return all;
}

// The text of the service's {"error": ...} answer, or "" when it has none.
async function serverError(response) {
  try {
    const body = await response.json();
    return typeof body.error === "string" ? body.error : "";
  } catch (_) {
    return "";
  }
}

function rejectedText(reason) {
  const said = reason ? ` (the service said: “${reason}”)` : "";
  return `The API key was not accepted${said}. Check it and enter it again.`;
}

// Opens the key dialog (empty: closing it clears what was typed) with `message`, or shows `message`
// in it if it is open already; `problem` shows it as an error.
function askForKey(message, problem) {
  keyMessage.textContent = message;
  keyMessage.classList.toggle("bad", Boolean(problem));
  keyForget.hidden = !storedKey();
  if (!keyDialog.open) keyDialog.showModal();
  keyInput.focus();
}

// fetch() for the service: the tab's key, if it has one, goes in the Authorization header. A 401
// opens the key dialog (a key the service refused is forgotten) and fails with KeyNeeded.
async function api(url, options = {}) {
  const key = storedKey();
  const response = await fetch(url, { ...options, headers: withKey(options.headers, key) });
  if (response.status !== 401) return response;
  keyRequired = true;
  updateKeyButton();
  const reason = await serverError(response);
  const current = storedKey();
  if (current && current !== key) throw new KeyNeeded("this was sent before the new key was entered: try again");
  if (key) {
    forgetKey();
    askForKey(rejectedText(reason), true);
    throw new KeyNeeded("the API key was not accepted: enter it again, then try again");
  }
  askForKey(KEY_NEEDED, false);
  throw new KeyNeeded("this service needs an API key: enter it, then try again");
}

// At load: does reading need a key (and is the tab's key still good)? A 401 opens the dialog.
async function checkAccess() {
  try {
    await api(PROBE);
  } catch (_) {
    // KeyNeeded has opened the dialog; an unreachable service is reported by checkReady
  }
  updateKeyButton();
}

// The dialog's "Use this key": one request checks the key; only a key the service accepts is kept.
async function submitKey(event) {
  event.preventDefault();
  const key = keyInput.value.trim();
  if (!key) {
    askForKey("Enter a key first.", true);
    return;
  }
  if (!/^[\x20-\x7e]+$/.test(key)) {
    askForKey("An API key is made of letters, digits and ASCII punctuation only. Check it and enter it again.", true);
    return;
  }
  keySave.disabled = true;
  keyMessage.classList.remove("bad");
  keyMessage.textContent = "Checking the key…";
  try {
    const response = await fetch(PROBE, { headers: withKey({}, key) });
    if (response.status === 401) {
      keyInput.value = "";
      askForKey(rejectedText(await serverError(response)), true);
    } else if (response.status === 403) {
      const reason = await serverError(response);
      askForKey(`The service refuses reading${reason ? `: ${reason}` : ""}.`, true);
    } else {
      storeKey(key);
      keyInput.value = "";
      keyDialog.close();
    }
  } catch (error) {
    askForKey(`Could not reach the service (${error.message}). Try again.`, true);
  } finally {
    keySave.disabled = false;
  }
}

keyForm.addEventListener("submit", submitKey);

keyForget.addEventListener("click", () => {
  forgetKey();
  askForKey("The key is forgotten: this tab no longer has one. Enter a key to ask questions.", false);
});

document.getElementById("key-cancel").addEventListener("click", () => keyDialog.close());

keyDialog.addEventListener("close", () => {
  keyInput.value = "";
});

keyButton.addEventListener("click", () => {
  const message = storedKey()
    ? "This tab has an API key. Enter another one to replace it, or forget it."
    : KEY_NEEDED;
  askForKey(message, false);
});

// --- talking to the service -------------------------------------------------------------------

async function errorMessage(response) {
  let message = `the service answered ${response.status}`;
  try {
    const body = await response.json();
    if (body.error) message += `: ${body.error}`;
    for (const problem of body.detail || []) {
      const where = (problem.loc || []).filter((part) => part !== "body").join(".");
      message += where ? `; ${where}: ${problem.msg}` : `; ${problem.msg}`;
    }
  } catch (_) {
    // not JSON: the status says enough
  }
  return message;
}

// Server-sent events of a fetch response, as {event, data} objects.
async function* events(response) {
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    buffer += decoder.decode(value || new Uint8Array(), { stream: !done });
    buffer = buffer.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let event = "message";
      const data = [];
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) event = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) yield { event, data: JSON.parse(data.join("\n")) };
    }
    if (done) return;
  }
}

function fetchDocument(docId) {
  if (!documents.has(docId)) {
    const promise = api(`/v1/documents/${encodeURIComponent(docId)}`).then(async (response) => {
      if (!response.ok) throw new Error(await errorMessage(response));
      return response.json();
    });
    promise.catch(() => documents.delete(docId)); // a failure is not cached
    documents.set(docId, promise);
  }
  return documents.get(docId);
}

// --- the document viewer -----------------------------------------------------------------------

async function showSpan(span) {
  viewer.hidden = false;
  document.querySelector("main").classList.add("with-viewer");
  const title = document.getElementById("viewer-title");
  const source = document.getElementById("viewer-source");
  const text = document.getElementById("viewer-text");
  title.textContent = span.title;
  source.textContent = span.source;
  text.replaceChildren(element("p", "hint", "Loading the document…"));
  try {
    const doc = await fetchDocument(span.doc_id);
    const mark = element("mark", "", doc.text.slice(span.start, span.end));
    mark.id = "highlight";
    text.replaceChildren(
      document.createTextNode(doc.text.slice(0, span.start)),
      mark,
      document.createTextNode(doc.text.slice(span.end)),
    );
    mark.scrollIntoView({ block: "center" });
  } catch (error) {
    text.replaceChildren(element("p", "error", `Could not load the document: ${error.message}`));
  }
}

function closeViewer() {
  viewer.hidden = true;
  document.querySelector("main").classList.remove("with-viewer");
}

// --- one exchange ------------------------------------------------------------------------------

// The answer's text with each [n] whose citation has arrived as a button that shows it.
function renderAnswer(target, text, citations) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(/\[(\d+)\]/g)) {
    const citation = citations.get(Number(match[1]));
    if (!citation) continue;
    parts.push(document.createTextNode(text.slice(last, match.index)));
    const button = element("button", "marker", match[0]);
    button.type = "button";
    button.dataset.n = String(citation.n);
    button.setAttribute("aria-label", `Show citation ${citation.n}: ${citation.title}`);
    button.addEventListener("click", () => showSpan(citation));
    parts.push(button);
    last = match.index + match[0].length;
  }
  parts.push(document.createTextNode(text.slice(last)));
  target.replaceChildren(...parts);
}

function spanList(summaryText, spans, open, label) {
  const details = element("details", "sources");
  details.open = open;
  details.append(element("summary", "", summaryText));
  const list = element("ol");
  for (const span of spans) {
    const item = element("li");
    const link = element("button", "title", label(span));
    link.type = "button";
    link.addEventListener("click", () => showSpan(span));
    item.append(link, element("span", "excerpt", span.excerpt ?? span.text));
    list.append(item);
  }
  details.append(list);
  return details;
}

// What a reader should know about how a generative answer was made.
function notes(done) {
  const out = [];
  if (done.fallback_reason) {
    const what = done.mode === "extractive" ? "This is the extractive answer" : "The answer stops here";
    out.push(`${what}: ${done.fallback_reason}.`);
  }
  const left = (done.unsupported || []).length;
  if (left) out.push(`${left} sentence${left > 1 ? "s" : ""} of the LLM's answer left out: no source it cited supports it.`);
  return out;
}

// The request's `filter`: the source prefix typed under the question, unless it is blank.
function currentFilter() {
  const prefix = sourcePrefix.value.trim();
  return prefix ? { source_prefix: prefix } : null;
}

async function ask(text) {
  document.getElementById("hint")?.remove();
  const filter = currentFilter();
  const userTurn = element("div", "turn user", text);
  if (filter) userTurn.append(element("p", "note", `Only sources starting with ${filter.source_prefix}`));
  conversation.append(userTurn);
  const turn = element("div", "turn assistant pending");
  const answerNode = element("div", "answer");
  turn.append(answerNode);
  conversation.append(turn);
  scrollToEnd();

  let answer = "";
  let passages = [];
  const citations = new Map();
  let done = null;
  try {
    const response = await api("/v1/ask", {
      method: "POST",
      headers: { "Content-Type": "application/json", Accept: "text/event-stream" },
      body: JSON.stringify({ question: text, history: turns, stream: true, ...(filter ? { filter } : {}) }),
    });
    if (!response.ok) throw new Error(await errorMessage(response));
    for await (const { event, data } of events(response)) {
      if (event === "passages") passages = data;
      else if (event === "delta") answer += data.text;
      else if (event === "citation") citations.set(data.n, data);
      else if (event === "error") throw new Error(data.error || "the service failed while answering");
      else if (event === "done") done = data;
      renderAnswer(answerNode, answer, citations);
      scrollToEnd();
    }
    if (!done) throw new Error("the answer stream ended before it was complete");
  } catch (error) {
    turn.className = "turn assistant error";
    const message = error instanceof TypeError ? `Could not reach the service (${error.message}).` : error.message;
    turn.append(element("p", "", `Error: ${message}`));
    if (error instanceof KeyNeeded && !question.value) question.value = text; // to ask again with the key
    scrollToEnd();
    return;
  }
  turn.classList.remove("pending");
  if (done.abstained) {
    turn.classList.add("abstained");
    turn.prepend(element("span", "badge", "Not answered by the documents"));
    if (passages.length) {
      turn.append(spanList(`Closest passages (${passages.length})`, passages, false, (p) => p.title));
    } else if (filter) {
      turn.append(element("p", "note", `No passage comes from a source starting with ${filter.source_prefix}.`));
    }
  } else if (citations.size) {
    const cited = [...citations.values()];
    turn.append(spanList(`Sources (${cited.length})`, cited, false, (c) => `[${c.n}] ${c.title}`));
  }
  for (const note of notes(done)) turn.append(element("p", "note", note));
  turn.dataset.abstained = String(Boolean(done.abstained));
  turns.push({ role: "user", content: text.slice(0, MAX_TURN_CHARS) });
  turns.push({ role: "assistant", content: answer.slice(0, MAX_TURN_CHARS) });
  turns = turns.slice(-MAX_HISTORY_TURNS);
  scrollToEnd();
}

// --- wiring -------------------------------------------------------------------------------------

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const text = question.value.trim();
  if (!text || send.disabled) return;
  question.value = "";
  send.disabled = true;
  try {
    await ask(text);
  } finally {
    send.disabled = false;
    question.focus();
  }
});

question.addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
    event.preventDefault();
    form.requestSubmit();
  }
});

document.getElementById("new-conversation").addEventListener("click", () => {
  turns = [];
  conversation.replaceChildren();
  closeViewer();
  question.focus();
});

document.getElementById("viewer-close").addEventListener("click", closeViewer);

async function checkReady() {
  try {
    const response = await api("/readyz");
    const body = await response.json();
    statusLine.textContent = response.ok ? `ready · index ${body.index_version}` : body.error;
    statusLine.classList.toggle("bad", !response.ok);
  } catch (error) {
    statusLine.textContent = `cannot reach the service (${error.message})`;
    statusLine.classList.add("bad");
  }
}

checkReady();
checkAccess();
question.focus();
