"""Start-up recovery of the dataset: settle what a crash left in `OUT/_state/tmp`.

Where it sits: run once by `DatasetWriter.recover()` when a run starts, before
any batch is opened and before worker processes write (it cannot tell another
live writer's open batch from a dead one's). The state store is the truth:

- tmp file recorded as committed, final missing -> rename (the crash hit
  between the store commit and the renames; the tmp was fsynced before the
  store commit, so it is complete);
- recorded as committed, final present -> delete the tmp (a copy-then-delete
  move on an object store died half-way);
- not recorded -> delete: its batch never committed, its repos are still
  pending/in_progress in the store and will be fetched again.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from bsky_backfill.sinks.storage import TMP_DIR, Storage, final_path
from bsky_backfill.state.base import StateStore


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What recovery found after the previous run."""

    renamed: int = 0
    """Committed files whose rename a crash interrupted; now in place."""
    deleted: int = 0
    """Tmp files of batches never committed (their repos will be fetched again)."""
    missing: tuple[str, ...] = ()
    """Committed files with neither final nor tmp file: removed by someone else.
    Their repos are marked done but their rows are gone; worth a loud warning."""


def recover_dataset(storage: Storage, store: StateStore) -> RecoveryReport:
    """Apply the rules in the module docstring to every file in the tmp dir."""
    committed = {f.path for f in store.committed_files()}
    # One listing per directory instead of one stat per committed file.
    present = {
        f"{d}/{name}"
        for d in {posixpath.dirname(p) for p in committed}
        for name in storage.list_names(d)
    }
    renamed = deleted = 0
    touched = {TMP_DIR}
    for name in storage.list_names(TMP_DIR):
        final = final_path(name)
        if final is None:
            continue  # not ours; leave it alone
        tmp = f"{TMP_DIR}/{name}"
        if final in committed and final not in present:
            final_dir = posixpath.dirname(final)
            if final_dir not in touched:
                storage.makedirs(final_dir)
                touched.add(final_dir)
            storage.move(tmp, final)
            present.add(final)
            renamed += 1
        else:
            storage.delete(tmp)
            deleted += 1
    for d in touched:
        storage.fsync_dir(d)
    return RecoveryReport(renamed, deleted, tuple(sorted(committed - present)))
