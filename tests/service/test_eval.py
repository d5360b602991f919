"""`python -m service.eval` end to end on a tiny dataset: real indexing, the real service over real
HTTP on 127.0.0.1, the real bundled model."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DOCUMENTS = [
    (
        "alps#0",
        "The Alps",
        "The Alps are the highest mountain range in Europe. Mont Blanc rises to 4,806 metres.",
    ),
    (
        "nile#0",
        "Nile",
        "The Nile flows north through eleven countries. It empties into the Mediterranean Sea.",
    ),
    (
        "bees#0",
        "Honey bee",
        "Honey bees live in colonies ruled by a single queen. Workers gather nectar and pollen.",
    ),
    ("tea#0", "Tea", "Tea is brewed from the leaves of Camellia sinensis. It was first drunk in China."),
    ("iron#0", "Iron", "Iron is a chemical element with the symbol Fe. Its atomic number is 26."),
]
QUESTIONS = [
    ("q1", "How high is Mont Blanc?", ["4,806 metres"], "alps#0"),
    ("q2", "Into which sea does the Nile empty?", ["Mediterranean Sea"], "nile#0"),
    ("q3", "Who rules a honey bee colony?", ["a single queen"], "bees#0"),
    ("q4", "What is the chemical symbol of iron?", ["Fe"], "iron#0"),
]
IMPOSSIBLE = [("q5", "How many moons does the Nile have?"), ("q6", "What colour is the queen of iron?")]
FIGURES = [
    ("retrieval", "recall@1"),
    ("retrieval", "recall@5"),
    ("retrieval", "recall@10"),
    ("retrieval", "mrr@10"),
    ("answers", "answer_hit_rate"),
    ("answers", "abstained_on_answerable"),
    ("answers", "citation_exactness"),
    ("answers", "marker_consistency"),
]


def write_dataset(folder: Path) -> None:
    (folder / "qrels").mkdir(parents=True)
    with (folder / "corpus.jsonl").open("w") as out:
        for doc_id, title, text in DOCUMENTS:
            out.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (folder / "queries.jsonl").open("w") as out:
        for qid, text, answers, _ in QUESTIONS:
            out.write(
                json.dumps({"_id": qid, "text": text, "answers": answers, "is_impossible": False}) + "\n"
            )
        for qid, text in IMPOSSIBLE:
            out.write(json.dumps({"_id": qid, "text": text, "answers": [], "is_impossible": True}) + "\n")
    lines = ["query-id\tcorpus-id\tscore"] + [f"{qid}\t{doc}\t1" for qid, _, _, doc in QUESTIONS]
    (folder / "qrels" / "test.tsv").write_text("\n".join(lines) + "\n")


def test_eval_reports_every_figure_in_range(tmp_path: Path) -> None:
    dataset = tmp_path / "tiny"
    write_dataset(dataset)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "service.eval", str(dataset), "--json"]
    command += ["--store", str(tmp_path / "store"), "--off-corpus", "3"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])

    assert result["dataset"] == "tiny"
    assert result["sampled"] == {"answerable": 4, "unanswerable": 2, "off_corpus": 3}
    assert result["figures"]["errors"] == 0
    for group, name in FIGURES:
        value = result["figures"][group][name]
        assert value is not None and 0.0 <= value <= 1.0, (group, name, value)
    assert result["figures"]["answers"]["citation_exactness"] == 1.0
    # the mean length of the answers given to answerable questions, in words without their [n] markers
    records = json.loads((tmp_path / "var" / "eval" / "results" / "tiny-all-0.json").read_text())["questions"]
    given = [r["answer"] for r in records if r["kind"] == "answerable" and r.get("abstained") is False]
    assert given and any("[1]" in answer for answer in given)
    lengths = [len(re.sub(r"\[\d+\]", " ", answer).split()) for answer in given]
    assert result["figures"]["answers"]["mean_answer_words"] == round(sum(lengths) / len(lengths), 1)
    for part in ("unanswerable_from_corpus", "off_corpus_synthetic", "combined"):
        figures = result["figures"]["abstention"][part]
        assert figures["recall"] is not None and 0.0 <= figures["recall"] <= 1.0
        assert figures["precision"] is None or 0.0 <= figures["precision"] <= 1.0
    for route in ("search", "ask"):
        assert result["figures"]["latency_ms"][route]["p50"] > 0
    assert result["index_version"]
    assert "service.eval" in result["command"]
    written = tmp_path / "var" / "eval" / "results" / "tiny-all-0.json"
    # Each question's record carries the ask's confidence (the API's `confidence`): a number for
    # every answered question.
    answered = [q for q in json.loads(written.read_text())["questions"] if q.get("abstained") is False]
    assert answered, "the tiny dataset should have answered questions"
    for record in answered:
        assert isinstance(record["confidence"], float), record
    assert result["figures"]["confidences_reported"] >= len(answered)


def test_against_a_service_compares_at_equal_length(tmp_path: Path) -> None:
    """`--against URL`: the same answerable questions asked of another running service. Here that is
    the real service over the very store the evaluation serves, so both sides' figures must agree."""
    from service.processes import running_service

    dataset = tmp_path / "tiny"
    write_dataset(dataset)
    store = tmp_path / "store"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    command = [sys.executable, "-m", "service.eval", str(dataset), "--json", "--store", str(store)]
    first = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr[-2000:]
    assert json.loads(first.stdout.strip().splitlines()[-1])["figures"]["against"] is None
    with running_service(store, env=env) as other:
        done = subprocess.run(
            [*command, "--against", other.url],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    versus = result["figures"]["against"]
    assert result["against"] == other.url
    assert versus["questions"] == len(QUESTIONS)
    assert versus["this"] == versus["against"]
    ours = result["figures"]["answers"]
    assert versus["this"]["answer_hit_rate"] == ours["answer_hit_rate"]
    assert versus["equal_length_words"] == int(ours["mean_answer_words"])
    cut_hit = versus["answer_hit_at_equal_length"]
    assert cut_hit == versus["against_answer_hit_at_equal_length"] <= ours["answer_hit_rate"]
    assert "answer hit at equal length" in done.stdout


def test_answer_hit_ignores_markers_and_white_space_and_can_cut() -> None:
    from service.eval import Outcome, Question, against_figures, answer_hit

    question = Question("q", "Who rules a colony?", ["a single\nqueen", "the Queen Bee"], False, ["bees#0"])
    said = {"answer": "Bees live in colonies. [1] They are ruled by A  single queen. [2]", "abstained": False}
    assert answer_hit(question, said)
    assert not answer_hit(question, said, cut=8)  # "a single queen" are words 9 to 11
    assert answer_hit(question, said, cut=11)
    split = {"answer": "ruled by the Queen [1] Bee of the hive. [2]", "abstained": False}
    assert answer_hit(question, split), "a marker between two cited runs splits no answer"
    assert not answer_hit(question, {"answer": "a single queen", "abstained": True})

    short = {"answer": "A single queen rules. [1]", "abstained": False}
    long = {
        "answer": "Bees live in colonies of thousands. [1] A single queen rules them. [2]",
        "abstained": False,
    }
    figures = against_figures([Outcome(question, question.text, "answerable", ask=short, against=long)])
    assert figures["this"]["mean_answer_words"] == 4 and figures["against"]["mean_answer_words"] == 11
    assert figures["equal_length_words"] == 4
    assert (figures["answer_hit_at_equal_length"], figures["against_answer_hit_at_equal_length"]) == (
        1.0,
        0.0,
    )
    assert figures["this"]["answer_hit_rate"] == figures["against"]["answer_hit_rate"] == 1.0


def test_missing_dataset_exits_2_without_traceback(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "service.eval", str(tmp_path / "absent")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "no dataset folder" in done.stderr and "Traceback" not in done.stderr
