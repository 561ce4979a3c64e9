"""The native record path when it was built, else None for each of its parts.

Where it sits: records/columns.py (the whole pass over a repo's wanted
records, `records_pass`) and the twin tests import from here. Each C part
(records/native/*.c) answers exactly as its Python twin or declines a record,
which then takes the Python path (libipld, orjson, the generated validators);
`NATIVE` says whether the extension is in use (the benchmark prints it).
`BSKY_BACKFILL_PURE_PYTHON=1` switches it off with the other C loops.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from bsky_backfill.repo.native import PURE_PYTHON_ENV

__all__ = ["NATIVE", "cbor_check", "cbor_json", "lex_check", "lex_compile", "records_pass"]

cbor_check: Callable[[bytes], bool] | None
"""Whether a block is of the DAG-CBOR subset the native path reads (cbor.h)."""
cbor_json: Callable[[bytes], bytes | None] | None
"""A record block -> its atproto JSON (json.c), None where declined."""
lex_compile: Callable[[Any], Any] | None
"""A lexicon description (records/validate_native.py) -> a compiled schema."""
lex_check: Callable[[Any, bytes], bool] | None
"""A compiled schema and a record block -> valid (True) or not decided here (False)."""
records_pass: Callable[..., Any] | None
"""A repo's wanted records -> column buffers (pass.c)."""

try:
    if os.environ.get(PURE_PYTHON_ENV):
        raise ImportError(PURE_PYTHON_ENV)
    from bsky_backfill.records import _native  # type: ignore[attr-defined]
except ImportError:  # not built (no C compiler), or switched off
    _native = None
NATIVE = _native is not None
cbor_check = getattr(_native, "cbor_check", None)
cbor_json = getattr(_native, "cbor_json", None)
lex_compile = getattr(_native, "lex_compile", None)
lex_check = getattr(_native, "lex_check", None)
records_pass = getattr(_native, "records_pass", None)
