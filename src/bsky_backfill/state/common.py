"""What the SQL state stores share: rows to `RepoTask` and `StatusReport`, a commit's rows.

Where it sits: under `state.sqlite` and `state.postgres` (with
`state.postgres_ledger`), which keep only their SQL dialect, connections and
locking. The meaning of the rows lives here once: which columns make a claimed
task, how per-host counts add up in `status`, and what a commit writes (files,
repo states, key indexes, dead-letter, deletion and supersession counts,
cursors), listed in `did` order so every backend takes row locks in one order.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bsky_backfill.models import DeadLetter
from bsky_backfill.state.base import (
    CommittedFile,
    FailedRepo,
    HostPause,
    HostStatus,
    RepoDone,
    RepoFailed,
    RepoState,
    RepoTask,
    StatusReport,
)

_TASK_COLUMNS = (
    "did", "pds", "host", "signing_key", "attempts", "refresh", "rev", "first_failed_at",
    "handle", "handle_verified",
)  # fmt: skip


def task_columns(table: str = "") -> str:
    """The repos columns `task` reads, in its order (a claim's RETURNING list);
    `table`: the alias to qualify them with."""
    return ", ".join(f"{table}.{c}" if table else c for c in _TASK_COLUMNS)


def task(row: Sequence[Any], time_of: Callable[[Any], dt.datetime]) -> RepoTask:
    """A claimed repo's row (`task_columns()`) as a `RepoTask`; `time_of` reads the
    backend's stored time (SQLite microseconds, PostgreSQL timestamptz)."""
    refresh = bool(row[5])
    return RepoTask(
        did=row[0],
        pds=row[1],
        host=row[2],
        signing_key=row[3],
        attempts=int(row[4]),
        refresh=refresh,
        since=row[6] if refresh else None,
        failing_since=None if row[7] is None else time_of(row[7]),
        handle=row[8],
        handle_verified=bool(row[9]),
    )


def keep_verified(handle: str, verified: str, row: str) -> str:
    """SQL for the new `handle_verified` of repos row `row` given a `handle` and whether
    it was `verified` (SQL expressions: columns of `excluded`, parameters).

    A handle verified once stays verified while the document still names it (the
    same DID listed by handle and as a DID: whichever resolves last must not undo it)."""
    return f"{verified} OR coalesce({row}.handle = {handle} AND {row}.handle_verified, false)"


# -- status ------------------------------------------------------------------------------
def view_counts(
    by_collection: Iterable[tuple[str, int]], deletions: Iterable[tuple[str, str, int]]
) -> tuple[dict[str, int], dict[str, int], dict[str, int]]:
    """`StatusReport`'s record counts from the rows committed per collection and the
    `_deletions` rows per (collection, reason): (current view, deleted, updated)."""
    records = {str(k): int(v) for k, v in by_collection}
    deleted: dict[str, int] = {}
    updated: dict[str, int] = {}
    for collection, reason, n in deletions:
        into = deleted if reason == "deleted" else updated
        into[collection] = into.get(collection, 0) + int(n)
        if collection in records:
            records[collection] -= int(n)
    return records, deleted, updated


def host_statuses(rows: Iterable[tuple[str, str, int]]) -> list[HostStatus]:
    """(host, state, repos) rows -> per-host totals, the biggest hosts first."""
    hosts: dict[str, HostStatus] = {}
    for host, state, n in rows:
        h = hosts.setdefault(host, HostStatus(host=host))
        h.total += n
        if state == RepoState.DONE:
            h.done += n
        elif state == RepoState.FAILED:
            h.failed += n
        else:  # pending or in_progress: not finished yet
            h.pending += n
    return sorted(hosts.values(), key=lambda h: (-h.total, h.host))


@dataclass(frozen=True, slots=True)
class StatusRows:
    """What a backend reads for `status()`, from one snapshot."""

    states: Mapping[str, int]
    """Repos per state."""
    hosts: Iterable[tuple[str, str, int]]
    """(host, state, repos) of resolved repos."""
    files: Iterable[tuple[str, int]]
    """(collection, rows committed) of the record tables (not `_`-prefixed ones)."""
    deletions: Iterable[tuple[str, str, int]]
    """(collection, reason, rows) of `_deletions`."""
    dead_letters: Iterable[tuple[str, int]]
    """(code, dead letters that stand)."""
    failed: Iterable[tuple[str | None, int]]
    """(error code, repos failed)."""
    superseded: Iterable[tuple[str, int]]
    """(code, whole-repo dead letters superseded)."""
    pauses: list[HostPause]
    interrupted: int = 0
    """In progress under a claimer known to be gone (PostgreSQL: an expired lease)."""


def status_report(rows: StatusRows) -> StatusReport:
    """`status()`'s report from the rows a backend read."""
    states = {RepoState(s): int(n) for s, n in rows.states.items()}
    in_progress = states.get(RepoState.IN_PROGRESS, 0)
    records, deleted, updated = view_counts(rows.files, rows.deletions)
    return StatusReport(
        total=sum(states.values()),
        done=states.get(RepoState.DONE, 0),
        failed=states.get(RepoState.FAILED, 0),
        pending=states.get(RepoState.PENDING, 0),
        in_progress=in_progress,
        records_by_collection=records,
        deleted_by_collection=deleted,
        updated_by_collection=updated,
        dead_letters_by_code={str(k): int(v) for k, v in rows.dead_letters if v},
        hosts=host_statuses(rows.hosts),
        interrupted=min(rows.interrupted, in_progress),
        failed_by_code={str(k or "?"): int(v) for k, v in rows.failed},
        superseded_by_code={str(k): int(v) for k, v in rows.superseded},
        paused_hosts=rows.pauses,
    )


# -- a commit --------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CommitRows:
    """One `StateStore.commit` as the rows each of its statements writes, sorted
    (by `did` for repos: two commits lock repo rows in the same order)."""

    files: list[tuple[str, str, int]]
    """(path, collection, rows) of the committed files."""
    done: list[tuple[str, str | None, int, int | None]]
    """(did, rev, records, CAR bytes) of the repos landed: upserted as done, errors
    cleared (a size of None keeps the stored one)."""
    keys: list[tuple[str, bytes]]
    """(did, key index) stored with them."""
    unkeyed: list[str]
    """DIDs landed without a key index (list mode): a stale one is dropped."""
    superseded: list[tuple[int, str, str]]
    """(dead letters, stage, code) a refresh superseded: taken off the counts."""
    deletions: list[tuple[str, str, int]]
    """(collection, reason, rows) of `_deletions` rows: added to the counts."""
    failed: list[tuple[str, str, str | None, str]]
    """(did, code, stage or None, message) of repos dead-lettered whole."""
    dead_letters: list[tuple[str, str, int]]
    """(stage, code, dead letters) landed: added to the counts."""
    cursors: list[tuple[str, str]]
    """(source, cursor) set with the files whose progress they hold."""
    cursors_dropped: list[str]
    """Sources whose cursor goes (its work is complete)."""

    @classmethod
    def of(
        cls,
        files: Sequence[CommittedFile],
        done: Sequence[RepoDone],
        failed: Sequence[RepoFailed],
        dead_letters: Sequence[DeadLetter],
        cursors: Sequence[tuple[str, str | None]],
    ) -> CommitRows:
        landed = sorted(done, key=lambda d: d.did)
        superseded: collections.Counter[tuple[str, str]] = collections.Counter()
        deletions: collections.Counter[tuple[str, str]] = collections.Counter()
        for d in landed:
            for stage, code, n in d.superseded:
                superseded[(stage, code)] += n
            for collection, reason, n in d.deletions:
                deletions[(collection, reason)] += n
        letters = collections.Counter((d.stage, d.error) for d in dead_letters)
        return cls(
            files=[(f.path, f.collection, f.rows) for f in files],
            done=[(d.did, d.rev, d.records, d.car_bytes) for d in landed],
            keys=[(d.did, d.keys) for d in landed if d.keys is not None],
            unkeyed=[d.did for d in landed if d.keys is None],
            superseded=[(n, s, c) for (s, c), n in sorted(superseded.items())],
            deletions=[(c, r, n) for (c, r), n in sorted(deletions.items())],
            failed=[
                (f.did, f.code, f.stage or None, f.message)
                for f in sorted(failed, key=lambda f: f.did)
            ],
            dead_letters=[(s, c, n) for (s, c), n in sorted(letters.items())],
            cursors=sorted((k, v) for k, v in cursors if v is not None),
            cursors_dropped=sorted(k for k, v in cursors if v is None),
        )


def reopened_counts(reopened: Iterable[FailedRepo]) -> list[tuple[str, str, int]]:
    """(stage, code, repos) of the failures `reopen_failed` supersedes, sorted: each
    takes one dead letter off its count (a stage of "" is looked up by the backend)."""
    counts = collections.Counter((r.stage, r.code) for r in reopened)
    return [(stage, code, n) for (stage, code), n in sorted(counts.items())]


__all__ = [
    "CommitRows",
    "StatusRows",
    "host_statuses",
    "keep_verified",
    "reopened_counts",
    "status_report",
    "task",
    "task_columns",
    "view_counts",
]
