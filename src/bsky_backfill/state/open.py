"""Pick the state store backend from `--queue` (default: SQLite under OUT/_state)."""

from __future__ import annotations

from pathlib import Path

from bsky_backfill.errors import UsageError
from bsky_backfill.state.base import StateStore


def open_store(queue: str | None, default_path: Path) -> StateStore:
    """`None` or `sqlite:///path` -> SQLite; `postgresql://...` -> PostgreSQL (not yet)."""
    from bsky_backfill.state.sqlite import SqliteStateStore

    if queue is None:
        default_path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStateStore(default_path)
    if queue.startswith("sqlite:///"):
        path = Path(queue[len("sqlite:///") :])
        path.parent.mkdir(parents=True, exist_ok=True)
        return SqliteStateStore(path)
    if queue.startswith(("postgresql://", "postgres://")):
        raise UsageError("--queue postgresql:// is not supported by this version yet")
    raise UsageError(f"--queue {queue!r}: expected sqlite:///PATH or postgresql://...")


def store_exists(queue: str | None, default_path: Path) -> bool:
    """Whether a state store is already there (for `status`, which must not create one)."""
    if queue is None:
        return default_path.is_file()
    if queue.startswith("sqlite:///"):
        return Path(queue[len("sqlite:///") :]).is_file()
    return True
