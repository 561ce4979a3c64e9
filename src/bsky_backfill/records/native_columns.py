"""The native record pass's buffers -> Arrow tables, and its plan per collection.

Where it sits: `records.columns.RecordColumns.add_native` calls the C pass
(records/native/pass.c `records_pass`) over a repo's wanted records and hands
its output here. The C pass returns plain buffers (int32 offsets, data, a
validity bitmap); each becomes an Arrow array with `Array.from_buffers`, with
no copy and no per-value Python. The records the pass declined go through the
Python path, which stays the reference (the twin test holds the two equal).
"""

from __future__ import annotations

from typing import Any

import pyarrow as pa

from bsky_backfill.records.schema import TIMESTAMP

__all__ = ["FAMILIES", "KEY_RULES", "NativeRows", "array_of"]

FAMILIES: dict[str, int] = {
    "app.bsky.feed.post": 1,
    "app.bsky.feed.like": 2,
    "app.bsky.feed.repost": 2,
    "app.bsky.graph.follow": 3,
    "app.bsky.graph.block": 3,
    "app.bsky.graph.listitem": 4,
    "app.bsky.feed.threadgate": 5,
    "app.bsky.feed.postgate": 5,
}
"""Collection -> its typed-column family in pass.c (`F_POST` ...): the same
fields as records/columns.py `_EXTRACTORS`, in the same order as schema.py."""

KEY_RULES: dict[str, int] = {"tid": 1, "nsid": 2}
"""A lexicon key type -> pass.c's rule (`K_TID`, `K_NSID`; `literal:` is 3, else 0,
the record-key syntax alone)."""

_STRING = pa.string()


def _buffer(data: bytes | None) -> pa.Buffer | None:
    return None if data is None else pa.py_buffer(data)


def array_of(spec: tuple[Any, ...], typ: pa.DataType) -> pa.Array:
    """One column as pass.c wrote it -> an Arrow array of type `typ`.

    Specs: ("s", rows, bitmap, offsets, data) strings; ("l", rows, bitmap,
    offsets, child spec) lists of strings; ("i"|"t", rows, bitmap, values)
    int32 or int64 microseconds. A bitmap of None: no nulls.
    """
    kind, rows, bitmap = spec[0], spec[1], _buffer(spec[2])
    if kind == "s":
        return pa.Array.from_buffers(
            _STRING, rows, [bitmap, pa.py_buffer(spec[3]), pa.py_buffer(spec[4])]
        )
    if kind == "l":
        child = array_of(spec[4], _STRING)
        return pa.Array.from_buffers(typ, rows, [bitmap, pa.py_buffer(spec[3])], children=[child])
    values = pa.py_buffer(spec[3])
    return pa.Array.from_buffers(pa.int32() if kind == "i" else TIMESTAMP, rows, [bitmap, values])


class NativeRows:
    """What one pass landed: per collection, its rows' common and typed columns."""

    __slots__ = ("common", "runs", "typed")

    def __init__(self, runs: list[tuple[int, int, int]], colls: list[Any], common: Any) -> None:
        self.runs = runs
        rows = common[0]
        self.common = (
            array_of(common[1], _STRING),
            array_of(common[2], _STRING),
            array_of(common[3], _STRING),
            array_of(common[4], TIMESTAMP),
            array_of(common[5], _STRING),
        )
        assert all(len(a) == rows for a in self.common)
        self.typed: list[tuple[str, int, tuple[Any, ...]]] = [
            (name, n, cols) for (name, n), cols in colls
        ]

    def spans(self, index: int) -> list[tuple[int, int]]:
        """The (start, stop) row ranges of collection `index` in the common columns."""
        return [(start, start + n) for i, start, n in self.runs if i == index]
