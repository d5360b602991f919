"""`ragqa-eval DATASET_DIR [--sample N] [--seed S] [--json] ...`: measure retrieval, answers, citations
and abstention through the real HTTP API.

A dataset uses the BEIR layout plus answers: `corpus.jsonl`, `queries.jsonl` (`{"_id", "text",
"answers", "is_impossible"?}`) and `qrels/test.tsv`. Unless `--url` names a running service, the
corpus is indexed (incrementally, into a cached store) and the real service is started as a
subprocess on a free port, asked, and stopped.

Sampling: the questions that have qrels, in file order, then `random.Random(seed).sample(them, N)`;
the unanswerable ones (`is_impossible`) separately with `random.Random(seed).sample(them, min(N, len))`;
plus `--off-corpus` synthetic questions far outside any corpus, made from fixed templates.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import re
import shlex
import statistics
import sys
import time
import urllib.parse
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx

from service.processes import index_command, running_service

if TYPE_CHECKING:
    from indexer.pipeline import IndexReport

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EVAL_ROOT = Path("var/eval")
REQUEST_TIMEOUT = 120.0
WARMUP_REQUESTS = 24  # untimed asks before measuring: a fresh service's first model calls are slow
MARKER = re.compile(r"\[(\d+)\]")

# Off-corpus questions: per topic, templates and fillers whose counts are coprime, so that the k-th
# question of a topic (template k mod T, filler k mod F) runs through all T*F pairs before repeating.
OFF_CORPUS_TOPICS: dict[str, tuple[list[str], list[str]]] = {
    "cooking": (
        [
            "How long should I bake {} at 180 degrees Celsius?",
            "What can I use instead of eggs when making {}?",
            "Why did my {} turn out dry and crumbly?",
        ],
        ["banana bread", "sourdough focaccia", "chocolate chip cookies", "lasagne", "carrot cake"],
    ),
    "sports scores": (
        [
            "What was the final score of last night's {} game?",
            "Who was the top scorer in the last {} game?",
            "When do {} play their next home match this season?",
        ],
        ["Arsenal", "Boston Celtics", "Green Bay Packers", "Juventus", "Toronto Maple Leafs"],
    ),
    "programming errors": (
        [
            'How do I fix "{}" in my Python virtualenv?',
            'Why does my CI pipeline fail with "{}" after upgrading?',
            'What is the quickest workaround for "{}" on macOS?',
        ],
        [
            "ModuleNotFoundError: No module named 'numpy'",
            "TypeError: 'NoneType' object is not subscriptable",
            "SSL: CERTIFICATE_VERIFY_FAILED",
            "npm ERR! code ERESOLVE",
            "segmentation fault (core dumped)",
        ],
    ),
    "celebrity birthdays": (
        [
            "What should I get {} for her birthday party next week?",
            "How old will {} turn on her next birthday?",
            "Where is {} celebrating her birthday this year?",
        ],
        ["Taylor Swift", "Zendaya", "Billie Eilish", "Dua Lipa", "Selena Gomez"],
    ),
    "space missions": (
        [
            "What time does the {} livestream start tonight in my time zone?",
            "How many days are left until the {} launch window opens?",
            "Which seat on the {} crew capsule has the best view?",
        ],
        ["Artemis III", "Starship flight 12", "Europa Clipper flyby", "Dragonfly", "Mars Sample Return"],
    ),
    "personal finance": (
        [
            "Should I refinance my {} now that rates dropped last month?",
            "How much tax will I owe on my {} if I sell it this year?",
            "Which bank near me offers the best rate on a {}?",
        ],
        ["mortgage", "car loan", "index fund shares", "crypto wallet", "holiday home"],
    ),
    "gadgets": (
        [
            "Why does my {} keep disconnecting from the wifi?",
            "How do I factory reset a {} without the app?",
            "Is the {} worth buying on Black Friday this year?",
        ],
        ["Pixel 9 phone", "robot vacuum", "smart doorbell", "noise-cancelling headphones", "e-reader"],
    ),
    "everyday errands": (
        [
            "Is the {} on Maple Street open this Sunday?",
            "How long is the queue at the {} near me right now?",
            "Can I book a slot at the {} for tomorrow morning?",
        ],
        ["post office", "car wash", "hair salon", "pharmacy", "recycling centre"],
    ),
}


def off_corpus_questions(count: int) -> list[str]:
    """`count` distinct synthetic questions (at most all template x filler pairs), deterministic:
    topics taken in turn, each walking its template/filler pairs."""
    topics = list(OFF_CORPUS_TOPICS.values())
    capacity = sum(len(t) * len(f) for t, f in topics)
    questions: list[str] = []
    k = 0
    while len(questions) < min(count, capacity):
        for templates, fillers in topics:
            if len(questions) >= count or k >= len(templates) * len(fillers):
                continue
            questions.append(templates[k % len(templates)].format(fillers[k % len(fillers)]))
        k += 1
    return questions


# --- the dataset ---------------------------------------------------------------------------------


class DatasetError(Exception):
    pass


@dataclass
class Question:
    qid: str
    text: str
    answers: list[str]
    impossible: bool
    gold: list[str] = field(default_factory=list)


@dataclass
class Dataset:
    name: str
    folder: Path
    questions: list[Question]

    @property
    def corpus(self) -> Path:
        return self.folder / "corpus.jsonl"


def load_dataset(folder: Path, need_corpus: bool) -> Dataset:
    if not folder.is_dir():
        raise DatasetError(f"no dataset folder at {folder}")
    required = [folder / "queries.jsonl", folder / "qrels" / "test.tsv"]
    if need_corpus:
        required.insert(0, folder / "corpus.jsonl")
    for path in required:
        if not path.is_file():
            raise DatasetError(f"the dataset has no {path.relative_to(folder)} (looked for {path})")
    qrels: dict[str, list[str]] = {}
    with (folder / "qrels" / "test.tsv").open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            parts = line.rstrip("\n").split("\t")
            if number == 1 or not line.strip():
                continue  # the header
            if len(parts) < 3:
                raise DatasetError(f"qrels/test.tsv line {number}: expected query-id, corpus-id, score")
            try:
                relevant = float(parts[2]) > 0
            except ValueError as exc:
                raise DatasetError(
                    f"qrels/test.tsv line {number}: score {parts[2]!r} is not a number"
                ) from exc
            if relevant and parts[1] not in qrels.setdefault(parts[0], []):
                qrels[parts[0]].append(parts[1])
    questions: list[Question] = []
    with (folder / "queries.jsonl").open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                qid, text = str(record["_id"]), str(record["text"])
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise DatasetError(f"queries.jsonl line {number}: not a query object ({exc})") from exc
            answers = [str(a) for a in record.get("answers") or [] if str(a).strip()]
            impossible = bool(record.get("is_impossible", False))
            questions.append(Question(qid, text, answers, impossible, qrels.get(qid, [])))
    return Dataset(folder.resolve().name, folder, questions)


def sample(dataset: Dataset, size: int | None, seed: int) -> tuple[list[Question], list[Question]]:
    """(answerable, unanswerable): the questions with qrels in file order, sampled with
    `random.Random(seed).sample(them, N)`; the unanswerable ones likewise with min(N, len)."""
    answerable = [q for q in dataset.questions if q.gold]
    impossible = [q for q in dataset.questions if q.impossible and not q.gold]
    if size is not None and size < len(answerable):
        answerable = random.Random(seed).sample(answerable, size)
    if size is not None:
        impossible = random.Random(seed).sample(impossible, min(size, len(impossible)))
    return answerable, impossible


# --- the store and the service -------------------------------------------------------------------


def default_store(dataset: Dataset) -> Path:
    stat = dataset.corpus.stat()
    key = hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return EVAL_ROOT / f"{dataset.name}-{key}" / "store"


def index_corpus(sources: list[Path], store: str | Path) -> IndexReport:
    """Index in process into the local store `store` (incremental: a rerun over an unchanged corpus
    embeds and publishes nothing). Shared with the benchmarks."""
    from indexer import logs
    from indexer.config import IndexSettings
    from indexer.pipeline import run_index

    logs.configure("WARNING")
    overrides: dict[str, Any] = {"store": store}
    return run_index(sources, IndexSettings(**overrides))


# --- asking --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What the service did with one question."""

    question: Question | None
    text: str
    kind: str  # "answerable", "unanswerable" or "off-corpus"
    doc_ranking: list[str] = field(default_factory=list)
    search_ms: float | None = None
    ask_ms: float | None = None
    ask: dict[str, Any] | None = None
    error: str | None = None
    search_first: bool = True  # answerable only: which of its two requests came first (and met a cold cache)
    against: dict[str, Any] | None = None  # answerable only: the ask of the service given by --against


def _post(client: httpx.Client, path: str, body: dict[str, Any]) -> tuple[dict[str, Any], float]:
    started = time.perf_counter()
    response = client.post(path, json=body)
    elapsed = (time.perf_counter() - started) * 1000
    if response.status_code != 200:
        raise RuntimeError(f"{path} answered {response.status_code}: {response.text[:200]}")
    return response.json(), elapsed


def run_one(client: httpx.Client, outcome: Outcome, search_k: int, ask_k: int) -> Outcome:
    """Search (answerable questions only) and ask. The service caches question vectors, so only the
    first of the two requests pays for encoding; `search_first` says which one that was."""

    def search() -> None:
        found, outcome.search_ms = _post(client, "/v1/search", {"query": outcome.text, "top_k": search_k})
        outcome.doc_ranking = list(dict.fromkeys(p["doc_id"] for p in found["results"]))

    def ask() -> None:
        outcome.ask, outcome.ask_ms = _post(client, "/v1/ask", {"question": outcome.text, "top_k": ask_k})

    steps = [search, ask] if outcome.search_first else [ask, search]
    try:
        for step in steps if outcome.kind == "answerable" else [ask]:
            step()
    except (httpx.HTTPError, RuntimeError, ValueError) as exc:
        outcome.error = str(exc) or type(exc).__name__
    return outcome


def ask_against(url: str, outcomes: list[Outcome], pool: ThreadPoolExecutor) -> None:
    """Ask the --against service each question (`top_k` 10, as this one); its answer in `against`."""
    with httpx.Client(base_url=url.rstrip("/"), timeout=REQUEST_TIMEOUT) as client:

        def ask(outcome: Outcome) -> None:
            try:
                outcome.against, _ = _post(client, "/v1/ask", {"question": outcome.text, "top_k": 10})
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                outcome.error = f"--against: {exc or type(exc).__name__}"

        list(pool.map(ask, outcomes))


def fetch_documents(client: httpx.Client, doc_ids: set[str], concurrency: int) -> dict[str, str | None]:
    """Each cited document's text, fetched once (None when the service does not know it)."""

    def fetch(doc_id: str) -> tuple[str, str | None]:
        response = client.get("/v1/documents/" + urllib.parse.quote(doc_id, safe=""))
        return doc_id, str(response.json()["text"]) if response.status_code == 200 else None

    with ThreadPoolExecutor(concurrency) as pool:
        return dict(pool.map(fetch, sorted(doc_ids)))


# --- figures -------------------------------------------------------------------------------------


def ratio(hits: int, total: int) -> float | None:
    return round(hits / total, 4) if total else None


def percentiles(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p95, p99 (inclusive quantiles), mean and n of latencies in milliseconds, to 0.01 ms; the
    figures are None for no values. The one percentile function of ragqa-eval and the benchmarks."""
    if not values:
        return {"p50": None, "p95": None, "p99": None, "mean": None, "n": 0}
    cuts = (
        [float(values[0])] * 99
        if len(values) == 1
        else statistics.quantiles(values, n=100, method="inclusive")
    )
    figures = {"p50": cuts[49], "p95": cuts[94], "p99": cuts[98], "mean": statistics.fmean(values)}
    return {**{k: round(v, 2) for k, v in figures.items()}, "n": len(values)}


def abstention_figures(positives: list[Outcome], negatives: list[Outcome]) -> dict[str, Any]:
    """Abstaining is the positive prediction; `positives` should be abstained on, `negatives` not."""
    true_pos = sum(1 for o in positives if o.ask and o.ask["abstained"])
    false_pos = sum(1 for o in negatives if o.ask and o.ask["abstained"])
    return {
        "precision": ratio(true_pos, true_pos + false_pos),
        "recall": ratio(true_pos, len(positives)),
        "positives": len(positives),
        "negatives": len(negatives),
    }


def compute(outcomes: list[Outcome], documents: dict[str, str | None]) -> dict[str, Any]:
    done = [o for o in outcomes if o.error is None]
    answerable = [o for o in done if o.kind == "answerable"]
    asks = [o.ask for o in done if o.ask is not None]

    recall: dict[str, float | None] = {}
    for k in (1, 5, 10):
        hits = sum(1 for o in answerable if o.question and set(o.question.gold) & set(o.doc_ranking[:k]))
        recall[f"recall@{k}"] = ratio(hits, len(answerable))
    reciprocal = 0.0
    for o in answerable:
        assert o.question is not None
        rank = next((i for i, d in enumerate(o.doc_ranking[:10], 1) if d in o.question.gold), None)
        reciprocal += 1 / rank if rank else 0.0

    asked = [(o.question, o.ask) for o in answerable if o.question and o.ask]

    citations = [c for a in asks for c in a["citations"]]
    exact = sum(
        1 for c in citations if (documents.get(c["doc_id"]) or "")[c["start"] : c["end"]] == c["excerpt"]
    )
    consistent = sum(1 for a in asks if _markers_consistent(a))

    unanswerable = [o for o in done if o.kind == "unanswerable"]
    off_corpus = [o for o in done if o.kind == "off-corpus"]
    confidences = [o.ask for o in done if o.ask and _confidence(o.ask) is not None]
    return {
        "retrieval": {**recall, "mrr@10": round(reciprocal / len(answerable), 4) if answerable else None},
        "answers": {
            **answer_figures(asked),
            "citation_exactness": ratio(exact, len(citations)),
            "citations": len(citations),
            "marker_consistency": ratio(consistent, len(asks)),
            "asks": len(asks),
        },
        "abstention": {
            "unanswerable_from_corpus": abstention_figures(unanswerable, answerable)
            if unanswerable
            else None,
            "off_corpus_synthetic": abstention_figures(off_corpus, answerable) if off_corpus else None,
            "combined": abstention_figures(unanswerable + off_corpus, answerable),
        },
        "latency_ms": {
            # Cold: the request that met the question first (the service caches question vectors).
            "search": percentiles(
                [o.search_ms for o in answerable if o.search_ms is not None and o.search_first]
            ),
            "ask": percentiles(
                [
                    o.ask_ms
                    for o in done
                    if o.ask_ms is not None and (o.kind != "answerable" or not o.search_first)
                ]
            ),
            "search_after_ask": percentiles(
                [o.search_ms for o in answerable if o.search_ms and not o.search_first]
            ),
            "ask_after_search": percentiles([o.ask_ms for o in answerable if o.ask_ms and o.search_first]),
        },
        "against": against_figures(answerable) if any(o.against for o in answerable) else None,
        "confidences_reported": len(confidences),
        "errors": len(outcomes) - len(done),
    }


def answer_figures(asked: list[tuple[Question, dict[str, Any]]], cut: int | None = None) -> dict[str, Any]:
    """Answer hit, mean answer length in words (markers excluded) and the share abstained on, over
    answerable questions and their asks; with `cut`, the hit of every answer cut to its first `cut`
    words."""
    with_answers = [(q, a) for q, a in asked if q.answers]
    hits = sum(1 for q, a in with_answers if answer_hit(q, a, cut))
    # over the answers given (abstentions left out): a gain in hits must not be just a longer answer
    lengths = [answer_words(a["answer"]) for _, a in asked if not a["abstained"]]
    return {
        "answer_hit_rate": ratio(hits, len(with_answers)),
        "mean_answer_words": round(sum(lengths) / len(lengths), 1) if lengths else None,
        "abstained_on_answerable": ratio(sum(1 for _, a in asked if a["abstained"]), len(asked)),
    }


def against_figures(answerable: list[Outcome]) -> dict[str, Any]:
    """This service's answers against those of the --against service on the questions both answered
    (or abstained on): each one's figures, and both hit rates with every answer cut to the same number
    of words, the smaller of the two mean lengths (rounded down): a gain that is only a longer answer
    does not survive the cut."""
    both = [(o.question, o.ask, o.against) for o in answerable if o.question and o.ask and o.against]
    ours = [(question, ask) for question, ask, _ in both]
    theirs = [(question, against) for question, _, against in both]
    figures, other = answer_figures(ours), answer_figures(theirs)
    means = [m for m in (figures["mean_answer_words"], other["mean_answer_words"]) if m is not None]
    cut = int(min(means)) if means else 0
    return {
        "questions": len(both),
        "this": figures,
        "against": other,
        "equal_length_words": cut,
        "answer_hit_at_equal_length": answer_figures(ours, cut)["answer_hit_rate"],
        "against_answer_hit_at_equal_length": answer_figures(theirs, cut)["answer_hit_rate"],
    }


def answer_words(answer: str) -> int:
    """An answer's length in words, its [n] markers left out."""
    return len(MARKER.sub(" ", answer).split())


def answer_hit(question: Question, ask: dict[str, Any], cut: int | None = None) -> bool:
    """A gold answer string inside a non-abstained answer (its [n] markers left out; case and runs of
    white space ignored); with `cut`, inside the answer's first `cut` words. An abstention's fixed
    message never counts."""
    if ask["abstained"]:
        return False
    text = MARKER.sub(" ", ask["answer"]).split()
    answer = " ".join(text if cut is None else text[:cut]).casefold()
    return any(" ".join(a.split()).casefold() in answer for a in question.answers)


def _markers_consistent(ask: dict[str, Any]) -> bool:
    """Every [n] in the answer has a citation n, and every citation's [n] is in the answer."""
    markers = {int(n) for n in MARKER.findall(ask["answer"])}
    numbers = [int(c["n"]) for c in ask["citations"]]
    return len(numbers) == len(set(numbers)) and markers == set(numbers)


def _confidence(ask: dict[str, Any]) -> float | None:
    """The ask's `confidence`: the score of its best answering sentence (null when it has none)."""
    value = ask.get("confidence")
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


# --- output --------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _ms(value: Any) -> str:
    return "n/a" if value is None else f"{value:.1f}"


def render(result: dict[str, Any]) -> str:
    f = result["figures"]
    r, a, ab, lat = f["retrieval"], f["answers"], f["abstention"], f["latency_ms"]
    rows = [
        ("dataset", result["dataset"]),
        (
            "answerable questions (with qrels)",
            f"{result['sampled']['answerable']} of {result['available']['answerable']}",
        ),
        (
            "unanswerable questions",
            f"{result['sampled']['unanswerable']} of {result['available']['unanswerable']}",
        ),
        ("off-corpus questions (synthetic, from templates)", result["sampled"]["off_corpus"]),
        ("seed / concurrency", f"{result['seed']} / {result['concurrency']}"),
        ("index version", result["index_version"]),
        ("recall@1 / @5 / @10", " / ".join(_fmt(r[f"recall@{k}"]) for k in (1, 5, 10))),
        ("MRR@10", _fmt(r["mrr@10"])),
        ("answer hit rate", _fmt(a["answer_hit_rate"])),
        ("mean answer length (words, markers excluded)", _fmt(a.get("mean_answer_words"))),
        ("abstained on answerable", _fmt(a["abstained_on_answerable"])),
        ("citation exactness", f"{_fmt(a['citation_exactness'])}  ({a['citations']} citations)"),
        ("marker/citation consistency", f"{_fmt(a['marker_consistency'])}  ({a['asks']} answers)"),
    ]
    for key, label in (
        ("unanswerable_from_corpus", "abstention P / R, unanswerable"),
        ("off_corpus_synthetic", "abstention P / R, off-corpus (synthetic)"),
        ("combined", "abstention P / R, combined"),
    ):
        figures = ab[key]
        rows.append(
            (label, "n/a" if figures is None else f"{_fmt(figures['precision'])} / {_fmt(figures['recall'])}")
        )
    for route, label in (("search", "search"), ("ask", "ask"), ("ask_after_search", "ask, question cached")):
        figures = lat[route]
        rows.append(
            (
                f"{label} latency p50 / p95 ms",
                f"{_ms(figures['p50'])} / {_ms(figures['p95'])}  (n={figures['n']})",
            )
        )
    versus = f.get("against")
    if versus:
        this, other, cut = versus["this"], versus["against"], versus["equal_length_words"]
        rows += [
            (
                f"against {result['against']}: hit / words / abstained",
                f"{_fmt(other['answer_hit_rate'])} / {_fmt(other['mean_answer_words'])} / "
                f"{_fmt(other['abstained_on_answerable'])}  (this: {_fmt(this['answer_hit_rate'])} / "
                f"{_fmt(this['mean_answer_words'])} / {_fmt(this['abstained_on_answerable'])}, "
                f"{versus['questions']} questions)",
            ),
            (
                f"answer hit at equal length ({cut} words): this / against",
                f"{_fmt(versus['answer_hit_at_equal_length'])} / "
                f"{_fmt(versus['against_answer_hit_at_equal_length'])}",
            ),
        ]
    if f["errors"]:
        rows.append(("failed requests", str(f["errors"])))
    width = max(len(label) for label, _ in rows)
    lines = [f"{label:<{width}}  {value}" for label, value in rows]
    lines.append(
        "(abstention: positives are the questions to abstain on, negatives the answerable sample; "
        "latency is client-side wall time at the given concurrency, of the first request for a question "
        f"(the service caches question vectors), after {WARMUP_REQUESTS} untimed warm-up asks; "
        "off-corpus questions are synthetic)"
    )
    return "\n".join(lines)


# --- the command ---------------------------------------------------------------------------------


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="ragqa-eval",
        description="Evaluate retrieval, answers, citations and abstention on a BEIR-layout dataset "
        "through the real HTTP API.",
    )
    parser.add_argument("dataset", type=Path, help="folder with corpus.jsonl, queries.jsonl, qrels/test.tsv")
    parser.add_argument(
        "--sample", type=int, help="answerable (and unanswerable) questions to sample (default all)"
    )
    parser.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON on the last line")
    parser.add_argument(
        "--store",
        help="store to index into and serve (default: a cache in var/eval); a Milvus store "
        "(docs/scale-out.md) is exported from that cache",
    )
    parser.add_argument("--url", help="ask a running service instead of starting one (no indexing)")
    parser.add_argument(
        "--against",
        metavar="URL",
        help="a running service to compare answers with (e.g. the previous release over the same store): "
        "it is asked the same answerable questions, and both are reported at equal answer length",
    )
    parser.add_argument(
        "--top-k", type=int, default=10, help="search depth; at least 10 is used (default 10)"
    )
    parser.add_argument("--concurrency", type=int, default=4, help="requests in flight (default 4)")
    parser.add_argument(
        "--off-corpus", type=int, default=50, help="synthetic off-corpus questions (default 50)"
    )
    args = parser.parse_args(argv)
    for name in ("sample", "concurrency"):
        value = getattr(args, name)
        if value is not None and value < 1:
            parser.error(f"--{name} must be at least 1")
    if args.off_corpus < 0:
        parser.error("--off-corpus must be 0 or more")
    if not 1 <= args.top_k <= 50:
        parser.error("--top-k must be between 1 and 50")
    return args


def command_line(argv: list[str]) -> str:
    program = (
        Path(sys.argv[0]).name
        if sys.argv and sys.argv[0].endswith("ragqa-eval")
        else "python -m service.eval"
    )
    return (
        shlex.join([program, *argv]) if program == "ragqa-eval" else f"{program} {shlex.join(argv)}".strip()
    )


def evaluate(args: argparse.Namespace, dataset: Dataset, url: str) -> dict[str, Any]:
    answerable, unanswerable = sample(dataset, args.sample, args.seed)
    outcomes = [Outcome(q, q.text, "answerable", search_first=i % 2 == 0) for i, q in enumerate(answerable)]
    outcomes += [Outcome(q, q.text, "unanswerable") for q in unanswerable]
    synthetic = off_corpus_questions(args.off_corpus)
    outcomes += [Outcome(None, text, "off-corpus") for text in synthetic]
    search_k = max(10, args.top_k)
    limits = httpx.Limits(max_connections=args.concurrency * 2)
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT, limits=limits) as client:
        with ThreadPoolExecutor(args.concurrency) as pool:
            warmup = [
                f"Warm-up question {i}: what does the word number {i} mean?" for i in range(WARMUP_REQUESTS)
            ]
            list(pool.map(lambda text: client.post("/v1/ask", json={"question": text, "top_k": 10}), warmup))
            finished = list(pool.map(lambda o: run_one(client, o, search_k, 10), outcomes))
            if args.against:
                ask_against(args.against, [o for o in finished if o.kind == "answerable"], pool)
        cited = {c["doc_id"] for o in finished if o.ask for c in o.ask["citations"]}
        documents = fetch_documents(client, cited, args.concurrency)
    versions = sorted({o.ask["index_version"] for o in finished if o.ask})
    return {
        "dataset": dataset.name,
        "dataset_path": str(dataset.folder.resolve()),
        "sample": args.sample,
        "seed": args.seed,
        "concurrency": args.concurrency,
        "search_top_k": search_k,
        "against": args.against,
        "ask_top_k": 10,
        "warmup_requests": WARMUP_REQUESTS,
        "available": {
            "answerable": sum(1 for q in dataset.questions if q.gold),
            "unanswerable": sum(1 for q in dataset.questions if q.impossible and not q.gold),
        },
        "sampled": {
            "answerable": len(answerable),
            "unanswerable": len(unanswerable),
            "off_corpus": len(synthetic),
        },
        "off_corpus_note": "off-corpus questions are synthetic: fixed templates x topics in service/eval.py",
        "index_version": ", ".join(versions) or None,
        "figures": compute(finished, documents),
        "first_errors": [f"{o.kind} {o.text!r}: {o.error}" for o in finished if o.error][:5],
        "_outcomes": finished,
    }


def per_question(outcomes: list[Outcome]) -> list[dict[str, Any]]:
    """One record a question, for looking into failures (written to the results file only)."""
    records = []
    for o in outcomes:
        record: dict[str, Any] = {"kind": o.kind, "question": o.text, "error": o.error}
        if o.question is not None:
            record.update(id=o.question.qid, answers=o.question.answers, gold=o.question.gold)
            if o.kind == "answerable":
                rank = next((i for i, d in enumerate(o.doc_ranking, 1) if d in o.question.gold), None)
                record.update(
                    gold_rank=rank,
                    answer_hit=o.ask is not None and answer_hit(o.question, o.ask),
                )
        if o.ask is not None:
            record.update(
                answer=o.ask["answer"],
                abstained=o.ask["abstained"],
                cited=[c["doc_id"] for c in o.ask["citations"]],
                confidence=_confidence(o.ask),
                search_ms=o.search_ms and round(o.search_ms, 1),
                ask_ms=round(o.ask_ms or 0.0, 1),
            )
        if o.against is not None:
            record.update(against_answer=o.against["answer"], against_abstained=o.against["abstained"])
        records.append(record)
    return records


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        dataset = load_dataset(args.dataset, need_corpus=args.url is None)
    except DatasetError as exc:
        print(f"ragqa-eval: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, UnicodeDecodeError) as exc:
        print(f"ragqa-eval: cannot read the dataset: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if not any(q.gold for q in dataset.questions):
        print(f"ragqa-eval: no question in {args.dataset} has qrels", file=sys.stderr)
        return EXIT_USAGE

    try:
        if args.url:
            result = evaluate(args, dataset, args.url.rstrip("/"))
        else:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            store: str | Path = args.store or default_store(dataset)
            print(f"ragqa-eval: indexing {dataset.corpus} into {store}", file=sys.stderr, flush=True)
            if isinstance(store, str) and "://" in store:  # Milvus, exported from the default cache
                # by `ragqa-index` in a process of its own, as a deployment's indexer: an embedded
                # milvus-lite file is opened by one process at a time, and the service is another
                env = {**os.environ, "RAGQA_WORK_STORE": str(default_store(dataset))}
                index_command([dataset.corpus], store, env)
            else:
                index_corpus([dataset.corpus], store)
            with running_service(store) as service:  # its log in a temporary file
                result = evaluate(args, dataset, service.url)
            result["store"] = str(store)
    except Exception as exc:  # a clear message, not a traceback, for a failed run
        print(f"ragqa-eval: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EXIT_FAILED

    outcomes: list[Outcome] = result.pop("_outcomes")
    result["command"] = command_line(argv)
    print(render(result))
    for error in result["first_errors"]:
        print(f"  failed: {error}", file=sys.stderr)

    out = EVAL_ROOT / "results" / f"{dataset.name}-{args.sample or 'all'}-{args.seed}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps({**result, "questions": per_question(outcomes)}, indent=1, ensure_ascii=False) + "\n"
    )
    print(f"(written to {out})")
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    return EXIT_OK if result["figures"]["errors"] == 0 else EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
