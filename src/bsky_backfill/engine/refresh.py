"""`run --refresh`: land what changed in repos that landed before, record what went.

Where it sits: the worker's path for a repo the store marked `refresh`
(`StateStore.mark_refresh`). It asks the host for a diff (`getRepo
since=<rev>`), reads what the dataset already holds for the repo
(`LandedIndex`, DuckDB over the Parquet tables), and lets repo/diff.py tell
new, changed and deleted records apart. New and changed records go through the
same `RecordColumns` as any record; superseded and deleted ones become rows of
`OUT/_deletions/` (`reason` = `updated` or `deleted`), so nothing disappears
silently and the dataset stays append-only. The current view of a table is its
rows minus the (uri, cid) pairs in `_deletions`.

The landed index scans the dataset once per refreshed repo: fine for study-
sized datasets; a whole-network refresh wants a key index in the state store.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import duckdb
import pyarrow as pa

from bsky_backfill.models import RecordFilter, RepoExtract, utcnow
from bsky_backfill.records.columns import RecordColumns
from bsky_backfill.repo.diff import Changes, compare
from bsky_backfill.sinks.storage import DELETIONS, table_dir

DELETION_SCHEMA = pa.schema(
    [
        pa.field("did", pa.string(), nullable=False),
        pa.field("uri", pa.string(), nullable=False),
        pa.field("collection", pa.string(), nullable=False),
        pa.field("rkey", pa.string(), nullable=False),
        pa.field("cid", pa.string(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("rev", pa.string()),
        pa.field("detected_at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


class LandedIndex:
    """key -> CID of a repo's current records in the dataset (wanted collections)."""

    def __init__(self, out: Path, collections: frozenset[str]) -> None:
        self.out = out
        self.collections = collections

    def for_did(self, did: str) -> dict[str, str]:
        globs = [
            str(self.out / table_dir(c) / "**" / "*.parquet")
            for c in sorted(self.collections)
            if any((self.out / table_dir(c)).glob("**/*.parquet"))
        ]
        if not globs:
            return {}
        con = duckdb.connect()
        try:
            rows = con.execute(
                "SELECT uri, cid FROM read_parquet(?, union_by_name=true) WHERE did = ?",
                [globs, did],
            ).fetchall()
            gone: set[tuple[str, str]] = set()
            if any((self.out / DELETIONS).glob("**/*.parquet")):
                gone = set(
                    con.execute(
                        "SELECT uri, cid FROM read_parquet(?) WHERE did = ?",
                        [str(self.out / DELETIONS / "**" / "*.parquet"), did],
                    ).fetchall()
                )
        finally:
            con.close()
        prefix = len(f"at://{did}/")
        return {uri[prefix:]: cid for uri, cid in rows if (uri, cid) not in gone}


def refresh_extract(
    data: bytes, did: str, filt: RecordFilter, landed: dict[str, str]
) -> RepoExtract:
    """The rows a refresh lands for one repo, its `_deletions` rows among the tables."""
    changes = compare(data, did, landed)
    columns = RecordColumns(did, filt)
    for key, cid, record in changes.changed:
        collection, _, rkey = key.partition("/")
        if collection not in filt.collections:
            continue
        if record is None:
            columns.reject(
                f"at://{did}/{key}", "decode", "RecordBlockMissing",
                "a new or changed record's block is not in the diff",
            )  # fmt: skip
            continue
        columns.add(collection, rkey, cid, record)
    tables, dead_letters = columns.finish()
    deletions = _deletions(did, changes, utcnow())
    if deletions.num_rows:
        tables[DELETIONS] = deletions
    return RepoExtract(did=did, rev=changes.rev, tables=tables, dead_letters=dead_letters,
                       records_seen=len(changes.changed))  # fmt: skip


def _deletions(did: str, changes: Changes, at: dt.datetime) -> pa.Table:
    rows = [(k, c, "updated") for k, c in changes.replaced.items()]
    rows += [(k, c, "deleted") for k, c in changes.deleted.items()]
    rows.sort()
    keys = [k for k, _, _ in rows]
    return pa.table(
        {
            "did": [did] * len(rows),
            "uri": [f"at://{did}/{k}" for k in keys],
            "collection": [k.partition("/")[0] for k in keys],
            "rkey": [k.partition("/")[2] for k in keys],
            "cid": [c for _, c, _ in rows],
            "reason": [r for _, _, r in rows],
            "rev": [changes.rev] * len(rows),
            "detected_at": [at] * len(rows),
        },
        schema=DELETION_SCHEMA,
    )
