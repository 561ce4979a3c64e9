"""The `OUT/_superseded` table: dead letters that a later verdict made history.

Where it sits: two writers. The engine's `--retry-failed` step
(engine/retry_failed.py) writes one file of whole-repo rows (`uri` null) with
`DatasetWriter.commit_file`, in the same store transaction that puts the
repos back to pending (`StateStore.reopen_failed`). `run --refresh`
(engine/refresh.py) writes record rows (`uri` set) with a repo's refresh, for
records dead-lettered before that the repo has since changed or deleted.
`_deadletters` stays append-only: every verdict ever reached is kept. The rule
that counts each repo's and each record's latest verdict once: a dead letter
is history when `_superseded` has a row for its `did` and the same `uri`
(both null for a whole repo) with `superseded_at` at or after its `failed_at`:

    SELECT d.* FROM read_parquet('OUT/_deadletters/**/*.parquet', union_by_name=true) d
    WHERE NOT EXISTS (
      SELECT 1 FROM read_parquet('OUT/_superseded/**/*.parquet', union_by_name=true) s
      WHERE s.did = d.did AND d.failed_at <= s.superseded_at
        AND ((s.uri IS NULL AND d.uri IS NULL) OR s.uri = d.uri))

(`status` reads the same from the state store, which un-counts them as it
reopens or refreshes them.)
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import pyarrow as pa

from bsky_backfill.records.schema import TIMESTAMP
from bsky_backfill.sinks.storage import SUPERSEDED
from bsky_backfill.state.base import FailedRepo

SUPERSEDED_SCHEMA = pa.schema(
    [
        pa.field("did", pa.string(), nullable=False),
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),
        pa.field("superseded_at", TIMESTAMP, nullable=False),
        pa.field("uri", pa.string()),
    ]
)

CURRENT_DEAD_LETTERS = """
SELECT d.* FROM read_parquet('{out}/_deadletters/**/*.parquet', union_by_name=true) d
WHERE NOT EXISTS (
  SELECT 1 FROM read_parquet('{out}/_superseded/**/*.parquet', union_by_name=true) s
  WHERE s.did = d.did AND d.failed_at <= s.superseded_at
    AND ((s.uri IS NULL AND d.uri IS NULL) OR s.uri = d.uri))
"""
"""The documented view (format with `out`): dead letters that stand."""


def superseded_table(repos: Sequence[FailedRepo], at: dt.datetime) -> pa.Table:
    """Rows naming `repos`' failures as superseded at `at`."""
    return pa.table(
        {
            "did": [r.did for r in repos],
            "stage": [r.stage for r in repos],
            "error": [r.code for r in repos],
            "superseded_at": [at] * len(repos),
            "uri": [None] * len(repos),
        },
        schema=SUPERSEDED_SCHEMA,
    )


def records_superseded_table(
    did: str, records: Sequence[tuple[str, str, str]], at: dt.datetime
) -> pa.Table:
    """Rows naming record dead letters `(uri, stage, error)` of `did` as superseded
    at `at`: `run --refresh` found the record changed or deleted, so its earlier
    verdict is history (the new version, if any, has its own)."""
    return pa.table(
        {
            "did": [did] * len(records),
            "stage": [s for _, s, _ in records],
            "error": [e for _, _, e in records],
            "superseded_at": [at] * len(records),
            "uri": [u for u, _, _ in records],
        },
        schema=SUPERSEDED_SCHEMA,
    )


__all__ = [
    "CURRENT_DEAD_LETTERS",
    "SUPERSEDED",
    "SUPERSEDED_SCHEMA",
    "records_superseded_table",
    "superseded_table",
]
