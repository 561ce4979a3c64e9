"""One rule for "am I in CI", and what a missing service or tool means there.

CI sets `CI` (to `true` in `.ci/run`; other CI systems use `1` or `yes`). In CI
a missing PostgreSQL, Chromium or C extension fails the test that needs it: a
skip would let a broken install pass. On a developer's machine it skips, with
the same message saying what to install.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def require_in_ci(message: str) -> NoReturn:
    """Something a test needs is missing: fail in CI, skip elsewhere."""
    if in_ci():
        pytest.fail(message, pytrace=False)
    pytest.skip(message)
