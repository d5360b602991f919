"""ragqa: ask the ragqa service questions from the command line.

The Python standard library only: `python3 -S -m service.client` works with nothing else installed,
and importing this module pulls in no heavy dependency. The client knows only HTTP."""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any, TextIO

DEFAULT_URL = "http://127.0.0.1:8000"
MAX_HISTORY_TURNS = 20  # the service accepts at most 20 earlier turns
MAX_TURN_CHARS = 8000

ANSWERED, ABSTAINED, USAGE, UNAVAILABLE = 0, 1, 2, 3

EXAMPLES = """\
examples:
  ragqa "Why did Armenia freeze CSTO membership?"
  ragqa --url http://10.0.0.5:8000 "Who visited Baku?"
  ragqa --search -k 3 "Nagorno-Karabakh"
  ragqa --mode extractive "Who visited Baku?"  # quote the documents even when the service has an LLM
  ragqa --source /srv/wiki/hr/ "How many days of leave?"  # only documents whose source starts so
  ragqa --doc handbook.md --doc faq.md "Who approves leave?"   # only these documents
  ragqa --json "Why did Armenia freeze CSTO membership?" | jq .citations
  ragqa                  # an interactive session: follow-up questions use the conversation

exit codes: 0 answered, 1 the service abstained (the documents do not answer),
            2 usage error or a request the service rejected, 3 service unreachable or failing.
"""


class ServiceError(Exception):
    """The service could not be reached, or answered with an error. `code` is the exit code."""

    def __init__(self, message: str, code: int = UNAVAILABLE) -> None:
        super().__init__(message)
        self.code = code


class Client:
    def __init__(self, url: str, timeout: float) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        with self._open(path, body, "application/json") as response, self._reading():
            return json.loads(response.read().decode("utf-8"))  # type: ignore[no-any-return]

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
        """(event, data) pairs of a server-sent event stream."""
        data: list[str]
        with self._open(path, body, "text/event-stream") as response, self._reading():
            event, data = "message", []  # the event being read, and its data lines
            for raw in response:
                line = raw.decode("utf-8").rstrip("\r\n")
                if not line:
                    if data:
                        yield event, json.loads("\n".join(data))
                    event, data = "message", []
                elif line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:"):
                    data.append(line[5:].removeprefix(" "))
            if data:
                yield event, json.loads("\n".join(data))

    @contextlib.contextmanager
    def _reading(self) -> Iterator[None]:
        """A response that breaks off, times out or is not the service's JSON is a ServiceError."""
        try:
            yield
        except ValueError as exc:
            raise ServiceError(f"{self.url} did not answer like a ragqa service ({exc})") from None
        except OSError as exc:
            raise ServiceError(f"the connection to {self.url} failed while reading ({exc})") from None

    def _open(self, path: str, body: dict[str, Any], accept: str) -> Any:
        request = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode("utf-8"),
            headers={"Content-Type": "application/json", "Accept": accept},
            method="POST",
        )
        try:
            return urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            raise _http_error(exc) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ServiceError(
                f"cannot reach the ragqa service at {self.url} ({reason}); start it with `make run`, "
                "or point --url / RAGQA_URL at it"
            ) from None


def _http_error(exc: urllib.error.HTTPError) -> ServiceError:
    try:
        payload = json.loads(exc.read().decode("utf-8"))
        message = str(payload.get("error") or payload)
        for problem in payload.get("detail") or []:
            where = ".".join(str(part) for part in problem.get("loc", []) if part != "body")
            message += f"; {where}: {problem.get('msg')}" if where else f"; {problem.get('msg')}"
    except (ValueError, AttributeError, OSError):
        message = exc.reason or "no message"
    code = USAGE if 400 <= exc.code < 500 and exc.code not in (404, 408, 429) else UNAVAILABLE
    return ServiceError(f"the service answered {exc.code}: {message}", code)


class Printer:
    """Writes answers and passages for a person reading a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.width = 100

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def citations(self, citations: list[dict[str, Any]]) -> None:
        for citation in citations:
            self.write(f"\n[{citation['n']}] {citation['title']} ({citation['source']})\n")
            self.write(self._indented(citation["excerpt"]) + "\n")

    def passages(self, passages: list[dict[str, Any]], heading: str) -> None:
        if heading and passages:
            self.write(f"\n{heading}\n")
        for rank, passage in enumerate(passages, 1):
            self.write(f"\n{rank}. {passage['title']} ({passage['source']})  score {passage['score']:.3f}\n")
            self.write(self._indented(_shorten(passage["text"], 600)) + "\n")

    def _indented(self, text: str) -> str:
        return textwrap.fill(
            " ".join(text.split()), width=self.width, initial_indent="    ", subsequent_indent="    "
        )


def _shorten(text: str, limit: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1].rsplit(" ", 1)[0] + " …"


def request_body(
    body: dict[str, Any], top_k: int | None, mode: str | None, search_filter: dict[str, Any] | None
) -> dict[str, Any]:
    """`body` with the options that were given: top_k, mode (asks only) and filter."""
    options = {"top_k": top_k, "mode": mode, "filter": search_filter or None}
    return {**body, **{key: value for key, value in options.items() if value is not None}}


def ask(
    client: Client,
    printer: Printer,
    question: str,
    top_k: int | None,
    history: list[dict[str, str]],
    mode: str | None = None,
    search_filter: dict[str, Any] | None = None,
) -> tuple[int, str]:
    """Streams one answer to the terminal; returns (exit code, answer text)."""
    body = request_body(
        {"question": question, "history": history, "stream": True}, top_k, mode, search_filter
    )
    answer, citations, passages = "", [], []
    done: dict[str, Any] | None = None
    for event, data in client.stream("/v1/ask", body):
        if event == "passages":
            passages = data
        elif event == "delta":
            answer += data["text"]
            printer.write(data["text"])
        elif event == "citation":
            citations.append(data)
        elif event == "error":
            raise ServiceError(f"the service failed while answering: {data.get('error', data)}")
        elif event == "done":
            done = data
    if done is None:
        raise ServiceError("the answer stream ended before it was complete")
    printer.write("\n")
    for note in notes(done):
        printer.write(f"\n({note})\n")
    if done.get("abstained"):
        printer.write("\n(The service abstained: the indexed documents do not answer this.)\n")
        printer.passages(passages, "Closest passages:")
        return ABSTAINED, answer
    printer.citations(citations)
    return ANSWERED, answer


def notes(done: dict[str, Any]) -> list[str]:
    """What a reader should know about how a generative answer was made."""
    out = []
    if done.get("fallback_reason"):
        what = (
            "This is the extractive answer" if done.get("mode") == "extractive" else "The answer stops here"
        )
        out.append(f"{what}: {done['fallback_reason']}.")
    if done.get("unsupported"):
        count = len(done["unsupported"])
        out.append(
            f"{count} sentence{'s' * (count > 1)} of the LLM's answer left out: "
            "no source it cited supports it."
        )
    return out


def search(
    client: Client,
    printer: Printer,
    query: str,
    top_k: int | None,
    search_filter: dict[str, Any] | None = None,
) -> int:
    body = request_body({"query": query}, top_k, None, search_filter)
    results = client.post("/v1/search", body)["results"]
    if not results:
        printer.write("No passages found.\n")
    printer.passages(results, "")
    return ANSWERED


def raw_json(
    client: Client,
    printer: Printer,
    question: str,
    top_k: int | None,
    searching: bool,
    mode: str | None,
    search_filter: dict[str, Any] | None = None,
) -> int:
    path = "/v1/search" if searching else "/v1/ask"
    text = {"query" if searching else "question": question}
    body = request_body(text, top_k, None if searching else mode, search_filter)
    response = client.post(path, body)
    printer.write(json.dumps(response, ensure_ascii=False, indent=2) + "\n")
    return ABSTAINED if response.get("abstained") else ANSWERED


def interactive(
    client: Client,
    printer: Printer,
    top_k: int | None,
    searching: bool,
    read: Callable[[str], str],
    mode: str | None = None,
    search_filter: dict[str, Any] | None = None,
) -> int:
    """Questions until end of input (or "exit"); each answer's turns become the next one's history.
    "/new" starts a new conversation. Returns the exit code of the last question."""
    history: list[dict[str, str]] = []
    code = ANSWERED
    prompt = "search> " if searching else "ask> "
    while True:
        try:
            line = read(prompt).strip()
        except EOFError:
            printer.write("\n" if sys.stdin.isatty() else "")
            return code
        if not line:
            continue
        if line in ("exit", "quit", "/exit", "/quit"):
            return code
        if line == "/new":
            history = []
            printer.write("(a new conversation)\n")
            continue
        try:
            if searching:
                code = search(client, printer, line, top_k, search_filter)
                continue
            code, answer = ask(client, printer, line, top_k, history, mode, search_filter)
        except ServiceError as exc:
            printer.write(f"ragqa: {exc}\n")
            code = exc.code
            continue
        history += [
            {"role": "user", "content": line[:MAX_TURN_CHARS]},
            {"role": "assistant", "content": answer[:MAX_TURN_CHARS]},
        ]
        history = history[-MAX_HISTORY_TURNS:]
        printer.write("\n")


def parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ragqa",
        description="Ask the ragqa service a question; the answer cites exact excerpts of the documents.",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("question", nargs="*", help="the question (none: an interactive session)")
    parser.add_argument(
        "--url",
        default=os.environ.get("RAGQA_URL") or DEFAULT_URL,
        help=f"the service's base URL (default: $RAGQA_URL, else {DEFAULT_URL})",
    )
    parser.add_argument("-k", "--top-k", type=int, metavar="N", help="passages to retrieve (1-50)")
    parser.add_argument("--search", action="store_true", help="print the best passages only, no answer")
    parser.add_argument("--json", action="store_true", help="print the service's raw JSON response")
    parser.add_argument(
        "--mode",
        choices=["extractive", "generative"],
        help="how to answer (default: the service's; generative needs an LLM behind the service)",
    )
    parser.add_argument(
        "--source",
        metavar="PREFIX",
        help="only documents whose source (as the answers show it) starts with PREFIX",
    )
    parser.add_argument(
        "--doc",
        metavar="ID",
        action="append",
        dest="docs",
        help="only this document (its id); repeat for several",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the service (60)")
    return parser


def search_filter(source: str | None, docs: list[str] | None) -> dict[str, Any] | None:
    """The request's `filter` for --source and --doc (both: documents meeting both), or None."""
    chosen: dict[str, Any] = {}
    if source:
        chosen["source_prefix"] = source
    if docs:
        chosen["doc_ids"] = list(dict.fromkeys(docs))
    return chosen or None


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")  # a terminal that cannot show a character gets "?"
    if args.top_k is not None and not 1 <= args.top_k <= 50:
        parser().error("--top-k must be between 1 and 50")
    if args.source is not None and not args.source:
        parser().error("--source needs a prefix")
    chosen = search_filter(args.source, args.docs)
    client = Client(args.url, args.timeout)
    printer = Printer(sys.stdout)
    question = " ".join(args.question).strip()
    try:
        if not question:
            if args.json:
                parser().error("--json needs a question")
            return interactive(client, printer, args.top_k, args.search, _reader(), args.mode, chosen)
        if args.json:
            return raw_json(client, printer, question, args.top_k, args.search, args.mode, chosen)
        if args.search:
            return search(client, printer, question, args.top_k, chosen)
        return ask(client, printer, question, args.top_k, [], args.mode, chosen)[0]
    except ServiceError as exc:
        print(f"ragqa: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130


def _reader() -> Callable[[str], str]:
    """input() with a prompt on a terminal; plain lines (no prompt) when questions are piped in."""
    if sys.stdin.isatty():
        with contextlib.suppress(ImportError):
            import readline  # noqa: F401  (line editing and history, where the platform has it)
        return input

    def read(_prompt: str) -> str:
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    return read


if __name__ == "__main__":
    sys.exit(main())
