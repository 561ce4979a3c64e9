"""Provenance: the `rev` and `fetched_at` columns of every record row, and the
key-value metadata of every Parquet file.

Where it sits: the last touch before rows become Parquet. `DatasetWriter`
stamps each repo's tables as it adds them (the CAR, list and refresh paths),
and `sinks.batch.encode_tables` stamps the big-repo parts that helper
processes encode. Kept here, in one place, rather than in records/: the
values are known to the fetch (which revision, when), not to the record.

- `rev`: the repo revision the row came from (the landed repo state's rev,
  what the state store records as done). Null in `--method list`: listRecords
  pages name no revision, and nothing there is signed.
- `fetched_at`: when the repo (CAR path, refresh) or the part of its listing
  (list mode) was fetched, UTC: the backfill's twin of Jetstream's `time_us`
  or the AppView's `indexedAt`.

File metadata (`bsky_backfill.version`, `bsky_backfill.filter`) travels with
each file, so a collection folder copied elsewhere still says what made it.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping

import pyarrow as pa

from bsky_backfill import __version__

__all__ = [
    "PROVENANCE_FIELDS",
    "file_metadata",
    "stamp",
    "with_file_metadata",
]

PROVENANCE_FIELDS: tuple[pa.Field, ...] = (
    pa.field("rev", pa.string()),
    pa.field("fetched_at", pa.timestamp("us", tz="UTC")),
)
_NAMES = tuple(f.name for f in PROVENANCE_FIELDS)

VERSION_KEY = "bsky_backfill.version"
FILTER_KEY = "bsky_backfill.filter"


def stamp(table: pa.Table, rev: str | None, fetched_at: dt.datetime) -> pa.Table:
    """`table` with `rev` and `fetched_at` appended (one value for every row).

    A table that has them already is returned as it is (a part stamped in a
    helper process, rows re-read by compaction)."""
    if table.schema.get_field_index(_NAMES[0]) >= 0:
        return table
    n = table.num_rows
    rev_field, at_field = PROVENANCE_FIELDS
    table = table.append_column(rev_field, pa.repeat(pa.scalar(rev, pa.string()), n))
    return table.append_column(at_field, pa.repeat(pa.scalar(fetched_at, at_field.type), n))


def file_metadata(
    collections: list[str] | None = None,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    method: str | None = None,
) -> tuple[tuple[str, str], ...]:
    """The key-value metadata every file of a run carries: tool version and filters."""
    filt = {
        "collections": sorted(collections) if collections is not None else None,
        "since": since.isoformat() if since else None,
        "until": until.isoformat() if until else None,
        "method": method,
    }
    return (
        (VERSION_KEY, __version__),
        (FILTER_KEY, json.dumps(filt, sort_keys=True)),
    )


def with_file_metadata(schema: pa.Schema, metadata: Mapping[str, str] | None) -> pa.Schema:
    """`schema` carrying `metadata` (written by pyarrow as the file's key-value metadata)."""
    if not metadata:
        return schema
    merged = dict(schema.metadata or {})
    merged.update({k.encode(): v.encode() for k, v in metadata.items()})
    return schema.with_metadata(merged)
