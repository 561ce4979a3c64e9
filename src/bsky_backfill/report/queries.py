"""The report's numbers: DuckDB over the Parquet dataset, plus the state store for hosts.

Where it sits: `bsky-backfill report` (cli.py) calls `build_report(out)`; the
result goes to `render` (terminal, JSON) and `html` (the page). It only reads:
the dataset under OUT and, for hosts, the state store (under OUT/_state, or
the PostgreSQL queue named by `--queue`).

DuckDB does every aggregation, so the report stays fast on a dataset of
billions of rows: Python only ever sees grouped rows (collections x months,
hosts, dead-letter codes). Records per host need each record's DID joined to
its PDS host; the DID -> host map lives in the state store and is streamed
from it (`StateStore.host_map`) into a DuckDB temp table in Arrow batches
(never a Python list of all repos).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa

from bsky_backfill.errors import UsageError
from bsky_backfill.report.model import (
    UNKNOWN_HOST,
    CollectionCount,
    DeadLetterCount,
    HostCount,
    MonthCount,
    Report,
)
from bsky_backfill.state.base import HostStatus, StateStore

DEAD_LETTERS = "_deadletters"
DELETIONS = "_deletions"
SUPERSEDED = "_superseded"
STATE_FILE = Path("_state") / "state.sqlite"
_HOST_MAP_BATCH = 65_536
_HOST_MAP_SCHEMA = pa.schema([("did", pa.string()), ("host", pa.string())])


def parquet_glob(out: Path, table: str) -> str:
    """The glob readers use for one table (CONTRACT.md: OUT/<table>/**/*.parquet)."""
    return str(out / table / "**" / "*.parquet")


def _has_parquet(directory: Path) -> bool:
    # any() stops at the first file: cheap even under a huge table.
    return directory.is_dir() and any(directory.rglob("*.parquet"))


def find_collections(out: Path) -> list[str]:
    """Table directories under OUT that hold at least one committed Parquet file.

    Names starting with "_" are the backfill's own (dead letters, state); an
    NSID never starts with one.
    """
    return sorted(
        p.name
        for p in out.iterdir()
        if p.is_dir() and not p.name.startswith(("_", ".")) and _has_parquet(p)
    )


def _connect() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    # Months are UTC months whatever the machine's time zone is.
    con.execute("SET TimeZone = 'UTC'")
    return con


# One table's rows; the glob is bound as a parameter, never spliced into SQL.
_READ = "read_parquet(?, hive_partitioning = true, union_by_name = true)"


def _current(out: Path, globs: str | list[str]) -> tuple[str, list[str | list[str]]]:
    """FROM clause and parameters of a table's current view: its rows minus the
    `(uri, cid)` pairs in `_deletions` (README: what the accounts hold now)."""
    if not _has_parquet(out / DELETIONS):
        return f"{_READ} p", [globs]
    return (
        f"{_READ} p ANTI JOIN read_parquet(?, union_by_name = true) x USING (uri, cid)",
        [globs, parquet_glob(out, DELETIONS)],
    )


def deletion_counts(con: duckdb.DuckDBPyConnection, out: Path) -> dict[tuple[str, str], int]:
    """`_deletions` rows per (collection, reason)."""
    if not _has_parquet(out / DELETIONS):
        return {}
    rows = con.execute(
        "SELECT collection, reason, count(*) FROM read_parquet(?, union_by_name = true) "
        "GROUP BY collection, reason",
        [parquet_glob(out, DELETIONS)],
    ).fetchall()
    return {(str(c), str(r)): int(n) for c, r, n in rows}


def collection_counts(
    con: duckdb.DuckDBPyConnection, out: Path, collection: str
) -> tuple[CollectionCount, list[MonthCount]]:
    """Current-view rows of one collection per UTC month of `created_at` (nulls apart)."""
    source, params = _current(out, parquet_glob(out, collection))
    rows = con.execute(
        f"""SELECT strftime(created_at, '%Y-%m') AS month, count(*) AS n
            FROM {source}
            GROUP BY month ORDER BY month NULLS LAST""",
        params,
    ).fetchall()
    months = [MonthCount(collection, str(m), int(n)) for m, n in rows if m is not None]
    no_created_at = sum(int(n) for m, n in rows if m is None)
    count = CollectionCount(
        collection=collection,
        records=no_created_at + sum(m.records for m in months),
        no_created_at=no_created_at,
        first_month=months[0].month if months else None,
        last_month=months[-1].month if months else None,
    )
    return count, months


def dead_letter_counts(con: duckdb.DuckDBPyConnection, out: Path) -> list[DeadLetterCount]:
    """Dead letters per stage and error code, most frequent first: those that stand
    (a repo put back by `run --retry-failed` counts its latest verdict once; the rule
    is sinks/superseded.py's)."""
    if not _has_parquet(out / DEAD_LETTERS):
        return []
    params = [parquet_glob(out, DEAD_LETTERS)]
    standing = ""
    if _has_parquet(out / SUPERSEDED):
        superseded = parquet_glob(out, SUPERSEDED)
        columns = {
            str(r[0])
            for r in con.execute(
                "DESCRIBE SELECT * FROM read_parquet(?, union_by_name = true)", [superseded]
            ).fetchall()
        }
        # Files from before record supersession (refresh) have no `uri` column.
        same = (
            "((s.uri IS NULL AND d.uri IS NULL) OR s.uri = d.uri)"
            if "uri" in columns
            else ("d.uri IS NULL")
        )
        standing = f"""WHERE NOT EXISTS (
            SELECT 1 FROM read_parquet(?, union_by_name = true) s
            WHERE s.did = d.did AND d.failed_at <= s.superseded_at AND {same})"""
        params.append(superseded)
    rows = con.execute(
        f"""SELECT stage, error, count(*) AS n FROM {_READ} d {standing}
            GROUP BY stage, error ORDER BY n DESC, stage, error""",
        params,
    ).fetchall()
    return [DeadLetterCount(str(s), str(e), int(n)) for s, e, n in rows]


def _load_host_map(con: duckdb.DuckDBPyConnection, store: StateStore) -> None:
    """The store's (did, host) pairs into a DuckDB temp table, batch by batch (DuckDB
    keeps it compressed and spills it to disk if it must: tens of millions of rows)."""
    con.execute("CREATE OR REPLACE TEMP TABLE host_map (did VARCHAR, host VARCHAR)")
    for rows in store.host_map(_HOST_MAP_BATCH):
        dids, hosts = zip(*rows, strict=True)
        batch = pa.table(
            [pa.array(dids, pa.string()), pa.array(hosts, pa.string())], schema=_HOST_MAP_SCHEMA
        )
        con.register("host_batch", batch)
        try:
            con.execute("INSERT INTO host_map SELECT did, host FROM host_batch")
        finally:
            con.unregister("host_batch")


def records_per_host(
    con: duckdb.DuckDBPyConnection, out: Path, collections: list[str], store: StateStore
) -> dict[str, int]:
    """Rows of every collection per PDS host (records' DIDs joined to the store's hosts)."""
    if not collections:
        return {}
    _load_host_map(con, store)
    source, params = _current(out, [parquet_glob(out, c) for c in collections])
    try:
        rows = con.execute(
            f"""WITH per_did AS (
                   SELECT did, count(*) AS n
                   FROM {source}
                   GROUP BY did)
               SELECT h.host, sum(p.n) FROM per_did p LEFT JOIN host_map h USING (did)
               GROUP BY h.host""",
            params,
        ).fetchall()
    finally:
        con.execute("DROP TABLE IF EXISTS host_map")
    return {(UNKNOWN_HOST if host is None else str(host)): int(n) for host, n in rows}


def merge_hosts(repos: list[HostStatus], records: dict[str, int]) -> list[HostCount]:
    """One row per host known to either side; most records first, then most repos."""
    by_host = {h.host: h for h in repos}
    merged = [
        HostCount(
            host=name,
            repos=by_host[name].total if name in by_host else 0,
            done=by_host[name].done if name in by_host else 0,
            failed=by_host[name].failed if name in by_host else 0,
            pending=by_host[name].pending if name in by_host else 0,
            records=records.get(name, 0),
        )
        for name in {*by_host, *records}
    ]
    return sorted(merged, key=lambda h: (-h.records, -h.repos, h.host))


def _filters(recorded: str | None) -> dict[str, Any] | None:
    """The filter the runs recorded in the store (engine/filters.py `check_filters`)."""
    if recorded is None:
        return None
    try:
        value = json.loads(recorded)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def build_report(out: Path, queue: str | None = None) -> Report:
    """Summarise the dataset under OUT; hosts come from the state store (SQLite under
    OUT, or `queue`: the run's `--queue` URL). A missing or empty OUT, or a queue
    that holds no backfill, is a UsageError (exit 2)."""
    from bsky_backfill.state.open import open_store, redact, store_exists

    if not out.is_dir():
        raise UsageError(f"--out {out}: no such directory (run `bsky-backfill run` first)")
    collections = find_collections(out)
    has_dead = _has_parquet(out / DEAD_LETTERS)
    if not collections and not has_dead:
        raise UsageError(f"--out {out}: no dataset there (no Parquet tables under it)")
    state_path = out / STATE_FILE
    if queue is not None and not store_exists(queue, state_path):
        raise UsageError(f"no backfill state in the queue {redact(queue)}")
    has_state = queue is not None or state_path.is_file()
    con = _connect()
    try:
        counts: list[CollectionCount] = []
        months: list[MonthCount] = []
        gone = deletion_counts(con, out)
        for collection in collections:
            count, per_month = collection_counts(con, out, collection)
            count = dataclasses.replace(
                count,
                deleted=gone.get((collection, "deleted"), 0),
                updated=gone.get((collection, "updated"), 0),
            )
            counts.append(count)
            months.extend(per_month)
        hosts: list[HostCount] = []
        filters: dict[str, Any] | None = None
        if has_state:
            store = open_store(queue, state_path)
            try:
                hosts = merge_hosts(
                    list(store.status().hosts), records_per_host(con, out, collections, store)
                )
                filters = _filters(store.get_meta("filter"))
            finally:
                store.close()
        return Report(
            out=str(out),
            collections=counts,
            months=months,
            hosts=hosts,
            dead_letters=dead_letter_counts(con, out),
            has_state=has_state,
            filters=filters,
        )
    finally:
        con.close()
