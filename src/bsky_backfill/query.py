"""`bsky-backfill query`: SQL over the dataset with what the package installs (DuckDB).

Where it sits: beside `report`, reading only. `connect(out)` opens an
in-memory DuckDB and defines one view per table under OUT:

- every collection under its NSID, quoted (`"app.bsky.feed.post"`), and under
  a short name for the app.bsky types (`posts`, `likes`, `follows`, ... see
  `SHORT_NAMES`);
- `dead_letters` (those that stand: history put back by `--retry-failed` is
  left out, as `report` counts them) and `deletions` (what `--refresh` found
  deleted or replaced);
- `accounts`: each DID's latest `_accounts` row (sinks/accounts.py: handle,
  handle_verified, pds, rev, fetched_at, status), to join on `did`.

A collection's view is its *current view* by default: its rows minus the
`(uri, cid)` pairs in `_deletions` (CONTRACT.md). `history=True` (`--history`)
shows every row ever landed, every dead letter and every `_accounts` row. Views over a table
that has no files yet are empty, with the right columns where it matters.
`export` writes a result by the file's extension: CSV, JSON (an array),
JSON lines (`.jsonl`/`.ndjson`) or Parquet, through a temporary file, so a
failed query leaves nothing behind.
"""

from __future__ import annotations

import os
from pathlib import Path

import duckdb

from bsky_backfill.errors import UsageError
from bsky_backfill.report.queries import DEAD_LETTERS, SUPERSEDED, find_collections
from bsky_backfill.sinks.storage import ACCOUNTS, DELETIONS

SHORT_NAMES = {
    "app.bsky.actor.profile": "profiles",
    "app.bsky.actor.status": "statuses",
    "app.bsky.feed.generator": "feed_generators",
    "app.bsky.feed.like": "likes",
    "app.bsky.feed.post": "posts",
    "app.bsky.feed.postgate": "postgates",
    "app.bsky.feed.repost": "reposts",
    "app.bsky.feed.threadgate": "threadgates",
    "app.bsky.graph.block": "blocks",
    "app.bsky.graph.follow": "follows",
    "app.bsky.graph.list": "lists",
    "app.bsky.graph.listblock": "listblocks",
    "app.bsky.graph.listitem": "listitems",
    "app.bsky.graph.starterpack": "starterpacks",
    "app.bsky.graph.verification": "verifications",
    "app.bsky.labeler.service": "labelers",
    "chat.bsky.actor.declaration": "chat_declarations",
}
"""View names that need no quoting, for the record types researchers use most."""

FORMATS = {
    ".csv": "FORMAT csv, HEADER true",
    ".json": "FORMAT json, ARRAY true",
    ".jsonl": "FORMAT json",
    ".ndjson": "FORMAT json",
    ".parquet": "FORMAT parquet, COMPRESSION zstd",
}
"""`--to FILE` extensions and how DuckDB writes them."""

_READ = "read_parquet({glob}, hive_partitioning = true, union_by_name = true)"
_EMPTY = {
    DELETIONS: "SELECT NULL::VARCHAR AS did, NULL::VARCHAR AS uri, NULL::VARCHAR AS collection, "
    "NULL::VARCHAR AS rkey, NULL::VARCHAR AS cid, NULL::VARCHAR AS reason, "
    "NULL::VARCHAR AS rev, NULL::TIMESTAMPTZ AS detected_at WHERE false",
    DEAD_LETTERS: "SELECT NULL::VARCHAR AS did, NULL::VARCHAR AS uri, NULL::VARCHAR AS stage, "
    "NULL::VARCHAR AS error, NULL::VARCHAR AS message, NULL::VARCHAR AS cid, "
    "NULL::VARCHAR AS record, NULL::TIMESTAMPTZ AS failed_at WHERE false",
    ACCOUNTS: "SELECT NULL::VARCHAR AS did, NULL::VARCHAR AS handle, "
    "NULL::BOOLEAN AS handle_verified, NULL::VARCHAR AS pds, NULL::VARCHAR AS rev, "
    "NULL::TIMESTAMPTZ AS fetched_at, NULL::VARCHAR AS status WHERE false",
}


def _literal(text: str) -> str:
    """A SQL string literal (DDL of views cannot take bound parameters)."""
    return "'" + text.replace("'", "''") + "'"


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _has_parquet(directory: Path) -> bool:
    return directory.is_dir() and any(directory.rglob("*.parquet"))


def _read(out: Path, table: str) -> str:
    return _READ.format(glob=_literal(str(out / table / "**" / "*.parquet")))


def _collection_name(con: duckdb.DuckDBPyConnection, out: Path, directory: str) -> str:
    """A table directory's NSID (a long NSID's directory holds a hash: ask a row)."""
    if "~" not in directory:
        return directory
    row = con.execute(f"SELECT collection FROM {_read(out, directory)} LIMIT 1").fetchone()
    return str(row[0]) if row else directory


def connect(
    out: Path | str, *, history: bool = False
) -> tuple[duckdb.DuckDBPyConnection, list[str]]:
    """An in-memory DuckDB with OUT's views, and the view names (for help and errors).
    Also the Python way in: `con, views = connect("study-data"); con.sql("...")`."""
    out = Path(out)
    if not out.is_dir():
        raise UsageError(f"--out {out}: no such directory (run `bsky-backfill run` first)")
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    views: list[str] = []
    has_deletions = _has_parquet(out / DELETIONS)
    for directory in find_collections(out):
        rows = _read(out, directory)
        if has_deletions and not history:
            rows = (
                f"(SELECT t.* FROM {rows} t ANTI JOIN "
                f"(SELECT uri, cid FROM {_read(out, DELETIONS)}) d "
                "ON t.uri = d.uri AND t.cid = d.cid)"
            )
        nsid = _collection_name(con, out, directory)
        names = [nsid] + ([SHORT_NAMES[nsid]] if nsid in SHORT_NAMES else [])
        for name in names:
            con.execute(f"CREATE VIEW {_ident(name)} AS SELECT * FROM {rows}")
        views.extend(names)
    deletions = f"SELECT * FROM {_read(out, DELETIONS)}" if has_deletions else _EMPTY[DELETIONS]
    con.execute(f"CREATE VIEW deletions AS {deletions}")
    if _has_parquet(out / DEAD_LETTERS):
        dead = f"SELECT * FROM {_read(out, DEAD_LETTERS)} d"
        if _has_parquet(out / SUPERSEDED) and not history:
            # The rule of sinks/superseded.py: a repo's letter put back by
            # --retry-failed is history once a later verdict exists.
            dead += (
                f" WHERE uri IS NOT NULL OR NOT EXISTS (SELECT 1 FROM {_read(out, SUPERSEDED)} s "
                "WHERE s.did = d.did AND d.failed_at <= s.superseded_at)"
            )
        con.execute(f"CREATE VIEW dead_letters AS {dead}")
    else:
        con.execute(f"CREATE VIEW dead_letters AS {_EMPTY[DEAD_LETTERS]}")
    if _has_parquet(out / ACCOUNTS):
        accounts = f"SELECT * FROM {_read(out, ACCOUNTS)}"
        if not history:
            # A repo landed or failed again (--refresh, --retry-failed) has a row
            # per verdict: its latest is the current one.
            accounts += " QUALIFY row_number() OVER (PARTITION BY did ORDER BY fetched_at DESC) = 1"
        con.execute(f"CREATE VIEW accounts AS {accounts}")
    else:
        con.execute(f"CREATE VIEW accounts AS {_EMPTY[ACCOUNTS]}")
    views += ["accounts", "dead_letters", "deletions"]
    return con, views


def check_target(path: Path) -> str:
    """The DuckDB COPY options for `--to FILE`; UsageError before anything runs."""
    options = FORMATS.get(path.suffix.lower())
    if options is None:
        raise UsageError(f"--to {path}: name a .csv, .json, .jsonl, .ndjson or .parquet file")
    if path.is_dir() or not path.parent.is_dir():
        raise UsageError(f"--to {path}: not a file in an existing directory")
    return options


def _one_line(error: duckdb.Error) -> str:
    return " ".join(str(error).split())


def run_query(
    con: duckdb.DuckDBPyConnection, sql: str, views: list[str]
) -> duckdb.DuckDBPyRelation | None:
    """The result of `sql` (None for a statement that returns nothing)."""
    try:
        return con.sql(sql)
    except duckdb.Error as e:
        hint = ""
        if isinstance(e, duckdb.CatalogException):
            hint = f" (views: {', '.join(v if '.' not in v else _ident(v) for v in views)})"
        raise UsageError(f"query: {_one_line(e)}{hint}") from None


def export(con: duckdb.DuckDBPyConnection, result: duckdb.DuckDBPyRelation, path: Path) -> None:
    """Write `result` to `path` in the format its extension names."""
    options = check_target(path)
    partial = path.with_name(f".{path.name}.partial")
    result.create_view("query_result", replace=True)
    try:
        con.execute(f"COPY (SELECT * FROM query_result) TO {_literal(str(partial))} ({options})")
        os.replace(partial, path)
    except duckdb.Error as e:
        partial.unlink(missing_ok=True)
        raise UsageError(f"query: {_one_line(e)}") from None
    finally:
        partial.unlink(missing_ok=True)
