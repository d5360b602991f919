"""`ragqa-serve [--store DIR] [--host 127.0.0.1] [--port 8000]`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import os
import sys

from pydantic import ValidationError

from indexer import logs
from indexer.config import settings_error
from service.config import ServiceSettings

JEMALLOC = (
    "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2",
    "/usr/lib/aarch64-linux-gnu/libjemalloc.so.2",
    "/usr/local/lib/libjemalloc.so.2",
    "/usr/lib/libjemalloc.so.2",
)


def serve_with_jemalloc(argv: list[str]) -> None:
    """Restart this process with jemalloc preloaded when the machine has it (Debian: libjemalloc2)
    and RAGQA_JEMALLOC is not 0. Under glibc's malloc the server's memory creeps up with the varied
    shapes of the model's work; with jemalloc it stays flat (bench/load.py, README)."""
    if os.environ.get("RAGQA_JEMALLOC", "1") == "0" or "jemalloc" in os.environ.get("LD_PRELOAD", ""):
        return
    library = next((path for path in JEMALLOC if os.path.exists(path)), None)
    if library is None:
        return
    preload = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD", "")]))
    os.execve(
        sys.executable, [sys.executable, "-m", "service.cli", *argv], {**os.environ, "LD_PRELOAD": preload}
    )


# How long (in spins) the model's idle OpenMP threads busy-wait for more work before they sleep; set
# before torch loads libgomp, which reads it once. libgomp's default (300,000) keeps a thread spinning
# after every question's encoding, on one of two cores, while the same request's retrieval runs: at 1M
# chunks /v1/search p50 fell from 25.3 to 21.3 ms with 20,000 (retrieval 13.0 to 9.2 ms, encoding no
# slower; 5,000 and 100,000 gave 22.5 and 22.7 ms), bench.scale's store, same run. A value the user
# sets is kept.
GOMP_SPINCOUNT = "20000"


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("GOMP_SPINCOUNT", GOMP_SPINCOUNT)
    serve_with_jemalloc(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="ragqa-serve", description="Serve ragqa's HTTP API and chat page.")
    parser.add_argument(
        "--store", help="store folder or Milvus store (default: $RAGQA_STORE or var/store; docs/scale-out.md)"
    )
    parser.add_argument("--host", help="address to listen on (default: $RAGQA_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $RAGQA_PORT or 8000)")
    parser.add_argument("--log-level", default="INFO", help="log level (JSON lines on stderr)")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in {"store": args.store, "host": args.host, "port": args.port}.items() if v}
    try:
        settings = ServiceSettings(**overrides)
    except ValidationError as exc:
        print(f"ragqa-serve: {settings_error(exc)}", file=sys.stderr)
        return 2
    logs.configure(args.log_level)

    import uvicorn

    from service.app import create_app

    base = f"http://{settings.host}:{settings.port}"
    print(
        f"ragqa: chat page {base}/  API docs {base}/docs  (store {settings.store}; "
        f"malloc: {'jemalloc' if 'jemalloc' in os.environ.get('LD_PRELOAD', '') else 'the C library'})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
