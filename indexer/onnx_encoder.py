"""The question encoder on ONNX Runtime: the configured sentence-transformers model's own modules
(transformer, pooling, and any dense layers it has) exported to ONNX from the loaded weights, no
download, and run by ONNX Runtime. For one short question the framework's per-call overhead is most
of PyTorch's time, and ONNX Runtime removes most of it (../shared/notes/encoder-speed.md); for long
batches of passages the arithmetic dominates and the indexer keeps PyTorch.

The export is cached under a key of the weights, the export code's version and the library versions
(`export_key`): new weights give a new file. Every load checks the export against the PyTorch
encoder on CHECK_TEXTS and refuses it (OnnxMismatchError) when a vector's cosine with PyTorch's is
below MIN_COSINE, so a store's passages (PyTorch) and the questions (ONNX) come from the same
vectors. onnxruntime and onnx are imported only here."""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from indexer.embedding import Embedder

log = logging.getLogger("ragqa.indexer")

EXPORT_VERSION = "2"  # of the export below: a change to it gives new files
OPSET = 17
INPUTS = ("input_ids", "attention_mask", "token_type_ids")
MIN_COSINE = 0.9999
FUSED_MIN_COSINE = 0.99999
CHECK_TEXTS = (
    "Why did Armenia freeze CSTO membership?",
    "who wrote the declaration of independence",
    "A longer text, of the kind a question rarely is: it names a treaty, a summit in Vilnius, the "
    "partnership's goals and the ministers who met in Baku and Tbilisi during the visit in March 2024.",
    "ü é 日本語 emoji 🙂",
    "x",
)


class OnnxMismatchError(Exception):
    """The ONNX export does not give the PyTorch encoder's vectors."""


def default_cache() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root) / "ragqa" / "onnx"


def export_key(embedder: Embedder, weights: str | None = None) -> str:
    """A key of the model's weights (Embedder.weights_digest, or `weights` when the caller has it), its
    modules, this export's version and the versions of torch, onnx, onnxruntime, sentence-transformers
    and transformers: it changes when any of them does."""
    digest = hashlib.sha256()
    for library in ("torch", "onnx", "onnxruntime", "sentence-transformers", "transformers"):
        digest.update(f"{library}={importlib.metadata.version(library)};".encode())
    digest.update(f"export={EXPORT_VERSION};opset={OPSET};modules={list(embedder.model)!r};".encode())
    digest.update((weights or embedder.weights_digest()).encode())
    return digest.hexdigest()[:32]


def export(embedder: Embedder, path: Path) -> None:
    """Export the model's modules (input ids, attention mask and token type ids to the pooled, not yet
    normalised embedding) to `path`, written under a temporary name and renamed.

    The transformer is traced with its eager attention (the plain softmax(QK^T)V graph, whose pattern
    ONNX Runtime's transformer optimizer fuses), then the optimizer fuses attention, layer norms and
    GELUs into ONNX Runtime's own operators (`fuse`): for all-MiniLM-L6-v2, 689 nodes become 59 and a
    question takes 1.48 ms instead of 1.83 (2 cores). The fused graph is kept only when it gives the
    traced graph's vectors."""
    import torch

    class Modules(torch.nn.Module):  # keyword inputs: transformers 5 reordered BertModel.forward
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            features = {
                "input_ids": input_ids,
                "attention_mask": attention_mask,
                "token_type_ids": token_type_ids,
            }
            return self.model(features)["sentence_embedding"]

    features = _features(embedder, list(CHECK_TEXTS[:2]))
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx", dir=path.parent)
    os.close(handle)
    try:
        with warnings.catch_warnings(), _eager_attention(embedder):
            # the tracer's warnings (Python conditions traced as constants, index ops): the check
            # after every load is what says whether the export gives the model's vectors
            warnings.simplefilter("ignore")
            torch.onnx.export(
                Modules(embedder.model).eval(),
                tuple(torch.from_numpy(features[name]) for name in INPUTS),
                temporary,
                input_names=list(INPUTS),
                output_names=["embedding"],
                dynamic_axes={
                    **{name: {0: "batch", 1: "tokens"} for name in INPUTS},
                    "embedding": {0: "batch"},
                },
                opset_version=OPSET,
                dynamo=False,
            )
        fuse(embedder, Path(temporary))
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextmanager
def _eager_attention(embedder: Embedder) -> Iterator[None]:
    """The transformer's attention set to "eager" for the trace, and set back after: the model object
    is the one the process encodes with. A model that has no such switch is traced as it is."""
    transformer = getattr(embedder.model[0], "auto_model", None)
    config = getattr(transformer, "config", None)
    before = getattr(config, "_attn_implementation", None)
    switch = getattr(transformer, "set_attn_implementation", None)
    if switch is None or before is None or before == "eager":
        yield
        return
    try:
        switch("eager")
    except (ValueError, ImportError) as exc:  # a model without eager attention: as it is
        log.info("onnx.eager_attention_unavailable", extra={"error": str(exc)})
        yield
        return
    try:
        yield
    finally:
        switch(before)


def fuse(embedder: Embedder, path: Path) -> None:
    """Rewrite the exported graph at `path` with ONNX Runtime's transformer optimizer (attention,
    embedding and skip layer norms, bias GELU fused into its own operators), when the fused graph's
    vectors equal the traced one's (cosine ≥ FUSED_MIN_COSINE on CHECK_TEXTS). The optimizer knows
    BERT-like encoders; for another architecture it finds nothing to fuse, or something that fails
    the comparison, and the traced graph stays."""
    import onnxruntime
    from onnxruntime.transformers.optimizer import optimize_model

    texts = _features(embedder, list(CHECK_TEXTS))
    traced = _pooled(onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"]), texts)
    fused_path = path.with_name(path.name + ".fused")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            config = getattr(getattr(embedder.model[0], "auto_model", None), "config", None)
            optimize_model(
                str(path),
                model_type="bert",
                num_heads=int(getattr(config, "num_attention_heads", 0) or 0),  # 0: found in the graph
                hidden_size=int(getattr(config, "hidden_size", 0) or 0),
            ).save_model_to_file(str(fused_path))
        fused = _pooled(
            onnxruntime.InferenceSession(str(fused_path), providers=["CPUExecutionProvider"]), texts
        )
    except Exception as exc:  # the optimizer's failure costs the fusion only
        log.info("onnx.not_fused", extra={"error": f"{type(exc).__name__}: {exc}"})
        fused_path.unlink(missing_ok=True)
        return
    cosine = float((fused * traced).sum(axis=1).min())
    if cosine >= FUSED_MIN_COSINE:
        os.replace(fused_path, path)
    else:
        log.info("onnx.not_fused", extra={"error": f"the fused graph's vectors differ (cosine {cosine:.6f})"})
        fused_path.unlink()


def _pooled(session: Any, features: dict[str, np.ndarray]) -> np.ndarray:
    """A session's normalised vectors of `features`."""
    (pooled,) = session.run(None, features)
    pooled = np.asarray(pooled, np.float32)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _features(embedder: Embedder, texts: list[str]) -> dict[str, np.ndarray]:
    """The model's tokenizer's inputs for `texts`, as int64 arrays (token type ids zero when the
    tokenizer gives none)."""
    model = embedder.model
    encoded = model.tokenizer(
        texts, padding=True, truncation=True, max_length=model.max_seq_length, return_tensors="np"
    )
    ids = np.asarray(encoded["input_ids"], np.int64)
    return {
        "input_ids": ids,
        "attention_mask": np.asarray(encoded["attention_mask"], np.int64),
        "token_type_ids": np.asarray(encoded.get("token_type_ids", np.zeros_like(ids)), np.int64),
    }


class OnnxEncoder:
    """`encode_short` of the Embedder it was exported from, on ONNX Runtime (normalised float32 rows).

    One session, `threads` intra-op threads (default: every core). Measured on 2 cores (an Intel Xeon,
    the fused export, 300 questions; the issue-13 note): 1 thread 2.43 ms a question alone and 2.71 ms
    a question in batches of 16; 2 threads 1.47 and 1.41 ms."""

    def __init__(self, embedder: Embedder, path: Path, threads: int | None = None) -> None:
        import onnxruntime

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or (os.cpu_count() or 1)
        options.inter_op_num_threads = 1
        # The pool's threads spin while a run lasts (fast hand-offs between operators) but stop when
        # it returns: spinning on between questions cost 5.7 ms of CPU a question instead of 3.5, CPU
        # the event loop needs, for the same latency (1.76 and 1.79 ms).
        options.add_session_config_entry("session.force_spinning_stop", "1")
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.embedder = embedder
        self.tokenizer = embedder.tokenizer
        self.info = embedder.info
        self.path = path

    def encode_short(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.info.dimension), dtype=np.float32)
        return _pooled(self.session, _features(self.embedder, list(texts)))


def load_onnx_encoder(
    embedder: Embedder, cache: Path | None = None, threads: int | None = None, weights: str | None = None
) -> OnnxEncoder:
    """The ONNX encoder of `embedder`'s model: exported into `cache` (default_cache()) on first use, then
    reused; checked against `embedder` on CHECK_TEXTS (OnnxMismatchError below MIN_COSINE). `weights`:
    the model's weights_digest, when the caller has computed it already."""
    from filelock import FileLock

    folder = cache or default_cache()
    path = folder / f"{export_key(embedder, weights)}.onnx"
    folder.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if not path.is_file():
            started = time.perf_counter()
            export(embedder, path)
            log.info(
                "onnx.exported", extra={"path": str(path), "seconds": round(time.perf_counter() - started, 2)}
            )
    encoder = OnnxEncoder(embedder, path, threads)
    expected = embedder.encode(list(CHECK_TEXTS))
    cosines = (encoder.encode_short(list(CHECK_TEXTS)) * expected).sum(axis=1)
    if float(cosines.min()) < MIN_COSINE:
        raise OnnxMismatchError(
            f"the ONNX export {path} gives other vectors than the PyTorch model (cosine "
            f"{float(cosines.min()):.6f} < {MIN_COSINE}): not used"
        )
    return encoder
