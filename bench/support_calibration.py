"""Calibrates the support check of generative answers (RAGQA_SUPPORT_THRESHOLD) on SQuAD 2.0 dev.

A generated sentence is kept when a source it cites supports it: the best score, over the cited
passage's stored sentence vectors, of cosine + 0.3 × the idf-weighted share of the sentence's
content words found in the source sentence (service/generative.py). To set the threshold we need
sentences that a passage does and does not support. From answerable SQuAD questions (question q,
gold answer a, gold paragraph P) the benchmark makes the claim "q a." and scores three pairs:

- supported: the claim against P, which states the answer;
- topical, unsupported: the claim against the paragraph of the same article that scores best for
  it among those that do not contain the answer (a source on the same subject that does not say it);
- swapped answer, unsupported: the claim with another question's answer from the same article
  (absent from P) against P: a wrong fact in a sentence otherwise close to its source.

It prints, for each threshold, with and without the rule that the passage must mention every name
and number of the claim, the share of each kind that the check keeps, and the setting that best
separates them: J = supported kept - mean of the two unsupported kinds kept.

    .venv/bin/python -m bench.support_calibration [--sample 1000] [--seed 1] [--results DIR]
"""

from __future__ import annotations

import argparse
import random
import sys
from collections import defaultdict
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
from indexer.config import IndexSettings
from service import generative
from service.eval import default_store
from service.index import LoadedIndex
from service.retrieval import Hit

DATA = shared_data("eval/squad2-dev")
THRESHOLDS = [round(0.30 + 0.05 * i, 2) for i in range(17)]


def support(index: LoadedIndex, vector: np.ndarray, claim: str, chunk_id: int) -> tuple[float, bool]:
    """The support score and whether the passage names every name and number of the claim."""
    found = generative.best_support(index, vector, claim, Hit(chunk_id, 0.0))
    assert found is not None
    return found.sentence.score, not found.novel


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--sample", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1, help="default 1: not the evaluation's sample (seed 0)")
    add_results_option(parser)
    args = parser.parse_args(argv)
    require_data(parser, args.data, "--data")

    offline()
    reading = machine()
    dataset, answerable = eval_questions(args.data, args.sample, args.seed)
    store = default_store(dataset)
    build_store([dataset.corpus], store)
    settings = IndexSettings()
    index = LoadedIndex.load(store, settings.model)
    from indexer.embedding import load_embedder

    embedder = load_embedder(settings.model)

    chunks_of: dict[str, list[int]] = defaultdict(list)
    for chunk in index.chunk_records():
        chunks_of[chunk.doc_id].append(chunk.chunk_id)
    article = {doc_id: doc_id.split("#")[0] for doc_id in chunks_of}
    docs_of_article: dict[str, list[str]] = defaultdict(list)
    for doc_id, name in article.items():
        docs_of_article[name].append(doc_id)
    answers_of_article: dict[str, set[str]] = defaultdict(set)
    for question in dataset.questions:
        for doc_id in question.gold:
            answers_of_article[article.get(doc_id, "")].update(question.answers)

    rng = random.Random(args.seed)
    pairs: list[tuple[str, str, int]] = []  # (kind, claim, chunk id)
    for question in answerable:
        gold = question.gold[0]
        answer = question.answers[0]
        if gold not in chunks_of:
            continue
        gold_chunk = next((c for c in chunks_of[gold] if answer in index.chunk_text(c)), None)
        if gold_chunk is None:
            continue
        claim = f"{question.text.rstrip(' ?')}? {answer}."
        pairs.append(("supported", claim, gold_chunk))
        others = [
            c
            for d in docs_of_article[article[gold]]
            if d != gold
            for c in chunks_of[d]
            if not any(a in index.chunk_text(c) for a in question.answers)
        ]
        if others:
            pairs.append(("topical", claim, _hardest(index, embedder, claim, others)))
        text = index.chunk_text(gold_chunk)
        swaps = sorted(a for a in answers_of_article[article[gold]] if a not in text and len(a) > 1)
        if swaps:
            pairs.append(("swapped", f"{question.text.rstrip(' ?')}? {rng.choice(swaps)}.", gold_chunk))

    vectors = embedder.encode([claim for _, claim, _ in pairs])
    scores: dict[str, list[float]] = defaultdict(list)
    named: dict[str, list[bool]] = defaultdict(list)
    for (kind, claim, chunk_id), vector in zip(pairs, vectors, strict=True):
        score, names_found = support(index, vector, claim, chunk_id)
        scores[kind].append(score)
        named[kind].append(names_found)

    rows = []
    for names_rule in (False, True):
        for threshold in THRESHOLDS:
            kept = {
                kind: float(
                    np.mean(
                        [
                            s >= threshold and (ok or not names_rule)
                            for s, ok in zip(v, named[kind], strict=True)
                        ]
                    )
                )
                for kind, v in scores.items()
            }
            row = {"threshold": threshold, "names_rule": names_rule, **kept}
            rows.append({**row, "J": kept["supported"] - (kept["topical"] + kept["swapped"]) / 2})
    best = max(rows, key=lambda r: r["J"])
    result: dict[str, Any] = {
        "created": now(),
        "command": command_line("bench.support_calibration", argv),
        "machine": reading,
        "data": str(args.data),
        "sample": args.sample,
        "seed": args.seed,
        "pairs": {kind: len(values) for kind, values in scores.items()},
        "median_score": {kind: round(float(np.median(v)), 3) for kind, v in scores.items()},
        "rows": rows,
        "best": best,
    }
    publish("support_calibration", result, markdown(result), args.results)
    return 0


def _hardest(index: LoadedIndex, embedder: Any, claim: str, chunk_ids: list[int]) -> int:
    vector = embedder.encode_short([claim])[0]
    return max(chunk_ids, key=lambda c: float(index.cosines(vector, [c])[0]))


def markdown(result: dict[str, Any]) -> str:
    lines = [
        f"SQuAD 2.0 dev, {result['sample']} answerable questions sampled with seed {result['seed']}; pairs: "
        + ", ".join(f"{k} {v}" for k, v in result["pairs"].items())
        + "; median score: "
        + ", ".join(f"{k} {v}" for k, v in result["median_score"].items()),
        "",
        "| names rule | threshold | supported kept | topical kept (should not be) | swapped answer kept "
        "(should not be) | J |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        mark = " **best**" if row == result["best"] else ""
        lines.append(
            f"| {'yes' if row['names_rule'] else 'no'} | {row['threshold']:.2f}{mark} | "
            f"{row['supported']:.3f} | {row['topical']:.3f} | {row['swapped']:.3f} | {row['J']:.3f} |"
        )
    lines += ["", f"Machine: {machine_summary(result['machine'])}.", "", f"`{result['command']}`"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
