"""The one place that knows where the test data lives.

`tests/fixtures/atproto/` is a copy of public AT Protocol test data (interop
vectors, real repo CARs, lexicons, DID documents, XRPC responses) with its
upstream licence files and provenance (`tests/fixtures/atproto/README.md`,
`tests/fixtures/README.md`). Tests read it from here, never from outside the
repository: a fresh clone must pass on its own (`tests/test_self_contained.py`).
"""

from __future__ import annotations

from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "atproto"
CARS = FIXTURES / "car"
LEXICONS = FIXTURES / "lexicons"
INTEROP = FIXTURES / "interop-tests"
