"""The C loops of verification when they were built, else their Python twins.

Where it sits: `repo.verify.mismatched_blocks`, `repo.lazy._frame_index`,
`repo.mst.walk_verified` and `repo.mst.verified_leaves` call these. Each C
function (repo/_native.c) answers exactly as the Python loop does, or None
when an input is not of the common shape, and the caller then runs the
Python loop. `NATIVE` says which is in use
(the benchmark prints it; tests compare both paths on the same inputs).
"""

from __future__ import annotations

import os
from collections.abc import Callable

__all__ = [
    "NATIVE",
    "PURE_PYTHON_ENV",
    "frame_index",
    "has_float",
    "mismatched",
    "off_layer",
    "walk_leaves",
]

FrameIndex = Callable[[bytes], "tuple[bytes, dict[bytes, int]] | None"]
Mismatched = Callable[[bytes, "set[bytes] | None"], "set[bytes] | None"]
OffLayer = Callable[[list[bytes], int], int]
HasFloat = Callable[[object], bool]
WalkLeaves = Callable[..., "tuple[list[str], list[bytes], int] | str | None"]

frame_index: FrameIndex | None
mismatched: Mismatched | None
off_layer: OffLayer | None
has_float: HasFloat | None
"""Not verification's: the records' data-model check (records/datamodel.py), per record."""
walk_leaves: WalkLeaves | None
"""The verified MST walk of a whole tree with its leaves sorted into wanted or not
(repo/mst.py `verified_leaves`)."""

PURE_PYTHON_ENV = "BSKY_BACKFILL_PURE_PYTHON"
"""Set (non-empty) in the environment: run the Python twins even where the C
extension is built (a whole run on the reference path, e.g. to rule the C code
out when something looks wrong). Helper processes inherit it."""

try:
    if os.environ.get(PURE_PYTHON_ENV):
        raise ImportError(PURE_PYTHON_ENV)
    from bsky_backfill.repo import _native  # type: ignore[attr-defined]
except ImportError:  # not built (no compiler or OpenSSL headers), or switched off
    frame_index = mismatched = off_layer = has_float = walk_leaves = None
    NATIVE = False
else:
    frame_index = _native.frame_index
    mismatched = _native.mismatched
    off_layer = _native.off_layer
    has_float = _native.has_float
    walk_leaves = _native.walk_leaves
    NATIVE = True
