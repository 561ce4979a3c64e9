"""Builders for sink tests: deterministic extracts whose rows can be predicted per DID."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from bsky_backfill.models import DeadLetter, RepoExtract
from bsky_backfill.state.base import RepoDone

POST = "app.bsky.feed.post"
LIKE = "app.bsky.feed.like"
T0 = dt.datetime(2024, 3, 1, tzinfo=dt.UTC)

# The common columns of the contract; the real schemas live in records/schema.py.
COMMON = pa.schema(
    [
        ("uri", pa.string()),
        ("did", pa.string()),
        ("collection", pa.string()),
        ("rkey", pa.string()),
        ("cid", pa.string()),
        ("created_at", pa.timestamp("us", tz="UTC")),
        ("record", pa.string()),
    ]
)


def rows_table(did: str, collection: str, n: int, start: int = 0) -> pa.Table:
    keys = [f"k{i:07d}" for i in range(start, start + n)]
    return pa.Table.from_arrays(
        [
            pa.array([f"at://{did}/{collection}/{k}" for k in keys]),
            pa.array([did] * n),
            pa.array([collection] * n),
            pa.array(keys),
            pa.array([f"bafyrei{k}" for k in keys]),
            pa.array([T0 + dt.timedelta(seconds=i) for i in range(n)], COMMON.field(5).type),
            pa.array([f'{{"$type":"x","text":"{k}"}}' for k in keys]),
        ],
        schema=COMMON,
    )


def shape(did: str) -> dict[str, int]:
    """How many rows of each collection a test DID has (stable, varied)."""
    h = sum(did.encode())
    return {POST: 1 + h % 37, LIKE: h % 11}


def extract(did: str, bad_records: int = 0) -> tuple[RepoExtract, RepoDone]:
    tables = {c: rows_table(did, c, n) for c, n in shape(did).items() if n}
    dead = [
        DeadLetter(
            did, f"at://{did}/{POST}/bad{i}", "validate", "InvalidRecord", "no text", failed_at=T0
        )
        for i in range(bad_records)
    ]
    ex = RepoExtract(did=did, rev="rev1", tables=tables, dead_letters=dead)
    return ex, RepoDone(did=did, rev="rev1", records=ex.row_count)


def read(out: Path, table: str, columns: str = "*") -> list[tuple[Any, ...]]:
    """Rows of one table as a reader sees them (the contract's DuckDB glob)."""
    if not any((out / table).glob("**/*.parquet")):
        return []
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    return con.execute(
        f"SELECT {columns} FROM read_parquet(?, hive_partitioning=true, union_by_name=true)",
        [str(out / table / "**" / "*.parquet")],
    ).fetchall()


def uris(out: Path) -> list[str]:
    return [r[0] for c in (POST, LIKE) for r in read(out, c, "uri")]


def expected_uris(did: str) -> set[str]:
    return {f"at://{did}/{c}/k{i:07d}" for c, n in shape(did).items() for i in range(n)}
