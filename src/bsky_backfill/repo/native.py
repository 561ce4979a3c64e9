"""The C loops of verification when they were built, else their Python twins.

Where it sits: `repo.verify.mismatched_blocks`, `repo.lazy._frame_index` and
`repo.mst.walk_verified` call these. Each C function (repo/_native.c) answers
exactly as the Python loop does, or None when a CAR is not of the common
shape, and the caller then runs the Python loop. `NATIVE` says which is in use
(the benchmark prints it; tests compare both paths on the same inputs).
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["NATIVE", "frame_index", "has_float", "mismatched", "off_layer"]

FrameIndex = Callable[[bytes], "tuple[bytes, dict[bytes, int]] | None"]
Mismatched = Callable[[bytes, "set[bytes] | None"], "set[bytes] | None"]
OffLayer = Callable[[list[bytes], int], int]
HasFloat = Callable[[object], bool]

frame_index: FrameIndex | None
mismatched: Mismatched | None
off_layer: OffLayer | None
has_float: HasFloat | None
"""Not verification's: the records' data-model check (records/datamodel.py), per record."""

try:
    from bsky_backfill.repo import _native  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler or OpenSSL headers): Python loops
    frame_index = mismatched = off_layer = has_float = None
    NATIVE = False
else:
    frame_index = _native.frame_index
    mismatched = _native.mismatched
    off_layer = _native.off_layer
    has_float = _native.has_float
    NATIVE = True
