"""Read a backfill's output back with DuckDB, for comparison with the simulator's truth."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb


def parquet_glob(out: Path, table: str) -> str:
    return str(out / table / "**" / "*.parquet")


def has_table(out: Path, table: str) -> bool:
    return any((out / table).rglob("*.parquet")) if (out / table).is_dir() else False


def read_rows(out: Path, table: str, columns: str = "*") -> list[dict[str, Any]]:
    """All rows of one table as dicts (empty when the table does not exist)."""
    if not has_table(out, table):
        return []
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    rel = con.execute(
        f"SELECT {columns} FROM read_parquet(?, hive_partitioning=true, union_by_name=true)",
        [parquet_glob(out, table)],
    )
    names = [d[0] for d in rel.description]
    return [dict(zip(names, row, strict=True)) for row in rel.fetchall()]


def collections_in(out: Path) -> list[str]:
    return sorted(
        p.name
        for p in out.iterdir()
        if p.is_dir() and not p.name.startswith("_") and has_table(out, p.name)
    )


def as_utc(value: dt.datetime | None) -> dt.datetime | None:
    if value is None:
        return None
    if value.tzinfo is None:
        return value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def assert_matches_truth(out: Path, expected: dict[str, Any], expected_dead: set[Any]) -> None:
    """The dataset equals the truth exactly: no missing, duplicate or extra rows."""
    seen: dict[str, dict[str, Any]] = {}
    for collection in collections_in(out):
        for row in read_rows(out, collection):
            assert row["uri"] not in seen, f"duplicate row {row['uri']}"
            assert row["collection"] == collection
            seen[row["uri"]] = row
    missing = sorted(set(expected) - set(seen))
    extra = sorted(set(seen) - set(expected))
    assert not missing, f"{len(missing)} missing rows, e.g. {missing[:3]}"
    assert not extra, f"{len(extra)} rows that should not be there, e.g. {extra[:3]}"
    for uri, truth in expected.items():
        row = seen[uri]
        assert row["cid"] == truth.cid, uri
        assert row["did"] == truth.did and row["rkey"] == truth.rkey, uri
        assert as_utc(row["created_at"]) == truth.created_at, (uri, row["created_at"])
        if truth.collection == "app.bsky.feed.post":
            assert row["text"] == truth.text, uri
    dead = read_rows(out, "_deadletters", "did, uri, stage, error")
    got = {(d["did"], d["uri"], d["stage"], d["error"]) for d in dead}
    assert len(dead) == len(got), "a dead letter was written twice"
    want = {(d.did, d.uri, d.stage, d.code) for d in expected_dead}
    assert got == want, {"missing": want - got, "extra": got - want}
