"""Dead letters as Arrow rows: the `OUT/_deadletters` table.

Where it sits: the engine hands `DeadLetter`s (record-level ones inside a
`RepoExtract`, whole-repo ones with a `RepoFailed`) to the DatasetWriter, which
turns them into this table and commits them with the batch they belong to.
The schema itself is records/schema.py's, with the tables of the records.
"""

from __future__ import annotations

from bsky_backfill.records.schema import DEAD_LETTER_SCHEMA
from bsky_backfill.records.schema import dead_letters_table as dead_letter_table

__all__ = ["DEAD_LETTER_SCHEMA", "dead_letter_table"]
