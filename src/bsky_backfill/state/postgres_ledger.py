"""The PostgreSQL store's ledger statements: what a commit records, what status reads.

Where it sits: helpers of `state.postgres.PostgresStateStore`, run on a
cursor inside its transactions. `record` is the body of `commit()` (after the
lease fence has locked the batch's repos); `report` builds `status()`.
"""

from __future__ import annotations

import collections
import datetime as dt
from collections.abc import Sequence

from bsky_backfill.models import DeadLetter
from bsky_backfill.state.base import (
    CommittedFile,
    FailedRepo,
    HostPause,
    HostStatus,
    RepoDone,
    RepoFailed,
    RepoState,
    StatusReport,
    view_counts,
)
from bsky_backfill.state.errors import FilesChangedError
from bsky_backfill.state.postgres_upkeep import Cursor, state_counts


def replace(cur: Cursor, owner: str, old: Sequence[str], new: Sequence[CommittedFile]) -> None:
    """A compaction's swap (`StateStore.replace_files`): `old` out of `files` and into
    `retired_files`, `new` in; `FilesChangedError` (rolled back) if any of `old` is gone."""
    paths = sorted(old)
    cur.execute(
        """WITH gone AS (DELETE FROM files WHERE path = ANY(%s) RETURNING path, collection)
           INSERT INTO retired_files(path, collection) SELECT path, collection FROM gone
           RETURNING path""",
        (paths,),
    )
    moved = {p for (p,) in cur.fetchall()}
    missing = [p for p in paths if p not in moved]
    if missing:
        raise FilesChangedError(
            f"{len(missing)} files to replace are no longer committed, e.g. {missing[0]}",
            missing,
        )
    if new:
        cur.executemany(
            """INSERT INTO files(path, collection, rows, committed_by)
               VALUES (%s, %s, %s, %s)""",
            [(f.path, f.collection, f.rows, owner) for f in new],
        )


def record(
    cur: Cursor,
    owner: str,
    files: Sequence[CommittedFile],
    done: Sequence[RepoDone],
    failed: Sequence[RepoFailed],
    dead_letters: Sequence[DeadLetter],
    cursors: Sequence[tuple[str, str | None]],
) -> None:
    """Files, repo states, dead-letter counts and cursors of one commit (one transaction)."""
    # A path committed twice would duplicate rows: the PRIMARY KEY fails the
    # whole transaction instead.
    if files:
        cur.executemany(
            """INSERT INTO files(path, collection, rows, committed_by)
               VALUES (%s, %s, %s, %s)""",
            [(f.path, f.collection, f.rows, owner) for f in files],
        )
    # Upserts: the files above hold these repos' rows whatever the queue
    # thought, so the ledger says done even for a DID never enqueued. Sorted,
    # like every multi-row write here, so two commits lock in the same order.
    if done:
        cur.executemany(
            """INSERT INTO repos(did, state, rev, records) VALUES (%s, 'done', %s, %s)
               ON CONFLICT (did) DO UPDATE SET state = 'done', refresh = false,
                 rev = coalesce(excluded.rev, repos.rev),
                 records = excluded.records, error_code = NULL, last_error = NULL,
                 error_stage = NULL, first_failed_at = NULL,
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()""",
            [(d.did, d.rev, d.records) for d in sorted(done, key=lambda d: d.did)],
        )
    # The key index rides in the same transaction as the rows it describes; a
    # repo landed without one (list mode) drops a stale one.
    indexed = sorted((d for d in done if d.keys is not None), key=lambda d: d.did)
    if indexed:
        cur.executemany(
            """INSERT INTO repo_keys(did, keys) VALUES (%s, %s)
               ON CONFLICT (did) DO UPDATE SET keys = excluded.keys""",
            [(d.did, d.keys) for d in indexed],
        )
    unindexed = sorted(d.did for d in done if d.keys is None)
    if unindexed:
        cur.execute("DELETE FROM repo_keys WHERE did = ANY(%s)", (unindexed,))
    dropped: collections.Counter[tuple[str, str]] = collections.Counter()
    for d in done:
        for stage, code, n in d.superseded:
            dropped[(stage, code)] += n
    if dropped:
        cur.executemany(
            """UPDATE dead_letter_counts SET count = greatest(count - %s, 0)
               WHERE stage = %s AND code = %s""",
            [(n, stage, code) for (stage, code), n in sorted(dropped.items())],
        )
    gone: collections.Counter[tuple[str, str]] = collections.Counter()
    for d in done:
        for collection, reason, n in d.deletions:
            gone[(collection, reason)] += n
    if gone:
        cur.executemany(
            """INSERT INTO deletion_counts(collection, reason, count) VALUES (%s, %s, %s)
               ON CONFLICT (collection, reason)
               DO UPDATE SET count = deletion_counts.count + excluded.count""",
            [(c, r, n) for (c, r), n in sorted(gone.items())],
        )
    if failed:
        cur.executemany(
            """INSERT INTO repos(did, state, error_code, error_stage, last_error)
               VALUES (%s, 'failed', %s, %s, %s)
               ON CONFLICT (did) DO UPDATE SET state = 'failed',
                 error_code = excluded.error_code, error_stage = excluded.error_stage,
                 last_error = excluded.last_error,
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()""",
            [
                (f.did, f.code, f.stage or None, f.message)
                for f in sorted(failed, key=lambda f: f.did)
            ],
        )
    letters = sorted(collections.Counter((d.stage, d.error) for d in dead_letters).items())
    if letters:
        cur.executemany(
            """INSERT INTO dead_letter_counts(stage, code, count) VALUES (%s, %s, %s)
               ON CONFLICT (stage, code) DO UPDATE
               SET count = dead_letter_counts.count + excluded.count""",
            [(stage, code, n) for (stage, code), n in letters],
        )
    # Cursors whose progress these files hold (list mode's page cursors): set
    # or, for None, deleted together with them, never apart.
    upserts = sorted((k, v) for k, v in cursors if v is not None)
    if upserts:
        cur.executemany(
            """INSERT INTO cursors(source, cursor) VALUES (%s, %s)
               ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor,
                 updated_at = now()""",
            upserts,
        )
    deletes = sorted((k,) for k, v in cursors if v is None)
    if deletes:
        cur.executemany("DELETE FROM cursors WHERE source = %s", deletes)


def report(cur: Cursor) -> StatusReport:
    """The whole backfill's numbers for `status`, from one snapshot (call first in its txn)."""
    cur.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    counts = state_counts(cur)
    # Collections starting with "_" are the sink's own tables (_deadletters).
    cur.execute(
        r"""SELECT collection, sum(rows) FROM files
            WHERE collection NOT LIKE '\_%' GROUP BY collection ORDER BY collection"""
    )
    by_collection = cur.fetchall()
    cur.execute(
        """SELECT code, sum(count) FROM dead_letter_counts
           GROUP BY code ORDER BY sum(count) DESC, code"""
    )
    by_code = cur.fetchall()
    hosts: dict[str, HostStatus] = {}
    for state, (by_host, _) in counts.items():
        for host, n in by_host.items():
            h = hosts.setdefault(host, HostStatus(host=host))
            h.total += n
            if state == RepoState.DONE:
                h.done += n
            elif state == RepoState.FAILED:
                h.failed += n
            else:  # pending or in_progress: not finished yet
                h.pending += n
    total = {s: t for s, (_, t) in counts.items()}
    cur.execute(
        """SELECT count(*) FROM repos
           WHERE state = 'in_progress' AND lease_expires_at < clock_timestamp()"""
    )
    row = cur.fetchone()
    interrupted = int(row[0]) if row else 0
    cur.execute(
        """SELECT coalesce(error_code, '?'), count(*) FROM repos WHERE state = 'failed'
           GROUP BY 1 ORDER BY count(*) DESC, 1"""
    )
    failed_by_code = {str(k): int(v) for k, v in cur.fetchall()}
    cur.execute("SELECT code, count(*) FROM superseded GROUP BY code ORDER BY count(*) DESC, code")
    superseded = {str(k): int(v) for k, v in cur.fetchall()}
    paused = pauses(cur)
    cur.execute("SELECT collection, reason, count FROM deletion_counts")
    gone = [(str(c), str(r), int(n)) for c, r, n in cur.fetchall()]
    view = view_counts(by_collection, gone)
    return StatusReport(
        total=sum(total.values()),
        done=total[RepoState.DONE],
        failed=total[RepoState.FAILED],
        pending=total[RepoState.PENDING],
        in_progress=total[RepoState.IN_PROGRESS],
        records_by_collection=view[0],
        deleted_by_collection=view[1],
        updated_by_collection=view[2],
        dead_letters_by_code={k: int(v) for k, v in by_code if v},
        hosts=sorted(hosts.values(), key=lambda h: (-h.total, h.host)),
        interrupted=min(interrupted, total[RepoState.IN_PROGRESS]),
        failed_by_code=failed_by_code,
        superseded_by_code=superseded,
        paused_hosts=paused,
    )


def pauses(cur: Cursor) -> list[HostPause]:
    """The host_pauses table as `HostPause`s."""
    cur.execute("SELECT host, until, reason FROM host_pauses ORDER BY host")
    return [
        HostPause(host=h, until=None if u is None else u.astimezone(dt.UTC), reason=r)
        for h, u, r in cur.fetchall()
    ]


def reopen(
    cur: Cursor,
    owner: str,
    repos: Sequence[FailedRepo],
    at: dt.datetime,
    file: CommittedFile | None,
) -> int:
    """`reopen_failed`'s body: one transaction (see `StateStore.reopen_failed`)."""
    if file is not None:
        cur.execute(
            """INSERT INTO files(path, collection, rows, committed_by)
               VALUES (%s, %s, %s, %s)""",
            (file.path, file.collection, file.rows, owner),
        )
    wanted = sorted(repos, key=lambda r: r.did)
    if not wanted:
        return 0
    # As new, but a refresh stays a refresh: its rows from before are in the
    # dataset, and only what changed since `rev` may land.
    cur.execute(
        """UPDATE repos SET state = 'pending', attempts = 0,
             next_attempt_at = '1970-01-01 00:00:00+00', first_failed_at = NULL,
             pds = NULL, host = NULL, signing_key = NULL, error_code = NULL,
             error_stage = NULL, last_error = NULL, lease_owner = NULL,
             lease_expires_at = NULL, updated_at = now()
           WHERE did = ANY(%s::text[]) AND state = 'failed'
           RETURNING did""",
        ([r.did for r in wanted],),
    )
    back = {row[0] for row in cur.fetchall()}
    reopened = [r for r in wanted if r.did in back]
    counts = collections.Counter((r.stage, r.code) for r in reopened)
    for (stage, code), n in sorted(counts.items()):
        if not stage:  # failed before stages were kept: the likeliest one
            cur.execute(
                """SELECT stage FROM dead_letter_counts WHERE code = %s AND count > 0
                   ORDER BY count DESC LIMIT 1""",
                (code,),
            )
            row = cur.fetchone()
            stage = str(row[0]) if row else ""
        cur.execute(
            """UPDATE dead_letter_counts SET count = greatest(count - %s, 0)
               WHERE stage = %s AND code = %s""",
            (n, stage, code),
        )
    if reopened:
        cur.executemany(
            "INSERT INTO superseded(did, stage, code, superseded_at) VALUES (%s, %s, %s, %s)",
            [(r.did, r.stage, r.code, at) for r in reopened],
        )
    return len(reopened)
