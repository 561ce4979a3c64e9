"""PostgreSQL for tests: the server the environment provides, and a fresh schema per test.

The server (127.0.0.1:5432, user postgres, trust auth, database `test`) is
started before any session and before CI; BSKY_BACKFILL_TEST_PG overrides the
URL. When it cannot be reached, PostgreSQL tests fail under CI=true (a CI
without its database must not pass silently) and skip elsewhere, each with the
same clear message. Other test packages import `fresh_schema_url` from here.
"""

from __future__ import annotations

import contextlib
import functools
import os
import uuid
from collections.abc import Iterator

import psycopg
from psycopg import sql

from tests.ci import require_in_ci

PG_URL = os.environ.get("BSKY_BACKFILL_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


@functools.cache
def _unreachable() -> str | None:
    try:
        with psycopg.connect(PG_URL, connect_timeout=5):
            return None
    except psycopg.Error as e:
        return " ".join(str(e).split())


def require_postgres() -> str:
    """The server URL, or fail (CI=true) / skip with a clear message."""
    why = _unreachable()
    if why is not None:
        msg = (
            f"PostgreSQL not reachable at {PG_URL} ({why}); the PostgreSQL state-store "
            "tests need it (set BSKY_BACKFILL_TEST_PG to point elsewhere)"
        )
        require_in_ci(msg)
    return PG_URL


def with_schema(schema: str) -> str:
    sep = "&" if "?" in PG_URL else "?"
    return f"{PG_URL}{sep}schema={schema}"


@contextlib.contextmanager
def fresh_schema_url() -> Iterator[str]:
    """A queue URL on a schema no other test uses; the schema is dropped afterwards.

    Close every store on it before the block ends (DROP waits for their locks)."""
    require_postgres()
    schema = f"test_{uuid.uuid4().hex[:16]}"
    try:
        yield with_schema(schema)
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def admin() -> psycopg.Connection[tuple[object, ...]]:
    """A plain autocommit connection to the test database (for inspecting a store)."""
    return psycopg.connect(require_postgres(), autocommit=True)
