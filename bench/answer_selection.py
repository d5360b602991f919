"""How answer sentences are chosen, measured in process on the dev sets (squad2-dev, nq-open-dev,
covidqa): the figures behind docs/answering.md.

For each set, the questions ragqa-eval samples (`--sample`, `--seed`) plus its off-corpus ones are
encoded and retrieved once, as the service does (the same retriever and settings); then each answer
setting below answers them all from those hits. Per set and setting it prints the answer hit (a gold
answer inside the answer, as ragqa-eval counts it), the mean answer length in words, the answerable
questions abstained on and the off-corpus ones abstained on. Two ceilings frame them: the share of
questions where some sentence of the top passages holds a gold answer, and where the best scoring
sentence alone does.

    .venv/bin/python -m bench.answer_selection [--sample 1000] [--seed 0] [--results DIR]
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    add_results_option,
    build_store,
    command_line,
    eval_questions,
    machine,
    machine_summary,
    now,
    offline,
    publish,
    require_data,
    shared_data,
)
from service import answering
from service.config import ServiceSettings
from service.eval import Question, answer_hit, answer_words, default_store, off_corpus_questions
from service.retrieval import Hit, Retriever

SETS = ("squad2-dev", "nq-open-dev", "covidqa")


@dataclass
class Asked:
    question: Question | None  # None: an off-corpus question
    text: str
    vector: np.ndarray
    hits: list[Hit]


def settings_compared(defaults: ServiceSettings) -> dict[str, tuple[int, answering.AnswerPolicy]]:
    """(passages, policy) per setting: the defaults, and each default moved one step."""
    policy = answering.AnswerPolicy.from_settings(defaults)
    passages = defaults.answer_passages
    return {
        "defaults": (passages, policy),
        "no question-type cue": (passages, replace(policy, question_kinds=False)),
        "3 passages": (3, policy),
        "1 sentence": (passages, replace(policy, most_sentences=1)),
        "margin 0.1": (passages, replace(policy, margin=0.1)),
        "margin 0.08": (passages, replace(policy, margin=0.08)),
        "margin 0.095": (passages, replace(policy, margin=0.095)),
    }


def measure(index: Any, asked: list[Asked], passages: int, policy: answering.AnswerPolicy) -> dict[str, Any]:
    answerable = [a for a in asked if a.question is not None]
    off_corpus = [a for a in asked if a.question is None]
    hits, lengths, abstained, off_abstained = 0, [], 0, 0
    for a in asked:
        given = answering.answer(index, a.vector, a.text, a.hits[:passages], policy)
        if a.question is None:
            off_abstained += given.abstained
        elif given.abstained:
            abstained += 1
        else:
            ask = {"answer": given.text, "abstained": False}
            hits += answer_hit(a.question, ask)
            lengths.append(answer_words(given.text))
    return {
        "answer_hit": round(hits / len(answerable), 3),
        "mean_answer_words": round(float(np.mean(lengths)), 1),
        "abstained_on_answerable": round(abstained / len(answerable), 3),
        "off_corpus_abstained": round(off_abstained / max(1, len(off_corpus)), 3),
    }


def ceilings(index: Any, asked: list[Asked], passages: int) -> dict[str, float]:
    """Some sentence of the top passages holds a gold answer; the best scoring one alone does."""
    anywhere = best_alone = 0
    answerable = [a for a in asked if a.question is not None]
    for a in answerable:
        assert a.question is not None
        scored = answering.score_sentences(index, a.vector, a.text, a.hits[:passages], index.idf)
        said = [index.document(s.doc_id).text[s.start : s.end] for s in scored]
        holds = [answer_hit(a.question, {"answer": text, "abstained": False}) for text in said]
        anywhere += any(holds)
        best_alone += bool(holds) and holds[0]
    return {
        "some_sentence_holds_it": round(anywhere / len(answerable), 3),
        "best_sentence_holds_it": round(best_alone / len(answerable), 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=shared_data("eval"), help="folder of the dev sets")
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--off-corpus", type=int, default=50)
    add_results_option(parser)
    args = parser.parse_args(argv)
    require_data(parser, args.data, "--data")

    offline()
    reading = machine()
    from indexer.embedding import load_embedder
    from service.index import LoadedIndex

    defaults = ServiceSettings()
    embedder = load_embedder(defaults.model)
    retriever = Retriever(defaults)
    compared = settings_compared(defaults)
    result: dict[str, Any] = {"command": command_line("bench.answer_selection", argv), "sets": {}}
    lines = [
        f"# Answer selection ({now()})",
        "",
        f"`{result['command']}`; {machine_summary(reading)}",
        "",
        "hit / mean words / answerable abstained on / off-corpus abstained on, per set",
        "",
        "| setting | " + " | ".join(SETS) + " |",
        "|---|" + "---|" * len(SETS),
    ]
    rows: dict[str, list[str]] = {name: [] for name in compared}
    ceiling_row: list[str] = []
    for name in SETS:
        dataset, answerable = eval_questions(args.data / name, args.sample, args.seed)
        store = default_store(dataset)
        build_store([dataset.corpus], store)
        index = LoadedIndex.load(store, defaults.model)
        texts = [q.text for q in answerable] + off_corpus_questions(args.off_corpus)
        vectors = embedder.encode(texts)
        depth = max(p for p, _ in compared.values())
        asked = [
            Asked(
                answerable[i] if i < len(answerable) else None,
                text,
                vector,
                retriever.search(index, vector, text, depth),
            )
            for i, (text, vector) in enumerate(zip(texts, vectors, strict=True))
        ]
        figures = {label: measure(index, asked, p, policy) for label, (p, policy) in compared.items()}
        bounds = ceilings(index, asked, defaults.answer_passages)
        result["sets"][name] = {"settings": figures, "ceilings": bounds, "questions": len(answerable)}
        for label, f in figures.items():
            rows[label].append(
                f"{f['answer_hit']:.3f} / {f['mean_answer_words']} / {f['abstained_on_answerable']:.3f}"
                f" / {f['off_corpus_abstained']:.2f}"
            )
        ceiling_row.append(f"{bounds['some_sentence_holds_it']:.3f} / {bounds['best_sentence_holds_it']:.3f}")
        print(f"{name}: done", file=sys.stderr, flush=True)
    lines += [f"| {label} | " + " | ".join(cells) + " |" for label, cells in rows.items()]
    lines += [
        "",
        f"Ceilings over the top {defaults.answer_passages} passages: some sentence holds a gold answer / "
        "the best scoring sentence alone does",
        "",
        "| " + " | ".join(SETS) + " |",
        "|---" * len(SETS) + "|",
        "| " + " | ".join(ceiling_row) + " |",
    ]
    publish("answer_selection", result, "\n".join(lines), args.results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
