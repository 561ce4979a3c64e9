"""The lexicon string-format checks: the C ones when they were built, else Python's.

Where it sits: `records.validate` takes `FORMATS` (lexicon format name ->
check) for both the generated validators and the explaining closures, and
`records.columns` its `record-key` check for every record's key. The
Python checks of `bsky_backfill.syntax` are the reference (`PYTHON`); the C
module (records/_formats.c) answers the same on every string and is only
faster: a scan where Python runs a regex. `NATIVE` says which is in use (the
benchmark prints it; tests compare both on the same inputs).
"""

from __future__ import annotations

import os
from collections.abc import Callable

from bsky_backfill import syntax
from bsky_backfill.repo.native import PURE_PYTHON_ENV

__all__ = ["FORMATS", "NATIVE", "PYTHON"]

PYTHON: dict[str, Callable[[str], bool]] = {
    "at-identifier": syntax.is_valid_at_identifier,
    "at-uri": syntax.is_valid_at_uri,
    "cid": syntax.is_valid_cid,
    "datetime": syntax.is_valid_datetime,
    "did": syntax.is_valid_did,
    "handle": syntax.is_valid_handle,
    "language": syntax.is_valid_language,
    "nsid": syntax.is_valid_nsid,
    "record-key": syntax.is_valid_record_key,
    "tid": syntax.is_valid_tid,
    "uri": syntax.is_valid_uri,
}
"""The reference checks, by lexicon format name."""

FORMATS: dict[str, Callable[[str], bool]]
"""The checks in use: C where built, else `PYTHON`."""

try:
    if os.environ.get(PURE_PYTHON_ENV):  # a whole run on the reference checks
        raise ImportError(PURE_PYTHON_ENV)
    from bsky_backfill.records import _formats  # type: ignore[attr-defined]
except ImportError:  # not built (no C compiler), or switched off: the regex checks
    FORMATS = dict(PYTHON)
    NATIVE = False
else:
    FORMATS = {name: getattr(_formats, check.__name__) for name, check in PYTHON.items()}
    NATIVE = True
