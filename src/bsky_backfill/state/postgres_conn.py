"""Connecting to PostgreSQL: the `--queue` URL, the backfill's schema, migrations.

Where it sits: under `state.postgres.PostgresStateStore` (and `state.open`),
which call `parse_queue_url` once, then `connect` + `migrate` for each
connection they open.

One PostgreSQL database can hold several backfills, one schema each. The
schema comes from the URL: `?schema=NAME` (ours, removed before the URL goes to
libpq), else the first entry of a `search_path` given through libpq's
`options` (`?options=-csearch_path%3DNAME`), else `bsky_backfill`. Likewise
`?lease_seconds=N` sets how long a worker's claims outlive its last renewal.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import urllib.parse
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from bsky_backfill.state.errors import StateStoreError
from bsky_backfill.state.postgres_schema import MIGRATIONS, SCHEMA_VERSION

DEFAULT_SCHEMA = "bsky_backfill"
_SCHEMA_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_SEARCH_PATH = re.compile(r"-c\s*search_path\s*=\s*([^\s,]+)")


class PostgresConnectError(StateStoreError):
    """The `--queue` URL cannot be used: unreachable server, bad database, bad schema.

    Raised only while opening a store, so `state.open` can report it as a usage
    error (exit 2, one line) rather than a failure in the middle of a run.
    """


@dataclass(frozen=True, slots=True)
class QueueUrl:
    """A parsed `postgresql://` queue URL: what libpq gets, and our schema."""

    conninfo: str
    schema: str
    shown: str
    """The URL with any password hidden, for messages."""
    lease: dt.timedelta | None = None
    """`?lease_seconds=`, if given."""


def parse_queue_url(url: str) -> QueueUrl:
    """Split `?schema=` off a `postgresql://` URL; raises PostgresConnectError if unusable."""
    parts = urllib.parse.urlsplit(url)
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    shown = _redact(parts)
    ours = {"schema", "lease_seconds"}
    schemas = [v for k, v in query if k == "schema"]
    leases = [v for k, v in query if k == "lease_seconds"]
    rest = [(k, v) for k, v in query if k not in ours]
    lease = None
    if leases:
        try:
            lease = dt.timedelta(seconds=float(leases[-1]))
        except (ValueError, OverflowError):
            lease = None
        if lease is None or lease <= dt.timedelta(0):
            raise PostgresConnectError(
                f"{shown}: lease_seconds {leases[-1]!r} must be a positive number"
            )
    schema = schemas[-1] if schemas else None
    if schema is None:
        for k, v in rest:
            m = _SEARCH_PATH.search(v) if k == "options" else None
            if m:
                schema = m.group(1).strip('"')
    schema = schema or DEFAULT_SCHEMA
    if not _SCHEMA_NAME.fullmatch(schema):
        raise PostgresConnectError(
            f"{shown}: schema {schema!r} must be letters, digits and _ (at most 63)"
        )
    conninfo = urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(rest)))
    return QueueUrl(conninfo=conninfo, schema=schema, shown=shown, lease=lease)


def _redact(parts: urllib.parse.SplitResult) -> str:
    if parts.password is None:
        return urllib.parse.urlunsplit(parts._replace(query=""))
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=""))


def one_line(e: BaseException) -> str:
    """libpq messages span lines (hints, "Is the server running"): keep them on one."""
    return " ".join(str(e).split()) or type(e).__name__


def connect(q: QueueUrl) -> psycopg.Connection[tuple[object, ...]]:
    """A new autocommit connection whose session lives in the backfill's schema, in UTC."""
    extra: dict[str, str | int] = {}
    try:
        given = conninfo_to_dict(q.conninfo)
    except psycopg.Error as e:
        raise PostgresConnectError(f"{q.shown}: {one_line(e)}") from e
    # Without a timeout a blackholed host hangs the start-up for minutes.
    if "connect_timeout" not in given:
        extra["connect_timeout"] = 10
    if "application_name" not in given:
        extra["application_name"] = "bsky-backfill"
    try:
        conn = psycopg.connect(make_conninfo(q.conninfo, **extra), autocommit=True)
    except psycopg.Error as e:
        raise PostgresConnectError(f"{q.shown}: cannot connect: {one_line(e)}") from e
    try:
        # The schema may not exist yet (migrate() creates it): PostgreSQL
        # accepts a search_path naming a missing schema.
        conn.execute(sql.SQL("SET search_path = {}").format(sql.Identifier(q.schema)))
        conn.execute("SET TIME ZONE 'UTC'")
    except psycopg.Error as e:
        conn.close()
        raise PostgresConnectError(f"{q.shown}: {one_line(e)}") from e
    return conn


def migration_lock_key(schema: str) -> int:
    """The advisory lock (a signed 64-bit key) that serializes migrations of one schema."""
    digest = hashlib.blake2b(f"bsky_backfill.migrate:{schema}".encode(), digest_size=8)
    return int.from_bytes(digest.digest(), "big", signed=True)


def migrate(conn: psycopg.Connection[tuple[object, ...]], q: QueueUrl) -> int:
    """Bring the schema up to `SCHEMA_VERSION`; returns the version it found.

    One transaction under the advisory lock: concurrent starters queue here,
    the first migrates, the rest find nothing to do.
    """
    try:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (migration_lock_key(q.schema),))
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(q.schema)))
            conn.execute(
                """CREATE TABLE IF NOT EXISTS schema_version (
                     version INTEGER PRIMARY KEY,
                     applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"""
            )
            row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchone()
            current = int(str(row[0])) if row else 0
            if current > SCHEMA_VERSION:
                raise StateStoreError(
                    f"{q.shown} schema {q.schema}: schema version {current} is newer than "
                    f"this program's {SCHEMA_VERSION}; upgrade bsky-backfill"
                )
            for version in range(current + 1, SCHEMA_VERSION + 1):
                for stmt in MIGRATIONS[version - 1]:
                    conn.execute(stmt.encode())
                conn.execute("INSERT INTO schema_version(version) VALUES (%s)", (version,))
    except psycopg.Error as e:
        raise StateStoreError(f"{q.shown} schema {q.schema}: migration: {one_line(e)}") from e
    return current


def schema_exists(url: str) -> bool:
    """Whether the URL's schema already holds a state store (for `status`)."""
    q = parse_queue_url(url)
    conn = connect(q)
    try:
        row = conn.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{q.schema}".schema_version',)
        ).fetchone()
    except psycopg.Error as e:
        raise PostgresConnectError(f"{q.shown}: {one_line(e)}") from e
    finally:
        conn.close()
    return bool(row and row[0])
