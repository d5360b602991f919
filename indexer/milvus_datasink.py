"""A Ray Data datasink into a Milvus collection: `ragqa-index --ray` with a Milvus server writes a
version's rows from the cluster's workers rather than through the driver (Ray Data 2.60 has no Milvus
datasink). Imported only by a run on Ray (indexer.distributed), as it imports Ray.

A row travels as its vector fields (float32 arrays: Arrow tensors, no text encoding) and the rest of
its fields as one JSON text, since its JSON fields (a document's metadata, a chunk's facets) hold
values of any type, which Arrow cannot put in one column."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
from ray.data import Datasink
from ray.data.block import Block, BlockAccessor
from ray.data.datasource.datasink import WriteResult

from indexer import milvus_store as ms
from indexer import store as st

VECTOR_FIELDS = ("vector", "pad")


def packed(row: dict[str, Any]) -> dict[str, Any]:
    """A row as a Ray Data item: its vector fields as float32 arrays, the others as one JSON text."""
    item: dict[str, Any] = {
        "fields": json.dumps({k: v for k, v in row.items() if k not in VECTOR_FIELDS}, ensure_ascii=False)
    }
    for name in VECTOR_FIELDS:
        if name in row:
            item[name] = np.asarray(row[name], np.float32)
    return item


def unpacked(item: dict[str, Any]) -> dict[str, Any]:
    """The row `packed` made `item` from."""
    row: dict[str, Any] = json.loads(item["fields"])
    for name in VECTOR_FIELDS:
        if name in item:
            row[name] = np.asarray(item[name], np.float32).tolist()
    return row


class MilvusDatasink(Datasink[int]):
    """Inserts every row of a dataset of `packed` rows into one collection; each write task uses a
    client of its own. Returns (on the driver, `rows_written`) how many rows the tasks inserted."""

    def __init__(self, location: ms.MilvusLocation, collection: str) -> None:
        self.location = location
        self.collection = collection
        self.rows_written = 0

    def write(self, blocks: Iterable[Block], ctx: Any) -> int:
        client = self.location.guarded_client(ms.INDEX_TIMEOUT)
        written = 0

        def rows() -> Iterator[dict[str, Any]]:
            nonlocal written
            for block in blocks:
                items: Iterable[Any] = BlockAccessor.for_block(block).iter_rows(public_row_format=True)
                for item in items:
                    written += 1
                    yield unpacked(dict(item))

        try:
            ms.insert_rows(client, self.collection, rows())
        finally:
            client.close()
        return written

    def on_write_complete(self, write_result: WriteResult[int]) -> None:
        self.rows_written = sum(write_result.write_returns)


def write(location: ms.MilvusLocation, collection: str, rows: Iterable[dict[str, Any]], blocks: int) -> int:
    """Insert the rows into the collection by Ray write tasks (`blocks` of them at most); how many."""
    import ray.data

    items = [packed(row) for row in rows]
    if not items:
        return 0
    sink = MilvusDatasink(location, collection)
    ray.data.from_items(items, override_num_blocks=max(1, min(blocks, len(items)))).write_datasink(sink)
    if sink.rows_written != len(items):
        raise st.StoreError(f"the datasink wrote {sink.rows_written} of {len(items)} rows into {collection}")
    return len(items)
