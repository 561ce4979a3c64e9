"""Which writers are alive: whose open batch recovery must leave alone.

Where it sits: every `DatasetWriter` holds a `WriterDir` (its own
`OUT/_state/tmp/<writer>/`) from construction to `close()`; `sinks.recovery`
asks `claim_dead` about every other writer's directory before it deletes
anything in it. Several processes (`--workers N`) or machines (`--queue
postgresql://...`) may write one dataset, and any of them may run recovery.

Two rules (`SinkConfig.liveness`):

lock -- the default on a local filesystem. A writer holds an exclusive
    `flock` on `<dir>/.lock` for its lifetime; the kernel drops it when the
    process dies, however it dies. A directory whose lock recovery can take
    (non-blocking) has no live owner, and recovery keeps holding the lock
    while it settles the directory. A writer's directory appears under its
    final name only with its lock already held: it is made as
    `.new-<writer>-<n>`, the lock file created and flocked inside it, and then
    renamed into place. So there is no moment at which a live writer's
    directory lacks a held lock (before this, a recovery that listed a brand-new
    directory before its `.lock` existed judged it dead by the age rule, and
    removed the lock file and directory under the writer: its first part file
    then failed with FileNotFoundError). A directory without a `.lock` (one
    whose owner released it, or that another recovery is finishing) is judged
    by the age rule, where an empty directory counts by its own age; staging
    directories left by a writer that died while creating one are removed
    once their lock can be taken.

age -- the rule on object stores (pyarrow.fs S3, GCS: no locks), or forced
    with `liveness="age"` (e.g. a filesystem shared by several machines
    whose flock cannot be trusted). A writer is dead when every file in its
    directory is older than `stale_after` (default one hour). A live writer
    keeps its `.lock` young: a daemon thread rewrites it every
    `stale_after / 4`. If that heartbeat has not succeeded for
    `stale_after / 2` (storage outage, process frozen), the writer's next
    commit is refused with `BatchRefused` before the store is asked, because
    its directory may have been judged dead and emptied; the engine then
    discards the batch. "Now" is the modification time of the recovering
    writer's freshly rewritten marker, i.e. the storage's own clock, so clock
    skew between machines does not matter.

    On object stores a part still being written is an unfinished multipart
    upload and invisible to listings: a dead writer's open parts are never
    seen by recovery. A bucket lifecycle rule (AbortIncompleteMultipartUpload)
    reclaims them.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import os
import threading
import time
from collections.abc import Mapping
from typing import Literal

from bsky_backfill.errors import BatchRefused
from bsky_backfill.sinks.storage import (
    LOCK_NAME,
    STAGING_PREFIX,
    TMP_DIR,
    Storage,
    writer_dir,
)

log = logging.getLogger("bsky_backfill.sinks")

Rule = Literal["lock", "age"]
Liveness = Literal["auto", "lock", "age"]


def pick_rule(storage: Storage, liveness: Liveness) -> Rule:
    """`SinkConfig.liveness` ("auto", "lock" or "age") for this storage."""
    if liveness == "age" or (liveness == "auto" and not storage.local):
        return "age"
    if liveness in ("auto", "lock") and storage.local:
        return "lock"
    raise ValueError(f"liveness {liveness!r} needs a local filesystem or is unknown")


class WriterDir:
    """A live writer's tmp directory and the proof that its owner is alive."""

    def __init__(self, storage: Storage, writer: str, rule: Rule, stale_after: float) -> None:
        self.storage = storage
        self.rel = writer_dir(writer)
        self.writer = writer
        self.marker = f"{self.rel}/{LOCK_NAME}"
        self.rule: Rule = rule
        self.stale_after = stale_after
        self._fd: int | None = None
        self._beat_ok = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._create()
        if rule == "age":
            self._thread = threading.Thread(target=self._beat_loop, name="sink-heartbeat")
            self._thread.daemon = True  # a process that exits stops beating: that is the point
            self._thread.start()

    def _create(self) -> None:
        """Publish this writer's directory with its liveness already proven.

        Object stores have no directories: the marker's first write makes the
        prefix appear, with a fresh time. Locally the directory is built under a
        staging name (lock file created and flocked, or the marker written for
        the age rule) and renamed into place, so recovery never sees it
        without a held lock or a young marker."""
        if not self.storage.local:
            self.beat()
            return
        for attempt in range(100):
            staging = f"{TMP_DIR}/{STAGING_PREFIX}{self.writer}-{attempt}"
            self.storage.makedirs(staging)
            fd = self._lock_new(f"{staging}/{LOCK_NAME}")
            if fd is None:
                continue  # a recovery is removing this staging dir: take another name
            try:
                os.rename(self.storage.abs(staging), self.storage.abs(self.rel))
                # The lock file that is now linked at the marker path is ours.
                if os.fstat(fd).st_ino == os.stat(self.storage.abs(self.marker)).st_ino:
                    self._fd = fd
                    self.storage.fsync_dir(TMP_DIR)
                    self._beat_ok = time.monotonic()
                    return
            except OSError:
                pass  # the staging dir went away (or its lock did): try again
            os.close(fd)
            time.sleep(0.01)
        raise RuntimeError(f"could not create the writer directory {self.rel}")

    def _lock_new(self, rel: str) -> int | None:
        """Create and flock a lock file; None if a recovery holds it (or removed it)."""
        path = self.storage.abs(rel)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                if self.rule == "age":
                    os.utime(path)  # young from its first moment
                return fd
        except OSError:  # BlockingIOError, or the file was unlinked meanwhile
            pass
        os.close(fd)
        return None

    # -- liveness ----------------------------------------------------------------------

    def beat(self) -> None:
        """Rewrite the marker (age rule: what keeps this writer's directory alive)."""
        started = time.monotonic()  # the marker's new time is at least this late
        try:
            try:
                self.storage.touch(self.marker)
            except FileNotFoundError:
                # Judged dead while the heartbeat lapsed and removed: come back.
                self.storage.makedirs(self.rel)
                self.storage.touch(self.marker)
        except Exception as e:  # a failed beat is retried; check_alive() counts the lapse
            log.warning("sink heartbeat failed for %s: %s", self.rel, e)
            return
        self._beat_ok = started

    def _beat_loop(self) -> None:
        while not self._stop.wait(self.stale_after / 4):
            self.beat()

    def check_alive(self) -> None:
        """Refuse to commit when others may already have judged this writer dead."""
        if self.rule != "age":
            return  # the kernel holds the lock for as long as the process lives
        lapsed = time.monotonic() - self._beat_ok
        if lapsed > self.stale_after / 2:
            raise BatchRefused(
                f"the sink heartbeat of {self.rel} lapsed {lapsed:.0f}s ago; its tmp"
                " files may have been cleaned up as a dead writer's, so the batch is refused"
            )

    def now(self) -> dt.datetime:
        """The storage's clock: the time of this writer's freshly rewritten marker."""
        self.beat()
        return self.storage.mtime(self.marker) or dt.datetime.now(dt.UTC)

    def release(self) -> None:
        """End of the writer: stop beating, drop the lock, remove the dir if nothing is left.

        Anything left (an uncommitted batch, committed files whose rename failed)
        stays with the marker, for recovery: the released lock (or, later, the
        marker's age) tells it the owner is gone."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        listing = self.storage.list_dir(self.rel)
        if set(listing.files) <= {LOCK_NAME} and not listing.dirs:
            # Unlinked while still locked, so no one mistakes it for a dead dir to settle.
            with contextlib.suppress(FileNotFoundError):
                self.storage.delete(self.marker)
            self._close_fd()
            self.storage.remove_dir_if_empty(self.rel)
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class DeadDir:
    """Another writer's directory found dead; recovery settles it, then `finish()`es it."""

    def __init__(self, rel: str, fd: int | None) -> None:
        self.rel = rel
        self._fd = fd  # the dead owner's lock, held by recovery until finish()

    def finish(self, storage: Storage) -> bool:
        """Remove the marker and the directory once its tmp files are settled.
        False if something stays (files that are not ours)."""
        with contextlib.suppress(FileNotFoundError):
            storage.delete(f"{self.rel}/{LOCK_NAME}")
        self.release()
        return storage.remove_dir_if_empty(self.rel)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def claim_dead(
    storage: Storage,
    rel: str,
    files: Mapping[str, dt.datetime | None],
    *,
    rule: Rule,
    stale_after: float,
    now: dt.datetime,
) -> DeadDir | None:
    """A `DeadDir` if the writer owning `rel` is gone (see the module docstring), else None."""
    if rule == "lock":
        try:
            fd = os.open(storage.abs(f"{rel}/{LOCK_NAME}"), os.O_RDWR)
        except FileNotFoundError:
            fd = None  # no lock to ask: the age rule decides
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # held by its live owner (or no locks here: assume alive)
                os.close(fd)
                return None
            return DeadDir(rel, fd)
    cutoff = now - dt.timedelta(seconds=stale_after)
    times = list(files.values())
    if not times:
        if not storage.local:
            # An object store lists a writer's prefix only once its marker exists:
            # an empty one is a leftover "directory" object, nobody's.
            return DeadDir(rel, None)
        # Nothing inside to date it (a directory being released, or left empty by
        # a crash): its own age decides. Never "all of nothing is old".
        times = [storage.dir_mtime(rel)]
    # An unknown time counts as young: when in doubt, the writer is alive.
    if all(t is not None and t < cutoff for t in times):
        return DeadDir(rel, None)
    return None


def settle_staging(storage: Storage, rel: str, *, stale_after: float, now: dt.datetime) -> bool:
    """Remove a staging directory (`.new-<writer>-<n>`) whose creator is gone: its
    lock can be taken, or it has no lock and is older than `stale_after`. True if
    it was removed."""
    marker = f"{rel}/{LOCK_NAME}"
    try:
        fd: int | None = os.open(storage.abs(marker), os.O_RDWR)
    except FileNotFoundError:
        fd = None
    if fd is None:
        born = storage.dir_mtime(rel)
        if born is None or born >= now - dt.timedelta(seconds=stale_after):
            return False  # being created right now, most likely
        return storage.remove_dir_if_empty(rel)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return False  # its creator holds it: about to be renamed into place
    dead = DeadDir(rel, fd)
    return dead.finish(storage)
