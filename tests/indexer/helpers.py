"""Small builders for indexer tests: corpora written to disk, the CLI run as a real subprocess."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

WORDS = (
    "alliance border capital ceasefire charter coalition council delegation diplomacy election envoy "
    "frontier government harbour minister mission negotiation parliament partnership pipeline province "
    "referendum region republic sanctions security summit territory treaty valley visit"
).split()


def sentence(rng: random.Random, words: int = 14) -> str:
    body = " ".join(rng.choice(WORDS) for _ in range(words))
    return body[0].upper() + body[1:] + "."


def paragraph(rng: random.Random, sentences: int = 6) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def write_corpus(folder: Path, documents: int, paragraphs: int = 3, seed: int = 0) -> Path:
    """Markdown documents with a heading each: enough text for several chunks per document."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for n in range(documents):
        body = "\n\n".join(paragraph(rng) for _ in range(paragraphs))
        (folder / f"doc-{n:04d}.md").write_text(f"# Document {n}\n\n{body}\n", encoding="utf-8")
    return folder


REPO = Path(__file__).resolve().parents[2]


def run_cli(
    *args: str | Path, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    """`ragqa-index ARGS` in a fresh interpreter, from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "indexer.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=REPO,
    )


def last_json(stdout: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(stdout.strip().splitlines()[-1])
    return result
