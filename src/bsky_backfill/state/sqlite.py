"""SQLite state store: the default durable queue and ledger (`OUT/_state/state.sqlite`).

Where it sits: implements `state.base.StateStore` for one machine. The engine
enqueues DIDs, stores identities, claims repos per PDS host and, through
`sinks.parquet.DatasetWriter.commit`, records committed files together with the
repos they complete in one transaction.

Concurrency: one connection, shared by the engine's asyncio thread and the
threads it hands work to (a big repo's commit runs on the extraction thread
while the loop goes on claiming); every call is one short transaction and holds
the store's lock for its length, so calls from two threads never overlap on the
connection (sqlite3 reports overlapping use as odd errors such as "not an
error"). Other processes may open
the same file (status command, workers): WAL lets readers run beside the
writer, `busy_timeout` makes writers queue up instead of failing.

Storage: times are INTEGER microseconds since the Unix epoch (UTC); the API
speaks aware UTC datetimes. Repo counts per state (`repo_counts`) and per host
and state (`host_counts`) are kept by triggers, so progress polling and
`status` cost O(hosts), not a scan of tens of millions of repos.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import itertools
import os
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from bsky_backfill.models import DeadLetter
from bsky_backfill.state.base import (
    CommittedFile,
    FailedRepo,
    HostPause,
    Identity,
    RepoDone,
    RepoFailed,
    RepoState,
    RepoTask,
    StatusReport,
)
from bsky_backfill.state.common import (
    CommitRows,
    StatusRows,
    keep_verified,
    reopened_counts,
    status_report,
    task,
    task_columns,
)
from bsky_backfill.state.errors import FilesChangedError, StateStoreError
from bsky_backfill.state.sqlite_schema import MIGRATIONS, SCHEMA_VERSION

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICRO = dt.timedelta(microseconds=1)
# Rows per enqueue transaction: big enough to amortise the commit, small enough
# that a long enqueue never holds the write lock for more than a blink.
_CHUNK = 20_000


def _to_us(t: dt.datetime) -> int:
    if t.tzinfo is None:
        raise ValueError(f"naive datetime {t!r}: the state store wants aware UTC datetimes")
    # Integer arithmetic: float timestamps lose microseconds in this century.
    return (t - _EPOCH) // _MICRO


def _from_us(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=us)


def _now_us() -> int:
    return _to_us(dt.datetime.now(dt.UTC))


def _pause(host: str, until: int | None, reason: str) -> HostPause:
    return HostPause(host=host, until=None if until is None else _from_us(until), reason=reason)


@contextlib.contextmanager
def _mapped() -> Iterator[None]:
    """The one boundary where sqlite3 errors become `StateStoreError`."""
    try:
        yield
    except sqlite3.Error as e:
        raise StateStoreError(f"state store: {e}") from e


_SET_IDENTITY = f"""UPDATE repos SET pds = :pds, host = :host, signing_key = :key,
    handle = :handle, handle_verified = {keep_verified(":handle", ":verified", "repos")},
    updated_at = :now
  WHERE did = :did"""


# A claim's two picks, each along its own partial index in the order it wants, so
# each stops after `limit` due rows (it skips only the few repos backing off):
# repos of known size (repos_claim_sized: landed before, a refresh or a retry),
# biggest first, then those of unknown size (repos_claim) in due order.
_CLAIM = (
    """SELECT did FROM repos INDEXED BY repos_claim_sized
       WHERE state = 'pending' AND car_bytes IS NOT NULL AND host = ? AND next_attempt_at <= ?
       ORDER BY car_bytes DESC, next_attempt_at LIMIT ?""",
    """SELECT did FROM repos INDEXED BY repos_claim
       WHERE state = 'pending' AND host = ? AND next_attempt_at <= ? AND car_bytes IS NULL
       ORDER BY next_attempt_at LIMIT ?""",
)


def _identity_params(i: Identity, now: int) -> dict[str, object]:
    return {
        "pds": i.pds, "host": i.host, "key": i.signing_key, "handle": i.handle,
        "verified": i.handle_verified, "now": now, "did": i.did,
    }  # fmt: skip


class SqliteStateStore:
    """`StateStore` on one SQLite file; see the module docstring for threading."""

    def __init__(self, path: str | os.PathLike[str], *, busy_timeout_s: float = 30.0) -> None:
        if sqlite3.sqlite_version_info < (3, 35, 0):
            # claim() is a single UPDATE ... RETURNING, which needs 3.35.
            raise StateStoreError(f"SQLite >= 3.35 required, found {sqlite3.sqlite_version}")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        with self._locked():
            # isolation_level=None: we issue BEGIN/COMMIT ourselves, so every
            # transaction is exactly as long as one method.
            self._conn = sqlite3.connect(
                self.path, isolation_level=None, check_same_thread=False, timeout=busy_timeout_s
            )
            try:
                self._configure(busy_timeout_s)
                self._migrate()
            except BaseException:
                self._conn.close()
                raise

    # -- setup ---------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Hold the connection for one call (see the module docstring), mapping errors."""
        with self._lock, _mapped():
            yield

    def _configure(self, busy_timeout_s: float) -> None:
        c = self._conn
        c.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        c.execute("PRAGMA journal_mode = WAL")
        # NORMAL in WAL mode never corrupts and survives a killed process (the
        # WAL is in the OS page cache); on power loss it may drop the newest
        # transactions, always as a suffix (WAL frames are checksum-chained).
        # Losing a claim, retry or identity only means redoing work. The one
        # transaction whose loss would NOT be harmless is commit(): the sink
        # renames files right after it, and a rename that outlives a lost
        # commit record would land rows twice. commit() therefore switches to
        # FULL (fsync the WAL before COMMIT returns) for its own transaction.
        c.execute("PRAGMA synchronous = NORMAL")
        c.execute("PRAGMA foreign_keys = OFF")
        c.execute("PRAGMA temp_store = MEMORY")
        c.execute("PRAGMA cache_size = -65536")  # 64 MiB: big enqueues touch many index pages
        c.execute("PRAGMA journal_size_limit = 67108864")  # shrink the WAL after bursts

    def _migrate(self) -> None:
        c = self._conn
        # IMMEDIATE: two processes opening a fresh file at once migrate one after the other.
        c.execute("BEGIN IMMEDIATE")
        try:
            c.execute(
                "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)"
                " WITHOUT ROWID"
            )
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise StateStoreError(
                    f"{self.path}: schema version {current} is newer than this program's "
                    f"{SCHEMA_VERSION}; upgrade bsky-backfill"
                )
            for step in MIGRATIONS[current:]:
                for sql in step:
                    c.execute(sql)
            if current < SCHEMA_VERSION:
                c.execute(
                    "INSERT OR REPLACE INTO meta(key, value) VALUES ('schema_version', ?)",
                    (str(SCHEMA_VERSION),),
                )
            c.commit()
        except BaseException:
            c.rollback()
            raise

    @contextlib.contextmanager
    def _write(self, *, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """One short write transaction; `durable` fsyncs the WAL before returning."""
        c = self._conn
        with self._locked():
            if durable:
                c.execute("PRAGMA synchronous = FULL")
            try:
                # IMMEDIATE takes the write lock up front, so busy_timeout applies
                # here instead of failing later on a read-to-write upgrade.
                c.execute("BEGIN IMMEDIATE")
                try:
                    yield c
                    c.commit()
                except BaseException:
                    c.rollback()
                    raise
            finally:
                if durable:
                    c.execute("PRAGMA synchronous = NORMAL")

    # -- queue -----------------------------------------------------------------

    def enqueue(self, dids: Iterable[str]) -> int:
        now = _now_us()
        new = 0
        it = iter(dids)
        while chunk := list(itertools.islice(it, _CHUNK)):
            with self._write() as c:
                cur = c.executemany(
                    "INSERT OR IGNORE INTO repos(did, updated_at) VALUES (?, ?)",
                    [(d, now) for d in chunk],
                )
                # rowcount sums sqlite3_changes(), which leaves out trigger work.
                new += cur.rowcount
        return new

    def enqueue_resolved(self, identities: Iterable[Identity]) -> int:
        now = _now_us()
        new = 0
        it = iter(identities)
        while chunk := list(itertools.islice(it, _CHUNK)):
            with self._write() as c:
                before = self._total(c)
                # A DID seen again (e.g. a later PLC operation) refreshes the
                # identity of a repo not yet claimed; anything further along is kept.
                c.executemany(
                    f"""INSERT INTO repos(did, pds, host, signing_key, handle,
                         handle_verified, updated_at)
                       VALUES (?, ?, ?, ?, ?, ?, ?)
                       ON CONFLICT(did) DO UPDATE SET
                         pds = excluded.pds, host = excluded.host,
                         signing_key = excluded.signing_key, handle = excluded.handle,
                         handle_verified = {
                        keep_verified("excluded.handle", "excluded.handle_verified", "repos")
                    },
                         updated_at = excluded.updated_at
                       WHERE repos.state = 'pending'""",
                    [
                        (i.did, i.pds, i.host, i.signing_key, i.handle, i.handle_verified, now)
                        for i in chunk
                    ],
                )
                new += self._total(c) - before
        return new

    @staticmethod
    def _total(c: sqlite3.Connection) -> int:
        return int(c.execute("SELECT sum(n) FROM repo_counts").fetchone()[0])

    def unresolved(self, limit: int, exclude: Sequence[str] = ()) -> list[str]:
        # Oldest first, and only those due by the wall clock: a DID whose
        # resolution failed transiently waits out its retry_later() backoff
        # (the Protocol passes no `now` here). `exclude` (DIDs being resolved
        # right now) is filtered in Python: over-fetching by its length is
        # cheaper than binding thousands of parameters.
        skip = set(exclude)
        with self._locked():
            rows = self._conn.execute(
                """SELECT did FROM repos
                   WHERE state = 'pending' AND host IS NULL AND next_attempt_at <= ?
                   ORDER BY next_attempt_at, rowid LIMIT ?""",
                (_now_us(), limit + len(skip)),
            ).fetchall()
        return [d for (d,) in rows if d not in skip][:limit]

    def set_identities(self, identities: Sequence[Identity]) -> None:
        now = _now_us()
        with self._write() as c:
            c.executemany(
                _SET_IDENTITY + " AND state = 'pending'",
                [_identity_params(i, now) for i in identities],
            )

    def pending_hosts(self, now: dt.datetime) -> dict[str, int]:
        # due = pending (from host_counts) - not yet due. Counting the due ones
        # directly would scan every pending repo on each scheduler tick; the not
        # yet due ones are only the few backing off, found through repos_due.
        with self._locked():
            rows = self._conn.execute(
                """SELECT h.host, h.n - coalesce(f.n, 0) FROM host_counts AS h
                   LEFT JOIN (
                     SELECT host, count(*) AS n FROM repos INDEXED BY repos_due
                     WHERE state = 'pending' AND host IS NOT NULL AND next_attempt_at > ?
                     GROUP BY host) AS f ON f.host = h.host
                   WHERE h.state = 'pending' AND h.n - coalesce(f.n, 0) > 0""",
                (_to_us(now),),
            ).fetchall()
        return {h: n for h, n in rows}

    def next_due(self) -> dt.datetime | None:
        # All pending repos, resolved or not, so an engine waiting only on a
        # resolution backoff knows when to wake. Two index lookups, no scan.
        # ORDER BY ... LIMIT 1 rather than min(): the index order answers it at
        # once, where min() over `host IS NULL` may walk every unresolved entry.
        with self._locked():
            found = [
                row[0]
                for cond in ("host IS NOT NULL", "host IS NULL")
                for row in self._conn.execute(
                    f"""SELECT next_attempt_at FROM repos WHERE state = 'pending' AND {cond}
                        ORDER BY next_attempt_at LIMIT 1"""
                ).fetchall()
            ]
        return _from_us(min(found)) if found else None

    def claim(self, host: str, limit: int, now: dt.datetime) -> list[RepoTask]:
        now_us = _to_us(now)
        rows: list[tuple[object, ...]] = []
        with self._write() as c:
            # Known sizes first, biggest first, then the rest in due order: two
            # index walks that stop at the limit (see _CLAIM), never a sort of
            # every pending repo. One write transaction: selection and state
            # change cannot interleave with another claimer, so no repo is
            # handed out twice.
            for pick in _CLAIM:
                if len(rows) >= limit:
                    break
                rows += c.execute(
                    f"""UPDATE repos SET state = 'in_progress', updated_at = ?
                       WHERE did IN ({pick}) RETURNING {task_columns()}""",
                    (now_us, host, now_us, limit - len(rows)),
                ).fetchall()
        return [task(r, _from_us) for r in rows]

    def withdraw(self, dids: Sequence[str]) -> list[str]:
        with self._write() as c:
            c.executemany(
                "DELETE FROM repos WHERE did = ? AND state = 'pending'", [(d,) for d in dids]
            )
            kept = {
                d for d in dids if c.execute("SELECT 1 FROM repos WHERE did = ?", (d,)).fetchone()
            }
        return [d for d in dids if d not in kept]

    def mark_refresh(self) -> int:
        with self._write() as c:
            return c.execute(
                """UPDATE repos SET state = 'pending', refresh = 1, attempts = 0,
                     next_attempt_at = 0, updated_at = ? WHERE state = 'done'""",
                (_now_us(),),
            ).rowcount

    def retry_later(
        self, did: str, attempts: int, next_attempt_at: dt.datetime, error: str
    ) -> None:
        due = _to_us(next_attempt_at)
        with self._write() as c:
            # Guarded by state: a late retry must never reopen a finished repo.
            # A failure that counts (attempts grows) starts the time budget if it
            # has not started; a put-back that does not count (a paused host) leaves it.
            now = _now_us()
            c.execute(
                """UPDATE repos SET state = 'pending', next_attempt_at = ?,
                     first_failed_at = CASE WHEN ? > attempts
                       THEN coalesce(first_failed_at, ?) ELSE first_failed_at END,
                     attempts = ?, error_code = NULL, last_error = ?, updated_at = ?
                   WHERE did = ? AND state IN ('pending', 'in_progress')""",
                (due, attempts, now, attempts, error, now, did),
            )

    def recover(self) -> int:
        """`StateStore.recover`: no claimer is recorded, so every in-progress repo is
        taken back (the caller holds the run lock with no worker process alive)."""
        with self._write() as c:
            cur = c.execute(
                """UPDATE repos SET state = 'pending', updated_at = ?
                   WHERE state = 'in_progress'""",
                (_now_us(),),
            )
            return cur.rowcount

    # -- ledger ----------------------------------------------------------------

    def commit(
        self,
        files: Sequence[CommittedFile],
        done: Sequence[RepoDone],
        failed: Sequence[RepoFailed],
        dead_letters: Sequence[DeadLetter],
        cursors: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        now = _now_us()
        rows = CommitRows.of(files, done, failed, dead_letters, cursors)
        with self._write(durable=True) as c:
            # A path committed twice is a bug that would duplicate rows: the
            # PRIMARY KEY makes the whole transaction fail instead.
            c.executemany(
                "INSERT INTO files(path, collection, rows, committed_at) VALUES (?, ?, ?, ?)",
                [(*f, now) for f in rows.files],
            )
            # Upserts: the files above hold these repos' rows whatever the queue
            # thought, so the ledger must say done even for a DID never enqueued.
            c.executemany(
                """INSERT INTO repos(did, state, rev, records, car_bytes, updated_at)
                   VALUES (?, 'done', ?, ?, ?, ?)
                   ON CONFLICT(did) DO UPDATE SET state = 'done', refresh = 0,
                     rev = coalesce(excluded.rev, repos.rev),
                     car_bytes = coalesce(excluded.car_bytes, repos.car_bytes),
                     records = excluded.records, error_code = NULL, last_error = NULL,
                     error_stage = NULL, first_failed_at = NULL,
                     updated_at = excluded.updated_at""",
                [(*d, now) for d in rows.done],
            )
            c.executemany("INSERT OR REPLACE INTO repo_keys(did, keys) VALUES (?, ?)", rows.keys)
            c.executemany("DELETE FROM repo_keys WHERE did = ?", [(d,) for d in rows.unkeyed])
            c.executemany(
                """UPDATE dead_letter_counts SET count = max(0, count - ?)
                   WHERE stage = ? AND code = ?""",
                rows.superseded,
            )
            c.executemany(
                """INSERT INTO deletion_counts(collection, reason, count) VALUES (?, ?, ?)
                   ON CONFLICT(collection, reason) DO UPDATE SET count = count + excluded.count""",
                rows.deletions,
            )
            c.executemany(
                """INSERT INTO repos(did, state, error_code, error_stage, last_error, updated_at)
                   VALUES (?, 'failed', ?, ?, ?, ?)
                   ON CONFLICT(did) DO UPDATE SET state = 'failed',
                     error_code = excluded.error_code, error_stage = excluded.error_stage,
                     last_error = excluded.last_error, updated_at = excluded.updated_at""",
                [(*f, now) for f in rows.failed],
            )
            c.executemany(
                """INSERT INTO dead_letter_counts(stage, code, count) VALUES (?, ?, ?)
                   ON CONFLICT(stage, code) DO UPDATE SET count = count + excluded.count""",
                rows.dead_letters,
            )
            c.executemany(
                "INSERT OR REPLACE INTO cursors(source, cursor, updated_at) VALUES (?, ?, ?)",
                [(*kv, now) for kv in rows.cursors],
            )
            c.executemany(
                "DELETE FROM cursors WHERE source = ?", [(k,) for k in rows.cursors_dropped]
            )

    def committed_files(self) -> list[CommittedFile]:
        with self._locked():
            rows = self._conn.execute("SELECT path, collection, rows FROM files").fetchall()
        return [CommittedFile(path=p, collection=c, rows=n) for p, c, n in rows]

    def replace_files(self, old: Sequence[str], new: Sequence[CommittedFile]) -> None:
        now = _now_us()
        with self._write(durable=True) as c:
            gone = []
            for path in old:
                row = c.execute("SELECT collection FROM files WHERE path = ?", (path,)).fetchone()
                if row is None:
                    gone.append(path)
                    continue
                c.execute("DELETE FROM files WHERE path = ?", (path,))
                c.execute(
                    "INSERT INTO retired_files(path, collection, retired_at) VALUES (?, ?, ?)",
                    (path, row[0], now),
                )
            if gone:
                raise FilesChangedError(
                    f"{len(gone)} files to replace are no longer committed, e.g. {gone[0]}",
                    gone,
                )
            c.executemany(
                "INSERT INTO files(path, collection, rows, committed_at) VALUES (?, ?, ?, ?)",
                [(f.path, f.collection, f.rows, now) for f in new],
            )

    def retired_files(self) -> list[str]:
        with self._locked():
            rows = self._conn.execute("SELECT path FROM retired_files").fetchall()
        return [p for (p,) in rows]

    def forget_retired(self, paths: Sequence[str]) -> None:
        with self._write() as c:
            c.executemany("DELETE FROM retired_files WHERE path = ?", [(p,) for p in paths])

    def counts(self) -> dict[RepoState, int]:
        with self._locked():
            rows = self._conn.execute("SELECT state, n FROM repo_counts").fetchall()
        return {RepoState(s): n for s, n in rows}

    def host_map(self, batch: int = 100_000) -> Iterator[list[tuple[str, str]]]:
        # The lock is taken per batch, never across a yield: the consumer may
        # wait on another thread that needs the store meanwhile.
        last = ""
        while True:
            with self._locked():
                rows = self._conn.execute(
                    "SELECT did, host FROM repos WHERE host IS NOT NULL AND did > ?"
                    " ORDER BY did LIMIT ?",
                    (last, batch),
                ).fetchall()
            if not rows:
                return
            last = rows[-1][0]
            yield rows

    def status(self) -> StatusReport:
        c = self._conn
        with self._locked():
            # One read transaction: all numbers come from the same snapshot.
            c.execute("BEGIN")
            try:
                counts = dict(c.execute("SELECT state, n FROM repo_counts").fetchall())
                # Collections starting with "_" are the sink's own tables
                # (_deadletters); NSIDs never start with "_".
                by_collection = c.execute(
                    r"""SELECT collection, sum(rows) FROM files
                        WHERE collection NOT LIKE '\_%' ESCAPE '\'
                        GROUP BY collection ORDER BY collection"""
                ).fetchall()
                gone = c.execute("SELECT collection, reason, count FROM deletion_counts").fetchall()
                by_code = c.execute(
                    """SELECT code, sum(count) FROM dead_letter_counts
                       GROUP BY code ORDER BY sum(count) DESC, code"""
                ).fetchall()
                by_host = c.execute("SELECT host, state, n FROM host_counts WHERE n > 0").fetchall()
                failed_by_code = c.execute(
                    """SELECT error_code, count(*) FROM repos INDEXED BY repos_failed
                       WHERE state = 'failed' GROUP BY error_code
                       ORDER BY count(*) DESC, error_code"""
                ).fetchall()
                superseded = c.execute(
                    """SELECT code, count(*) FROM superseded GROUP BY code
                       ORDER BY count(*) DESC, code"""
                ).fetchall()
                pauses = c.execute("SELECT host, until, reason FROM host_pauses").fetchall()
            finally:
                c.rollback()
        return status_report(
            StatusRows(
                states=counts,
                hosts=by_host,
                files=by_collection,
                deletions=gone,
                dead_letters=by_code,
                failed=failed_by_code,
                superseded=superseded,
                pauses=[_pause(*row) for row in pauses],
            )
        )

    # -- long runs: failures, supersession, host pauses ---------------------------------

    def failure_of(self, did: str) -> tuple[int, dt.datetime | None]:
        with self._locked():
            row = self._conn.execute(
                "SELECT attempts, first_failed_at FROM repos WHERE did = ?", (did,)
            ).fetchone()
        if row is None:
            return 0, None
        return int(row[0]), None if row[1] is None else _from_us(row[1])

    def update_identity(self, identity: Identity) -> None:
        i = identity
        with self._write() as c:
            c.execute(_SET_IDENTITY, _identity_params(i, _now_us()))

    def repo_keys(self, did: str) -> bytes | None:
        with self._locked():
            row = self._conn.execute("SELECT keys FROM repo_keys WHERE did = ?", (did,)).fetchone()
        return None if row is None else bytes(row[0])

    def next_unresolved(self) -> dt.datetime | None:
        with self._locked():
            row = self._conn.execute(
                """SELECT next_attempt_at FROM repos
                   WHERE state = 'pending' AND host IS NULL
                   ORDER BY next_attempt_at LIMIT 1"""
            ).fetchone()
        return None if row is None else _from_us(row[0])

    def failed_repos(
        self,
        codes: Sequence[str] | None = None,
        *,
        exclude: Sequence[str] = (),
        after: str = "",
        limit: int = 10_000,
    ) -> list[FailedRepo]:
        where = ["state = 'failed'", "did > ?"]
        args: list[object] = [after]
        if codes is not None:
            where.append(f"coalesce(error_code, '') IN ({','.join('?' * len(codes))})")
            args.extend(codes)
        if exclude:
            where.append(f"coalesce(error_code, '') NOT IN ({','.join('?' * len(exclude))})")
            args.extend(exclude)
        with self._locked():
            rows = self._conn.execute(
                f"""SELECT did, coalesce(error_code, ''), coalesce(error_stage, '')
                    FROM repos WHERE {" AND ".join(where)} ORDER BY did LIMIT ?""",
                (*args, limit),
            ).fetchall()
        return [FailedRepo(did=d, code=c, stage=s) for d, c, s in rows]

    def reopen_failed(
        self,
        repos: Sequence[FailedRepo],
        at: dt.datetime,
        file: CommittedFile | None = None,
    ) -> int:
        at_us = _to_us(at)
        reopened: list[FailedRepo] = []
        with self._write(durable=True) as c:
            if file is not None:
                c.execute(
                    """INSERT INTO files(path, collection, rows, committed_at)
                       VALUES (?, ?, ?, ?)""",
                    (file.path, file.collection, file.rows, at_us),
                )
            for r in repos:
                # As new, but a refresh stays a refresh: its rows from before are
                # in the dataset, and only what changed since `rev` may land.
                cur = c.execute(
                    """UPDATE repos SET state = 'pending', attempts = 0, next_attempt_at = 0,
                         first_failed_at = NULL, pds = NULL, host = NULL, signing_key = NULL,
                         error_code = NULL, error_stage = NULL, last_error = NULL,
                         updated_at = ?
                       WHERE did = ? AND state = 'failed'""",
                    (at_us, r.did),
                )
                if cur.rowcount:
                    reopened.append(r)
            for stage, code, n in reopened_counts(reopened):
                if not stage:  # failed before stages were kept: the likeliest one
                    row = c.execute(
                        """SELECT stage FROM dead_letter_counts WHERE code = ? AND count > 0
                           ORDER BY count DESC LIMIT 1""",
                        (code,),
                    ).fetchone()
                    stage = row[0] if row else ""
                c.execute(
                    """UPDATE dead_letter_counts SET count = max(count - ?, 0)
                       WHERE stage = ? AND code = ?""",
                    (n, stage, code),
                )
            c.executemany(
                "INSERT INTO superseded(did, stage, code, superseded_at) VALUES (?, ?, ?, ?)",
                [(r.did, r.stage, r.code, at_us) for r in reopened],
            )
        return len(reopened)

    def set_host_pauses(self, pauses: Sequence[HostPause]) -> None:
        now = _now_us()
        with self._write() as c:
            c.executemany(
                """INSERT OR REPLACE INTO host_pauses(host, until, reason, updated_at)
                   VALUES (?, ?, ?, ?)""",
                [
                    (p.host, None if p.until is None else _to_us(p.until), p.reason, now)
                    for p in pauses
                    if p.reason
                ],
            )
            c.executemany(
                "DELETE FROM host_pauses WHERE host = ?",
                [(p.host,) for p in pauses if not p.reason],
            )

    def host_pauses(self) -> list[HostPause]:
        with self._locked():
            rows = self._conn.execute("SELECT host, until, reason FROM host_pauses").fetchall()
        return [_pause(*row) for row in rows]

    # -- host leases ---------------------------------------------------------------

    def acquire_host(
        self, team: str, host: str, owner: str, now: dt.datetime, until: dt.datetime
    ) -> bool:
        with self._write() as c:
            # Expired leases go first, whichever team left them (a run that was killed).
            c.execute("DELETE FROM host_leases WHERE host = ? AND until <= ?", (host, _to_us(now)))
            row = c.execute(
                """INSERT INTO host_leases(host, team, owner, until) VALUES (?, ?, ?, ?)
                   ON CONFLICT(host, team) DO UPDATE SET until = excluded.until
                   WHERE host_leases.owner = excluded.owner
                   RETURNING owner""",
                (host, team, owner, _to_us(until)),
            ).fetchone()
        return row is not None

    def release_host(self, team: str, host: str, owner: str) -> None:
        with self._write() as c:
            c.execute(
                "DELETE FROM host_leases WHERE host = ? AND team = ? AND owner = ?",
                (host, team, owner),
            )

    def release_hosts(self, team: str, owner: str | None = None) -> int:
        with self._write() as c:
            return c.execute(
                "DELETE FROM host_leases WHERE team = ? AND (? IS NULL OR owner = ?)",
                (team, owner, owner),
            ).rowcount

    # -- small tables ------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._locked():
            row = self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_meta(self, key: str, value: str) -> None:
        with self._write() as c:
            c.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def get_cursor(self, source: str) -> str | None:
        """Where an enumeration source (PLC export, relay) left off; beyond the Protocol."""
        with self._locked():
            row = self._conn.execute(
                "SELECT cursor FROM cursors WHERE source = ?", (source,)
            ).fetchone()
        return None if row is None else str(row[0])

    def set_cursor(self, source: str, cursor: str) -> None:
        """Save a source's cursor; call after enqueueing the page it follows (WAL keeps order)."""
        with self._write() as c:
            c.execute(
                "INSERT OR REPLACE INTO cursors(source, cursor, updated_at) VALUES (?, ?, ?)",
                (source, cursor, _now_us()),
            )

    def close(self) -> None:
        with self._locked():
            with contextlib.suppress(sqlite3.Error):
                # Cheap on close, keeps planner statistics fresh for the next run.
                self._conn.execute("PRAGMA optimize")
            self._conn.close()

    def __enter__(self) -> SqliteStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
