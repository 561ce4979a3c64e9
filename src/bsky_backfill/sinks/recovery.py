"""Recovery of the dataset: settle what dead writers left in `OUT/_state/tmp`.

Where it sits: `DatasetWriter.recover()`, run by the engine at start-up, and
safe to run from any writer at any time: several writers (processes, machines)
may share one dataset, each with its own tmp directory, and recovery only
deletes files of writers it knows to be dead (`sinks.liveness`). The state
store is the truth about what is committed:

- tmp file recorded as committed, final missing -> rename, whoever owns it
  (the store says it is final; the tmp was fsynced before the store commit, so
  it is complete). Its owner may be renaming it at the same moment: the loser
  of that race finds its source gone and the destination there, which is fine.
- recorded as committed, final present -> delete the tmp, if its writer is
  dead (a copy-then-delete move on an object store died half-way).
- not recorded, writer dead -> delete: its batch never committed, its repos
  are still pending/in_progress in the store and will be fetched again.
- not recorded, writer alive -> keep: it is that writer's open batch.

Order matters: a writer is first found dead (and, with the lock rule, its lock
taken and held), and only then is the store asked what is committed. A dead
writer cannot commit any more, so "not in the store" is final for its files;
reading the store first would miss a commit that landed in between.

The flat `_state/tmp/*.tmp` files of earlier versions have no owner and are
settled as a dead writer's.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import posixpath
from collections.abc import Iterable
from dataclasses import dataclass

from bsky_backfill.sinks.liveness import DeadDir, Rule, claim_dead, settle_staging
from bsky_backfill.sinks.storage import (
    TMP_DIR,
    Listing,
    Storage,
    final_path,
    is_writer_id,
    staging_writer,
    tmp_name,
)
from bsky_backfill.state.base import StateStore


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What recovery found and did."""

    renamed: int = 0
    """Committed files whose rename a crash interrupted (or their owner has not
    done yet); now in place."""
    deleted: int = 0
    """Tmp files of dead writers' batches that never committed (their repos will
    be fetched again), or stale copies of files already in place."""
    missing: tuple[str, ...] = ()
    """Committed files with neither final nor tmp file: removed by someone else.
    Their repos are marked done but their rows are gone; worth a loud warning."""
    kept: int = 0
    """Uncommitted tmp files of other live writers: their open batches, left alone."""
    dead_writers: int = 0
    """Tmp directories of dead writers (crashed, or closed with a batch open) settled."""
    live_writers: int = 0
    """Other writers' tmp directories found alive (this writer's own not counted)."""


def recover_dataset(
    storage: Storage,
    store: StateStore,
    *,
    own: str | None,
    rule: Rule,
    stale_after: float,
    now: dt.datetime,
) -> RecoveryReport:
    """Apply the module docstring's rules to every writer directory under TMP_DIR.

    `own` is the calling writer's directory (alive by definition); `now` is the
    storage's clock, compared with file times under the age rule."""
    top = storage.list_dir(TMP_DIR)
    with contextlib.ExitStack() as held:
        dead: list[tuple[str, Listing, DeadDir]] = []
        live: list[tuple[str, Listing]] = []
        for name in sorted(top.dirs):
            if staging_writer(name) and storage.local:
                settle_staging(storage, f"{TMP_DIR}/{name}", stale_after=stale_after, now=now)
                continue
            if not is_writer_id(name):
                continue  # not ours; leave it alone
            rel = f"{TMP_DIR}/{name}"
            listing = storage.list_dir(rel)
            found = None
            if rel != own:
                found = claim_dead(
                    storage, rel, listing.files, rule=rule, stale_after=stale_after, now=now
                )
            if found is None:
                live.append((rel, listing))
            else:
                held.callback(found.release)  # dead owners' locks: held until settled
                dead.append((rel, listing, found))
        # Only now, with every dead owner established, is the store asked.
        committed = {f.path for f in store.committed_files()}
        s = _Settler(storage, committed)
        s.settle(TMP_DIR, top.files, dead=True)  # the flat layout of earlier versions
        for rel, listing, _ in dead:
            s.settle(rel, listing.files, dead=True)
        for rel, listing in live:
            s.settle(rel, listing.files, dead=False, mine=rel == own)
        # Renames durable before a dead writer's directory goes away. A live writer
        # may have finished its own renames and removed its directory meanwhile (it
        # fsynced what it renamed): nothing is left there to make durable.
        for d_rel in s.touched:
            with contextlib.suppress(FileNotFoundError):
                storage.fsync_dir(d_rel)
        for _, _, d in dead:
            d.finish(storage)
    dirs = [TMP_DIR, *(rel for rel, _ in live)]
    missing = [p for p in sorted(committed - s.present) if not _anywhere(storage, p, dirs)]
    return RecoveryReport(
        renamed=s.renamed,
        deleted=s.deleted,
        missing=tuple(missing),
        kept=s.kept,
        dead_writers=len(dead),
        live_writers=sum(1 for rel, _ in live if rel != own),
    )


class _Settler:
    """Applies the rules to one directory's files at a time, counting what it did."""

    def __init__(self, storage: Storage, committed: set[str]) -> None:
        self.storage = storage
        self.committed = committed
        # One listing per table directory instead of one stat per committed file.
        self.present = {
            f"{d}/{name}"
            for d in {posixpath.dirname(p) for p in committed}
            for name in storage.list_names(d)
        }
        self.touched: set[str] = set()
        self.renamed = self.deleted = self.kept = 0

    def settle(self, rel: str, names: Iterable[str], *, dead: bool, mine: bool = False) -> None:
        for name in names:
            final = final_path(name)
            if final is None:
                continue  # the marker, or not ours
            tmp = f"{rel}/{name}"
            if final in self.committed and final not in self.present:
                final_dir = posixpath.dirname(final)
                if final_dir not in self.touched:
                    self.storage.makedirs(final_dir)
                    self.touched.add(final_dir)
                if self.storage.move_committed(tmp, final):
                    self.renamed += 1
                self.present.add(final)
                self.touched.add(rel)
            elif not dead:
                # A live writer's: its open batch, or a committed file its
                # owner is moving right now (a copy that is already in place).
                self.kept += final not in self.committed and not mine
            else:
                with contextlib.suppress(FileNotFoundError):  # settled by a concurrent recovery
                    self.storage.delete(tmp)
                self.deleted += 1
                self.touched.add(rel)


def _anywhere(storage: Storage, final: str, tmp_dirs: list[str]) -> bool:
    """Whether a committed file not seen by the listings exists after all: its owner
    committed and renamed it while recovery ran (rare; looked up one by one)."""
    if storage.exists(final):
        return True
    name = tmp_name(final)
    return any(storage.exists(f"{d}/{name}") for d in tmp_dirs)
