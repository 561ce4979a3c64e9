"""Dead letters as Arrow rows: the `OUT/_deadletters` table.

Where it sits: the engine hands `DeadLetter`s (record-level ones inside a
`RepoExtract`, whole-repo ones with a `RepoFailed`) to the DatasetWriter, which
turns them into this table and commits them with the batch they belong to.

The schema is a local copy until records/schema.py owns it (to be reconciled).
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa

from bsky_backfill.models import DeadLetter

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("did", pa.string(), nullable=False),
        pa.field("uri", pa.string()),  # null: the whole repo was dead-lettered
        pa.field("stage", pa.string(), nullable=False),
        pa.field("error", pa.string(), nullable=False),  # stable code, e.g. RepoTakendown
        pa.field("message", pa.string(), nullable=False),
        pa.field("at", pa.timestamp("us", tz="UTC"), nullable=False),
    ]
)


def dead_letter_table(letters: Sequence[DeadLetter]) -> pa.Table:
    """Dead letters -> a table in DEAD_LETTER_SCHEMA (aware `at` values land as UTC)."""
    return pa.Table.from_arrays(
        [
            pa.array([d.did for d in letters], pa.string()),
            pa.array([d.uri for d in letters], pa.string()),
            pa.array([d.stage for d in letters], pa.string()),
            pa.array([d.error for d in letters], pa.string()),
            pa.array([d.message for d in letters], pa.string()),
            pa.array([d.at for d in letters], pa.timestamp("us", tz="UTC")),
        ],
        schema=DEAD_LETTER_SCHEMA,
    )
