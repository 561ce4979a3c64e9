"""Errors of the state layer: where database errors enter the error tree.

Every backend maps its driver's errors (sqlite3, later psycopg) into
`StateStoreError` at its own boundary, so the engine sees one fatal error kind
for "the queue is unusable" instead of driver exceptions.
"""

from __future__ import annotations

from collections.abc import Sequence

from bsky_backfill.errors import BackfillError


class StateStoreError(BackfillError):
    """The state store failed (locked, corrupt, full disk, schema from a newer version).

    Not transient and not a dead letter: the run cannot continue without its ledger,
    so the engine stops (exit code 1); a re-run resumes from what was committed.
    """

    code = "StateStoreError"
    stage = "state"


class LeaseLostError(StateStoreError):
    """A commit held repos this worker no longer owns; nothing of it was applied.

    `dids` are the offending repos. The caller must discard the batch's files
    (they were never recorded) and put its other repos back (`retry_later`).
    """

    code = "LeaseLost"

    def __init__(self, message: str, dids: Sequence[str]) -> None:
        super().__init__(message)
        self.dids = tuple(dids)


class FilesChangedError(StateStoreError):
    """A compaction's swap named files that are no longer committed (another
    compaction replaced them first); nothing of it was applied. The caller
    deletes its new files and may start again from the current set."""

    code = "FilesChanged"

    def __init__(self, message: str, paths: Sequence[str]) -> None:
        super().__init__(message)
        self.paths = tuple(paths)
