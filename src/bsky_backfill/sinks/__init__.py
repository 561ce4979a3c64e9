"""sinks layer: where finished repos become durable Parquet files.

`DatasetWriter` (parquet.py) batches repos into tmp files and commits them
together with the state store (batch.py holds the open batch); `recovery.py`
settles what dead writers left; `liveness.py` tells dead writers from live
ones; `deadletters.py` is the `_deadletters` table, `accounts.py` the
`_accounts` table; `storage.py` the layout.
"""

from bsky_backfill.errors import BatchRefused
from bsky_backfill.sinks.batch import DiscardedBatch
from bsky_backfill.sinks.deadletters import DEAD_LETTER_SCHEMA, dead_letter_table
from bsky_backfill.sinks.parquet import CommitSummary, DatasetWriter, SinkConfig
from bsky_backfill.sinks.recovery import RecoveryReport

__all__ = [
    "DEAD_LETTER_SCHEMA",
    "BatchRefused",
    "CommitSummary",
    "DatasetWriter",
    "DiscardedBatch",
    "RecoveryReport",
    "SinkConfig",
    "dead_letter_table",
]
