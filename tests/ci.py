"""One rule for "am I in CI", and what a missing service or tool means there.

CI sets `CI` (to `true` in `.ci/run`; other CI systems use `1` or `yes`). In CI
a missing PostgreSQL, Chromium or C extension fails the test that needs it: a
skip would let a broken install pass. On a developer's machine it skips, with
the same message saying what to install.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_in_ci(message: str) -> NoReturn:
    """Something a test needs is missing: fail in CI, skip elsewhere."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


def assert_sanitized_build_loaded(module_name: str) -> None:
    """Under `make sanitize` (BSKY_BACKFILL_NATIVE_FROM set) the C extension
    `module_name` in use is the ASan/UBSan build, not the installed one:
    otherwise the sanitizers check nothing. Outside it, not that build."""

    where = os.environ.get("BSKY_BACKFILL_NATIVE_FROM")
    module = sys.modules.get(module_name)
    if where is None:
        assert module is None or "asan" not in str(module.__file__)
        return
    assert module is not None and str(module.__file__).startswith(where), module
