"""The atproto data model's one rule the decoders do not keep: no floats.

Where it sits: records/columns.py asks `has_float` about every record it
would land (CAR path and list mode alike). DAG-CBOR and JSON can both carry a
float, and libipld and orjson both decode one, but the data model has none:
a record holding one is invalid (`validate`, `InvalidRecord`), not landed.

The walk runs once per record, so it is one of the per-record loops written in
C (repo/_native.c `has_float`); `py_has_float` is its Python twin, used where
the extension is not built, and tests hold the two equal.
"""

from __future__ import annotations

from bsky_backfill.repo import native

MAX_DEPTH = 256
"""Levels the walk descends (orjson refuses records deeper than 255 anyway)."""


def py_has_float(value: object, depth: int = 0) -> bool:
    """Whether `value` holds a float anywhere in its maps and lists."""
    cls = value.__class__
    if cls is float:
        return True
    if depth >= MAX_DEPTH:
        return False
    if cls is dict:
        return any(py_has_float(v, depth + 1) for v in value.values())  # type: ignore[attr-defined]
    if cls is list:
        return any(py_has_float(v, depth + 1) for v in value)  # type: ignore[attr-defined]
    return False


def has_float(value: object) -> bool:
    """`py_has_float`, in C when the extension is built."""
    fast = native.has_float
    return fast(value) if fast is not None else py_has_float(value)


__all__ = ["MAX_DEPTH", "has_float", "py_has_float"]
