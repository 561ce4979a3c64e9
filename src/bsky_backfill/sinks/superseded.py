"""The `OUT/_superseded` table: whole-repo dead letters that `run --retry-failed` made history.

Where it sits: the engine's `--retry-failed` step (engine/retry_failed.py) writes
one file of these rows with `DatasetWriter.commit_file`, in the same store
transaction that puts the repos back to pending (`StateStore.reopen_failed`).
`_deadletters` stays append-only: every verdict ever reached is kept. The rule
that counts each repo's latest verdict once: a whole-repo dead letter (`uri`
null) of `did` is history when `_superseded` has a row for `did` with
`superseded_at` at or after its `failed_at`:

    SELECT d.* FROM read_parquet('OUT/_deadletters/**/*.parquet', union_by_name=true) d
    WHERE d.uri IS NOT NULL OR NOT EXISTS (
      SELECT 1 FROM read_parquet('OUT/_superseded/**/*.parquet') s
      WHERE s.did = d.did AND d.failed_at <= s.superseded_at)

(`status` reads the same from the state store, which un-counts them as it
reopens them.)
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
    ]
)

CURRENT_DEAD_LETTERS = """
SELECT d.* FROM read_parquet('{out}/_deadletters/**/*.parquet', union_by_name=true) d
WHERE d.uri IS NOT NULL OR NOT EXISTS (
  SELECT 1 FROM read_parquet('{out}/_superseded/**/*.parquet') s
  WHERE s.did = d.did AND d.failed_at <= s.superseded_at)
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
        },
        schema=SUPERSEDED_SCHEMA,
    )


__all__ = ["CURRENT_DEAD_LETTERS", "SUPERSEDED", "SUPERSEDED_SCHEMA", "superseded_table"]
