"""Passage encoding for indexing: PyTorch against ONNX Runtime fp32 and dynamic int8 (issue 13).

    python -m bench.passage_encoders [--corpus PATH] [--sizes 250 2500] [--batch 32] [--results DIR]

Takes the first N texts of the corpus (by default ../shared/data/corpus/wiki-leads-10k.jsonl, title
and text as the indexer embeds a lead), for each size in --sizes, and encodes them with:

- PyTorch: the indexer's own call, `Embedder.encode` (sentence-transformers `encode`, batch --batch,
  normalised);
- ONNX Runtime fp32: the service's export (indexer.onnx_encoder, fused), the texts sorted by length
  and cut into batches of --batch as sentence-transformers does, every core;
- ONNX Runtime int8: the same graph quantised by `onnxruntime.quantization.quantize_dynamic`
  (QInt8 weights, activations quantised at run time).

It prints texts/s, each one's ratio to PyTorch, and the cosine of its vectors with PyTorch's (min and
mean). Issue 13's rule: the indexer's default is the fastest encoder whose vectors stay within cosine
0.999 of PyTorch's. Results go to bench/results/passage_encoders.{json,md} (or --results DIR).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from bench.harness import (
    add_corpus_option,
    add_results_option,
    code_state,
    command_line,
    machine,
    machine_summary,
    now,
    offline,
    publish,
    read_corpus,
    require_data,
    shared_data,
)

MIN_COSINE = 0.999  # issue 13: an indexing encoder's vectors within this of PyTorch's


def onnx_batches(session: Any, embedder: Any, texts: list[str], batch: int) -> np.ndarray:
    """`texts` encoded by an ONNX session of the export, longest first in batches of `batch` (as
    sentence-transformers orders them), normalised, back in the texts' order."""
    from indexer.onnx_encoder import _features, _pooled

    order = np.argsort([-len(t) for t in texts], kind="stable")
    out = np.empty((len(texts), embedder.info.dimension), np.float32)
    for start in range(0, len(texts), batch):
        rows = order[start : start + batch]
        out[rows] = _pooled(session, _features(embedder, [texts[i] for i in rows]))
    return out


def timed(encode: Callable[[list[str]], np.ndarray], texts: list[str]) -> tuple[float, np.ndarray]:
    encode(texts[:8])  # first call's setup out of the timing
    started = time.perf_counter()
    vectors = encode(texts)
    return time.perf_counter() - started, vectors


def run(args: argparse.Namespace) -> dict[str, Any]:
    import onnxruntime
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from indexer.config import IndexSettings
    from indexer.embedding import load_embedder
    from indexer.onnx_encoder import load_onnx_encoder

    offline()
    settings = IndexSettings()
    embedder = load_embedder(settings.model, args.batch)
    fp32 = load_onnx_encoder(embedder)
    int8_path = Path(tempfile.mkdtemp(prefix="ragqa-int8-")) / "int8.onnx"
    import onnx

    quantize_dynamic(
        str(fp32.path),
        str(int8_path),
        weight_type=QuantType.QInt8,
        # the fused operators' outputs have no inferred type: they are float tensors
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    options = fp32.session.get_session_options()  # the service's: every core, spinning stops after a run
    int8 = onnxruntime.InferenceSession(str(int8_path), options, providers=["CPUExecutionProvider"])
    docs = read_corpus(args.corpus, max(args.sizes))
    encoders: dict[str, Callable[[list[str]], np.ndarray]] = {
        "PyTorch (sentence-transformers encode)": embedder.encode,
        "ONNX Runtime fp32 (fused export)": lambda t: onnx_batches(fp32.session, embedder, t, args.batch),
        "ONNX Runtime int8 (quantize_dynamic)": lambda t: onnx_batches(int8, embedder, t, args.batch),
    }
    rows = []
    for size in args.sizes:
        texts = [f"{d.title}\n{d.text}" for d in docs[:size]]
        reference: np.ndarray | None = None
        base = 0.0
        for name, encode in encoders.items():
            seconds, vectors = timed(encode, texts)
            rate = len(texts) / seconds
            if reference is None:
                reference, base = vectors, rate
            cosines = (vectors * reference).sum(axis=1)
            rows.append(
                {
                    "texts": len(texts),
                    "encoder": name,
                    "seconds": round(seconds, 2),
                    "texts_per_s": round(rate, 1),
                    "ratio_to_pytorch": round(rate / base, 2),
                    "cosine_min": round(float(cosines.min()), 5),
                    "cosine_mean": round(float(cosines.mean()), 5),
                }
            )
            print(rows[-1], flush=True)
    return {
        "when": now(),
        "command": command_line("bench.passage_encoders", args.argv),
        "environment": {**machine(), "code": code_state("indexer", "bench")},
        "corpus": str(args.corpus),
        "batch": args.batch,
        "rows": rows,
    }


def report(result: dict[str, Any]) -> str:
    environment = result["environment"]
    lines = [
        f"Passage encoding, batches of {result['batch']}, texts from {Path(result['corpus']).name} "
        f"(title and text), {machine_summary(environment)}; code {environment['code']['commit']}",
        "",
        "| texts | encoder | seconds | texts/s | ratio to PyTorch | cosine with PyTorch min / mean | "
        f"within {MIN_COSINE} |",
        "|---:|---|---:|---:|---:|---|---|",
    ]
    for row in result["rows"]:
        within = "yes" if row["cosine_min"] >= MIN_COSINE else "no"
        lines.append(
            f"| {row['texts']:,} | {row['encoder']} | {row['seconds']} | {row['texts_per_s']} | "
            f"{row['ratio_to_pytorch']} | {row['cosine_min']} / {row['cosine_mean']} | {within} |"
        )
    lines += ["", f"`{result['command']}`"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_corpus_option(parser, shared_data("corpus/wiki-leads-10k.jsonl"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 2500], help="texts per run (N and 10N)")
    parser.add_argument("--batch", type=int, default=32, help="texts per model call (the indexer's default)")
    add_results_option(parser)
    args = parser.parse_args(argv)
    require_data(parser, args.corpus, "--corpus")
    args.argv = argv
    result = run(args)
    publish("passage_encoders", result, report(result), args.results)


if __name__ == "__main__":
    main()
