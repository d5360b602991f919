"""`ragqa-serve [--store DIR] [--host 127.0.0.1] [--port 8000]`: serve the HTTP API with uvicorn."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from indexer import logs
from service.config import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ragqa-serve", description="Serve ragqa's HTTP API and chat page.")
    parser.add_argument("--store", type=Path, help="store folder (default: $RAGQA_STORE or var/store)")
    parser.add_argument("--host", help="address to listen on (default: $RAGQA_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default: $RAGQA_PORT or 8000)")
    parser.add_argument("--log-level", default="INFO", help="log level (JSON lines on stderr)")
    args = parser.parse_args(argv)

    overrides = {k: v for k, v in {"store": args.store, "host": args.host, "port": args.port}.items() if v}
    settings = ServiceSettings(**overrides)
    logs.configure(args.log_level)

    import uvicorn

    from service.api import create_app

    base = f"http://{settings.host}:{settings.port}"
    print(
        f"ragqa: chat page {base}/  API docs {base}/docs  (store {settings.store})",
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
