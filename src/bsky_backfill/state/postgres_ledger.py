"""The PostgreSQL store's ledger statements: what a commit records, what status reads.

Where it sits: helpers of `state.postgres.PostgresStateStore`, run on a
cursor inside its transactions. `record` is the body of `commit()` (after the
lease fence has locked the batch's repos); `report` builds `status()`.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

from bsky_backfill.models import DeadLetter
from bsky_backfill.state.base import (
    CommittedFile,
    FailedRepo,
    HostPause,
    RepoDone,
    RepoFailed,
    StatusReport,
)
from bsky_backfill.state.common import CommitRows, StatusRows, reopened_counts, status_report
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
    rows = CommitRows.of(files, done, failed, dead_letters, cursors)
    # A path committed twice would duplicate rows: the PRIMARY KEY fails the
    # whole transaction instead.
    if rows.files:
        cur.executemany(
            """INSERT INTO files(path, collection, rows, committed_by)
               VALUES (%s, %s, %s, %s)""",
            [(*f, owner) for f in rows.files],
        )
    # Upserts: the files above hold these repos' rows whatever the queue
    # thought, so the ledger says done even for a DID never enqueued. In `did`
    # order, like every multi-row write here, so two commits lock in one order.
    if rows.done:
        cur.executemany(
            """INSERT INTO repos(did, state, rev, records, car_bytes)
               VALUES (%s, 'done', %s, %s, %s)
               ON CONFLICT (did) DO UPDATE SET state = 'done', refresh = false,
                 rev = coalesce(excluded.rev, repos.rev),
                 car_bytes = coalesce(excluded.car_bytes, repos.car_bytes),
                 records = excluded.records, error_code = NULL, last_error = NULL,
                 error_stage = NULL, first_failed_at = NULL,
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()""",
            rows.done,
        )
    # The key index rides in the same transaction as the rows it describes; a
    # repo landed without one (list mode) drops a stale one.
    if rows.keys:
        cur.executemany(
            """INSERT INTO repo_keys(did, keys) VALUES (%s, %s)
               ON CONFLICT (did) DO UPDATE SET keys = excluded.keys""",
            rows.keys,
        )
    if rows.unkeyed:
        cur.execute("DELETE FROM repo_keys WHERE did = ANY(%s)", (rows.unkeyed,))
    if rows.superseded:
        cur.executemany(
            """UPDATE dead_letter_counts SET count = greatest(count - %s, 0)
               WHERE stage = %s AND code = %s""",
            rows.superseded,
        )
    if rows.deletions:
        cur.executemany(
            """INSERT INTO deletion_counts(collection, reason, count) VALUES (%s, %s, %s)
               ON CONFLICT (collection, reason)
               DO UPDATE SET count = deletion_counts.count + excluded.count""",
            rows.deletions,
        )
    if rows.failed:
        cur.executemany(
            """INSERT INTO repos(did, state, error_code, error_stage, last_error)
               VALUES (%s, 'failed', %s, %s, %s)
               ON CONFLICT (did) DO UPDATE SET state = 'failed',
                 error_code = excluded.error_code, error_stage = excluded.error_stage,
                 last_error = excluded.last_error,
                 lease_owner = NULL, lease_expires_at = NULL, updated_at = now()""",
            rows.failed,
        )
    if rows.dead_letters:
        cur.executemany(
            """INSERT INTO dead_letter_counts(stage, code, count) VALUES (%s, %s, %s)
               ON CONFLICT (stage, code) DO UPDATE
               SET count = dead_letter_counts.count + excluded.count""",
            rows.dead_letters,
        )
    # Cursors whose progress these files hold (list mode's page cursors): set
    # or, for None, deleted together with them, never apart.
    if rows.cursors:
        cur.executemany(
            """INSERT INTO cursors(source, cursor) VALUES (%s, %s)
               ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor,
                 updated_at = now()""",
            rows.cursors,
        )
    if rows.cursors_dropped:
        cur.execute("DELETE FROM cursors WHERE source = ANY(%s)", (rows.cursors_dropped,))


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
    failed_by_code = cur.fetchall()
    cur.execute("SELECT code, count(*) FROM superseded GROUP BY code ORDER BY count(*) DESC, code")
    superseded = cur.fetchall()
    paused = pauses(cur)
    cur.execute("SELECT collection, reason, count FROM deletion_counts")
    gone = [(str(c), str(r), int(n)) for c, r, n in cur.fetchall()]
    return status_report(
        StatusRows(
            states={str(s): total for s, (_, total) in counts.items()},
            hosts=[(h, s, n) for s, (by_host, _) in counts.items() for h, n in by_host.items()],
            files=by_collection,
            deletions=gone,
            dead_letters=by_code,
            failed=failed_by_code,
            superseded=superseded,
            pauses=paused,
            interrupted=interrupted,
        )
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
    for stage, code, n in reopened_counts(reopened):
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
