"""`ragqa-index [PATH ...] [--store DIR] [--json]`: index files and folders into a versioned store."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import ValidationError

from indexer import logs
from indexer.config import IndexSettings, settings_error
from indexer.distributed import RayUnavailableError
from indexer.documents import PathNotFoundError
from indexer.embedding import ModelLoadError
from indexer.pipeline import IndexReport, NothingToIndexError, run_index
from indexer.store import ModelMismatchError, StoreBusyError, StoreError

EXIT_OK, EXIT_NOTHING, EXIT_BUSY = 0, 2, 3

EPILOG = """\
examples:
  ragqa-index                          index corpus/ into var/store (or $RAGQA_STORE)
  ragqa-index docs/ notes.md --json    several paths; print a JSON report as the last line
  ragqa-index data.jsonl --store /tmp/s   one document a line: {"_id", "title", "text", "metadata"?}
  ragqa-index --rebuild docs/          start afresh (e.g. after changing RAGQA_MODEL)
  ragqa-index docs/ --store milvus://milvus.internal:19530/ragqa --ray ray://head:10001
                                       a Milvus store, the work fanned out on a Ray cluster

Supported: .txt .md .html .htm .pdf .docx .jsonl; hidden files and folders are skipped.
Exit codes: 0 indexed (skipped files are listed), 2 nothing indexable, a missing path or a store
built with another model, 3 another indexer holds the store's lock.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ragqa-index",
        description="Index documents into a ragqa store (incremental: unchanged chunks are not re-embedded).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("paths", nargs="*", type=Path, default=[Path("corpus")], help="files or folders")
    parser.add_argument(
        "--store", help="store folder or Milvus store (default: $RAGQA_STORE or var/store; docs/scale-out.md)"
    )
    parser.add_argument("--model", help="embedding model name or folder (default: $RAGQA_MODEL or bundled)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON on the last line")
    parser.add_argument("--rebuild", action="store_true", help="ignore the previous version; embed afresh")
    parser.add_argument("--wait", type=float, help="seconds to wait for another indexer (default 30)")
    parser.add_argument(
        "--ray",
        nargs="?",
        const="local",
        metavar="ADDRESS",
        help="load, chunk and embed on Ray: a cluster's address, or none for a local Ray of this machine"
        " (needs the extra ragqa[ray])",
    )
    parser.add_argument("--log-level", default="WARNING", help="stderr log level (JSON lines)")
    args = parser.parse_args(argv)

    logs.configure(args.log_level)
    overrides = {
        key: value
        for key, value in {"store": args.store, "model": args.model, "lock_wait": args.wait}.items()
        if value is not None
    }
    try:
        settings = IndexSettings(**overrides)
    except ValidationError as exc:
        print(f"ragqa-index: {settings_error(exc)}", file=sys.stderr)
        return EXIT_NOTHING
    try:
        report = run_index(list(args.paths), settings, rebuild=args.rebuild, ray_address=args.ray)
    except (
        PathNotFoundError,
        NothingToIndexError,
        ModelMismatchError,
        ModelLoadError,
        RayUnavailableError,
    ) as exc:
        print(f"ragqa-index: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    except StoreBusyError as exc:
        print(f"ragqa-index: {exc}", file=sys.stderr)
        return EXIT_BUSY
    except StoreError as exc:
        print(f"ragqa-index: {exc}", file=sys.stderr)
        return EXIT_NOTHING
    if args.json:
        print(json.dumps(report.as_dict(), ensure_ascii=False))
    else:
        print(_summary(report, settings.store))
    return EXIT_OK


def _summary(report: IndexReport, store: str) -> str:
    verb = "published" if report.published else "unchanged:"
    lines = [
        f"{verb} version {report.version} in {store}: {report.documents} documents, {report.chunks} chunks "
        f"({report.embedded} embedded, {report.reused} reused), {report.removed} documents removed, "
        f"{report.seconds:.1f}s"
    ]
    if report.exported:
        lines.append(f"Milvus: version {report.version} is live")
    if report.skipped:
        lines.append(f"skipped {len(report.skipped)}:")
        lines += [f"  {s['path']}: {s['reason']}" for s in report.skipped]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
