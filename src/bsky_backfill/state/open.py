"""Pick the state store backend from `--queue` (default: SQLite under OUT/_state)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from bsky_backfill.errors import UsageError
from bsky_backfill.state.base import StateStore

_POSTGRES = ("postgresql://", "postgres://")


def open_store(queue: str | None, default_path: Path) -> StateStore:
    """`None` or `sqlite:///path` -> SQLite; `postgresql://...` -> PostgreSQL.

    A PostgreSQL URL that cannot be used (unreachable server, unknown database,
    bad `?schema=`) is bad input: `UsageError` with one line.
    """
    from bsky_backfill.state.sqlite import SqliteStateStore

    if queue is None:
        default_path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStateStore(default_path)
    if queue.startswith("sqlite:///"):
        path = Path(queue[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStateStore(path)
    if queue.startswith(_POSTGRES):
        # Imported here: psycopg loads libpq, which a SQLite run never needs.
        from bsky_backfill.state.postgres import PostgresStateStore
        from bsky_backfill.state.postgres_conn import PostgresConnectError

        try:
            return PostgresStateStore(queue)
        except PostgresConnectError as e:
            raise UsageError(f"--queue {e}") from None
    raise UsageError(f"--queue {queue!r}: expected sqlite:///PATH or postgresql://...")


def store_exists(queue: str | None, default_path: Path) -> bool:
    """Whether a state store is already there (for `status`, which must not create one)."""
    if queue is None:
        return default_path.is_file()
    if queue.startswith("sqlite:///"):
        return Path(queue[len("sqlite:///") :]).is_file()
    if queue.startswith(_POSTGRES):
        from bsky_backfill.state.postgres_conn import PostgresConnectError, schema_exists

        try:
            return schema_exists(queue)
        except PostgresConnectError as e:
            raise UsageError(f"--queue {e}") from None
    return True


def redact(url: str) -> str:
    """A queue URL fit for messages: any password replaced by ***."""
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return urlunsplit(parts._replace(netloc=netloc))
    return url
