"""The optional reader (RAGQA_READER = a local folder): an extractive question-answering model
(transformers' AutoModelForQuestionAnswering, e.g. a SQuAD 2.0 fine-tune) that points at the answer
span inside the top passages. The sentence holding that span becomes the answer's best sentence
(service.answering); abstention still follows the sentence scores, and every citation is still an
exact span of a source. No model of this kind ships with ragqa or is fetched: the user names a folder.

It costs a model pass over the passages per question (about what encoding them would), so it is off
by default: docs/answering.md has the trade-off.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

MAX_ANSWER_TOKENS = 30  # the longest span the reader may point at
MAX_LENGTH = 384  # tokens of question + passage given to the model at once


@dataclass(frozen=True)
class Span:
    passage: int  # which of the passages given to `read`
    start: int  # character offsets in that passage's text
    end: int
    score: float  # start logit + end logit


class Reader:
    def __init__(self, folder: str) -> None:
        from transformers import AutoModelForQuestionAnswering, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if not self.tokenizer.is_fast:
            raise ValueError(f"the reader at {folder} needs a fast tokenizer (tokenizer.json): offsets")
        self.model: Any = AutoModelForQuestionAnswering.from_pretrained(folder, local_files_only=True)
        self.model.eval()

    def read(self, question: str, passages: list[str]) -> Span | None:
        """The best answer span over all the passages (each cut to the model's window), or None."""
        import torch

        if not passages:
            return None
        encoded = self.tokenizer(
            [question] * len(passages),
            passages,
            truncation="only_second",
            max_length=MAX_LENGTH,
            padding=True,
            return_offsets_mapping=True,
            return_tensors="pt",
        )
        offsets = encoded.pop("offset_mapping").numpy()
        with torch.inference_mode():
            output = self.model(**encoded)
        starts, ends = output.start_logits.float().numpy(), output.end_logits.float().numpy()
        best: Span | None = None
        for i in range(len(passages)):
            in_passage = np.array([s == 1 for s in encoded.sequence_ids(i)])
            span = best_span(starts[i], ends[i], in_passage)
            if span is None:
                continue
            first, last, score = span
            if best is None or score > best.score:
                best = Span(i, int(offsets[i][first][0]), int(offsets[i][last][1]), score)
        return best


def best_span(starts: np.ndarray, ends: np.ndarray, allowed: np.ndarray) -> tuple[int, int, float] | None:
    """The token span (first, last) of the passage's tokens (`allowed`) with the best start + end
    logit, last ≥ first and at most MAX_ANSWER_TOKENS long."""
    if not allowed.any():
        return None
    start = np.where(allowed, starts, -np.inf)
    end = np.where(allowed, ends, -np.inf)
    scores = start[:, None] + end[None, :]
    n = len(start)
    first, last = np.indices((n, n))
    scores[(last < first) | (last - first >= MAX_ANSWER_TOKENS)] = -np.inf
    flat = int(np.argmax(scores))
    i, j = divmod(flat, n)
    return (i, j, float(scores[i, j])) if np.isfinite(scores[i, j]) else None
