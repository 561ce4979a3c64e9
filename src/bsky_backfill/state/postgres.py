"""PostgreSQL state store: one queue shared by many workers on many machines.

Where it sits: implements `state.base.StateStore` (same semantics as
`state.sqlite`, same shared test suite) for `--queue postgresql://...`. Every
worker process opens its own store (one connection); they coordinate only
through the database.

Leases. A claim marks repos in_progress with `lease_owner` (this store's
`owner`, unique per process by default) and `lease_expires_at` (the DB clock
+ `lease`, default 2 min, or `?lease_seconds=N` in the URL). A worker that
dies (kill -9, machine lost) stops renewing; once its leases expire, any
other worker puts its repos back to pending. `recover()` (start-up; see
`StateStore.recover`) takes back expired repos and this owner's own, never a
live worker's; `reclaim_expired()` (any time) only expired ones.

Upkeep rides on the calls a scheduler makes anyway: `claim`, `commit` and
`pending_hosts` renew this worker's leases (at most every `lease / 10`) and
`pending_hosts` and `commit` reclaim expired ones (at most every `lease / 4`).
An engine that keeps polling `pending_hosts` needs nothing else; one that may
stall longer than `lease / 3` calls `renew_leases()` from a timer. Lease
times use the database clock, the one clock every machine shares; due times
(`next_attempt_at`) come from the caller, as with SQLite.

Resolution is leased too: `unresolved()` marks the DIDs it returns (still
pending) with a lease, and skips DIDs under another worker's live lease, so
workers do not resolve (and dead-letter) the same DID twice.

Fencing. `commit()` refuses, as a whole, a batch holding a repo that this
worker no longer owns (another worker re-claimed it after this lease expired,
or finished it): its rows would land twice. It raises `LeaseLostError`; the
batch's files must then be discarded and its repos put back.

Outages. A call whose transaction certainly did not commit (the connection
dropped or the server refused it before COMMIT was sent: a restart, an admin's
`pg_terminate_backend`, a failover, a serialization failure) is retried on a
new connection with backoff for up to `outage_s` (default 2 min), on the
calling thread. That is the one place the engine's event loop may wait on
the store: every stage needs the ledger, so an outage pauses the run either
way, and a pause is what keeps repos from being dead-lettered for it. A
connection lost *during* COMMIT has an unknown outcome and is not retried
(`commit()`'s caller settles it through recovery).

Concurrency: one connection per store, guarded by a lock so calls from
several threads queue up; each call is one short transaction in READ
COMMITTED. Claims use `FOR UPDATE SKIP LOCKED`, so concurrent claimers never
wait for, nor hand out, the same repo. Rows are locked in `did` order in
`commit()`, so two commits cannot deadlock.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Concatenate, ParamSpec, TypeVar

import psycopg

from bsky_backfill.models import DeadLetter
from bsky_backfill.state import postgres_ledger as ledger
from bsky_backfill.state import postgres_upkeep as upkeep
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
from bsky_backfill.state.common import keep_verified, task, task_columns
from bsky_backfill.state.errors import LeaseLostError, StateStoreError, StateStoreUnavailable
from bsky_backfill.state.postgres_conn import (
    PostgresConnectError,
    connect,
    migrate,
    one_line,
    parse_queue_url,
)
from bsky_backfill.state.postgres_upkeep import default_owner

__all__ = ["DEFAULT_LEASE", "LeaseLostError", "PostgresStateStore"]

# How long claims outlive their last renewal (also `?lease_seconds=` in the
# URL). Renewal is piggy-backed on scheduler calls every lease / 10, so this
# only needs to cover a stalled worker; it bounds how long a dead worker's
# repos wait before others take them over.
DEFAULT_LEASE = dt.timedelta(minutes=2)
# Rows per enqueue statement: one round trip each, short enough that no
# transaction holds locks for long.
_CHUNK = 20_000
# Fold count deltas at most this often per store (readers sum what is left).
_COMPACT_EVERY_S = 1.0
# How long one call keeps retrying an unreachable server before the run stops:
# long enough for a restart or a failover, short enough that a dead database
# ends the run instead of hanging it.
DEFAULT_OUTAGE = dt.timedelta(minutes=2)
# psycopg's errors that mean "the server or the connection", not "this statement".
_CONNECTION_ERRORS = (psycopg.OperationalError, psycopg.InterfaceError)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def _patient(
    method: Callable[Concatenate[PostgresStateStore, _P], _R],
) -> Callable[Concatenate[PostgresStateStore, _P], _R]:
    """Retry a store call that certainly changed nothing, on a fresh connection, with
    jittered exponential backoff, until the store's outage budget is spent."""

    def call(self: PostgresStateStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        deadline = time.monotonic() + self.outage.total_seconds()
        delay = 0.05
        while True:
            try:
                return method(self, *args, **kwargs)
            except StateStoreUnavailable as e:
                if time.monotonic() + delay > deadline:
                    raise StateStoreError(
                        f"{e} (unreachable for {self.outage.total_seconds():.0f} s)"
                    ) from e
                self.outages += 1
                time.sleep(delay * random.uniform(0.5, 1.0))
                delay = min(delay * 2, 5.0)

    functools.update_wrapper(call, method)
    return call


# A claim's two picks, each along its own partial index in the order it wants, so
# each stops after `limit` due rows (it skips only the few repos backing off):
# repos of known size (repos_claim_sized: landed before, a refresh or a retry),
# biggest first, then those of unknown size (repos_claim) in due order.
_CLAIM = (
    """SELECT did FROM repos
       WHERE state = 'pending' AND car_bytes IS NOT NULL AND host = %(host)s
         AND next_attempt_at <= %(now)s
       ORDER BY car_bytes DESC, next_attempt_at LIMIT %(limit)s""",
    """SELECT did FROM repos
       WHERE state = 'pending' AND host = %(host)s AND next_attempt_at <= %(now)s
         AND car_bytes IS NULL
       ORDER BY next_attempt_at LIMIT %(limit)s""",
)


def _aware(t: dt.datetime) -> dt.datetime:
    if t.tzinfo is None:
        raise ValueError(f"naive datetime {t!r}: the state store wants aware UTC datetimes")
    return t


def _columns(identities: Iterable[Identity]) -> list[list[Any]]:
    """Identities as six column arrays for unnest(); a DID's last identity wins
    (ON CONFLICT DO UPDATE may touch a row only once per statement)."""
    last = {i.did: i for i in identities}.values()
    return [
        [i.did for i in last],
        [i.pds for i in last],
        [i.host for i in last],
        [i.signing_key for i in last],
        [i.handle for i in last],
        [i.handle_verified for i in last],
    ]


def _utc(t: Any) -> dt.datetime:
    assert isinstance(t, dt.datetime)
    return t.astimezone(dt.UTC)


class PostgresStateStore:
    """`StateStore` on one schema of a PostgreSQL database; see the module docstring."""

    def __init__(
        self,
        url: str,
        *,
        owner: str | None = None,
        lease: dt.timedelta | None = None,
        outage: dt.timedelta = DEFAULT_OUTAGE,
    ) -> None:
        self.url = parse_queue_url(url)
        lease = lease or self.url.lease or DEFAULT_LEASE
        if lease <= dt.timedelta(0):
            raise ValueError(f"lease must be positive, got {lease}")
        self.schema = self.url.schema
        self.owner = owner or default_owner()
        self.lease = lease
        self.outage = outage
        self.outages = 0
        """Calls retried after the server was unreachable (for tests and logs)."""
        self._lock = threading.RLock()
        self._conn = connect(self.url)
        try:
            migrate(self._conn, self.url)
        except BaseException:
            self._conn.close()
            raise
        self._renewed = self._recovered = self._compacted = time.monotonic()

    # -- plumbing --------------------------------------------------------------

    @contextlib.contextmanager
    def _tx(self) -> Iterator[upkeep.Cursor]:
        """One short transaction; psycopg errors become `StateStoreError` here only,
        `StateStoreUnavailable` when the transaction certainly did not commit."""
        with self._lock:
            sent_commit = False
            try:
                if self._conn.broken or self._conn.closed:
                    # The server restarted or the network dropped between calls:
                    # the failed call already raised; later ones get a new session.
                    self._conn = connect(self.url)
                with self._conn.transaction(), self._conn.cursor() as cur:
                    yield cur
                    sent_commit = True  # leaving the block sends COMMIT
            except PostgresConnectError as e:
                raise StateStoreUnavailable(f"state store {self.schema}: {e}") from e
            except _CONNECTION_ERRORS as e:
                # An error the server answered COMMIT with (a SQLSTATE: the session
                # was terminated, a serialization failure) means it did not commit;
                # only a connection that dropped without an answer leaves it unknown.
                if sent_commit and e.sqlstate is None:
                    raise StateStoreError(
                        f"state store {self.schema}: connection lost during COMMIT "
                        f"(outcome unknown): {one_line(e)}"
                    ) from e
                raise StateStoreUnavailable(f"state store {self.schema}: {one_line(e)}") from e
            except psycopg.Error as e:
                raise StateStoreError(f"state store {self.schema}: {one_line(e)}") from e

    def _maintain(self, cur: upkeep.Cursor) -> None:
        """Piggy-backed upkeep: renew own leases, recover expired ones, fold counts."""
        now = time.monotonic()
        lease_s = self.lease.total_seconds()
        if now - self._renewed >= lease_s / 10:
            self._renewed = time.monotonic()
            upkeep.renew(cur, self.owner, self.lease)
        if now - self._recovered >= lease_s / 4:
            self._recovered = time.monotonic()
            upkeep.reclaim(cur, None)
        if now - self._compacted >= _COMPACT_EVERY_S:
            self._compacted = time.monotonic()
            upkeep.compact(cur)

    # -- queue -----------------------------------------------------------------

    @_patient
    def enqueue(self, dids: Iterable[str]) -> int:
        new = 0
        it = iter(dids)
        while chunk := list(itertools.islice(it, _CHUNK)):
            with self._tx() as cur:
                # ORDINALITY keeps the caller's order in `seq` ("oldest first").
                cur.execute(
                    """INSERT INTO repos(did)
                       SELECT d FROM unnest(%s::text[]) WITH ORDINALITY AS u(d, i) ORDER BY i
                       ON CONFLICT (did) DO NOTHING""",
                    (chunk,),
                )
                new += cur.rowcount
        return new

    @_patient
    def enqueue_resolved(self, identities: Iterable[Identity]) -> int:
        new = 0
        it = iter(identities)
        while chunk := list(itertools.islice(it, _CHUNK)):
            cols = _columns(chunk)
            with self._tx() as cur:
                # A DID seen again refreshes the identity of a repo not yet
                # claimed; anything further along is kept. xmax = 0 <=> inserted.
                cur.execute(
                    f"""INSERT INTO repos AS r(did, pds, host, signing_key, handle,
                         handle_verified)
                       SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],
                         %s::text[], %s::boolean[])
                       ON CONFLICT (did) DO UPDATE SET
                         pds = excluded.pds, host = excluded.host,
                         signing_key = excluded.signing_key, handle = excluded.handle,
                         handle_verified = {
                        keep_verified("excluded.handle", "excluded.handle_verified", "r")
                    },
                         updated_at = now(), lease_owner = NULL, lease_expires_at = NULL
                       WHERE r.state = 'pending'
                       RETURNING xmax = 0""",
                    cols,
                )
                new += sum(1 for (inserted,) in cur.fetchall() if inserted)
        return new

    @_patient
    def unresolved(self, limit: int, exclude: Sequence[str] = ()) -> list[str]:
        # Oldest first among those due by the wall clock (as in SQLite), and
        # leased to this worker so others skip them while it resolves.
        with self._tx() as cur:
            cur.execute(
                """WITH picked AS (
                     SELECT did FROM repos
                     WHERE state = 'pending' AND host IS NULL AND next_attempt_at <= %(now)s
                       AND did <> ALL(%(exclude)s::text[])
                       AND (lease_owner IS NULL OR lease_owner = %(me)s
                            OR lease_expires_at < clock_timestamp())
                     ORDER BY next_attempt_at, seq LIMIT %(limit)s
                     FOR UPDATE SKIP LOCKED)
                   UPDATE repos AS r SET lease_owner = %(me)s,
                     lease_expires_at = clock_timestamp() + %(lease)s
                   FROM picked WHERE r.did = picked.did
                   RETURNING r.did, r.next_attempt_at, r.seq""",
                {
                    "now": dt.datetime.now(dt.UTC),
                    "exclude": list(exclude),
                    "me": self.owner,
                    "limit": limit,
                    "lease": self.lease,
                },
            )
            rows = cur.fetchall()
        return [r[0] for r in sorted(rows, key=lambda r: (r[1], r[2]))]

    @_patient
    def set_identities(self, identities: Sequence[Identity]) -> None:
        if not identities:
            return
        cols = _columns(identities)
        with self._tx() as cur:
            cur.execute(
                f"""UPDATE repos AS r SET pds = u.pds, host = u.host, signing_key = u.key,
                     handle = u.handle,
                     handle_verified = {keep_verified("u.handle", "u.handle_verified", "r")},
                     updated_at = now(), lease_owner = NULL, lease_expires_at = NULL
                   FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[], %s::text[],
                     %s::boolean[]) AS u(did, pds, host, key, handle, handle_verified)
                   WHERE r.did = u.did AND r.state = 'pending'""",
                cols,
            )

    @_patient
    def pending_hosts(self, now: dt.datetime) -> dict[str, int]:
        now = _aware(now)
        with self._tx() as cur:
            self._maintain(cur)
            # due = pending (from the counts) - not yet due (the few backing off),
            # so a scheduler tick never scans every pending repo.
            cur.execute(
                """SELECT c.host, c.n - coalesce(f.n, 0) FROM (
                     SELECT host, sum(n) AS n FROM (
                       SELECT host, n FROM repo_counts WHERE state = 'pending' AND host <> ''
                       UNION ALL
                       SELECT host, n FROM repo_count_deltas
                       WHERE state = 'pending' AND host <> '') AS a
                     GROUP BY host) AS c
                   LEFT JOIN (
                     SELECT host, count(*) AS n FROM repos
                     WHERE state = 'pending' AND host IS NOT NULL AND next_attempt_at > %s
                     GROUP BY host) AS f ON f.host = c.host
                   WHERE c.n - coalesce(f.n, 0) > 0""",
                (now,),
            )
            return {h: int(n) for h, n in cur.fetchall()}

    @_patient
    def next_due(self) -> dt.datetime | None:
        # Two index lookups (resolved, unresolved), no scan.
        with self._tx() as cur:
            cur.execute(
                """SELECT least(
                     (SELECT min(next_attempt_at) FROM repos
                      WHERE state = 'pending' AND host IS NOT NULL),
                     (SELECT min(next_attempt_at) FROM repos
                      WHERE state = 'pending' AND host IS NULL))"""
            )
            row = cur.fetchone()
        return None if row is None or row[0] is None else _utc(row[0])

    @_patient
    def claim(self, host: str, limit: int, now: dt.datetime) -> list[RepoTask]:
        now = _aware(now)
        with self._tx() as cur:
            self._maintain(cur)
            # Known sizes first, biggest first, then the rest in due order (see
            # _CLAIM). Each CTE runs once (FOR UPDATE keeps it from being inlined);
            # SKIP LOCKED lets concurrent claimers pass each other's rows by, and
            # a row changed meanwhile is re-checked against the WHERE clause.
            rows: list[tuple[Any, ...]] = []
            for pick in _CLAIM:
                if len(rows) >= limit:
                    break
                cur.execute(
                    f"""WITH picked AS ({pick} FOR UPDATE SKIP LOCKED)
                       UPDATE repos AS r SET state = 'in_progress', updated_at = now(),
                         lease_owner = %(me)s, lease_expires_at = clock_timestamp() + %(lease)s
                       FROM picked WHERE r.did = picked.did
                       RETURNING {task_columns("r")}""",
                    {"host": host, "now": now, "limit": limit - len(rows), "me": self.owner,
                     "lease": self.lease},
                )  # fmt: skip
                rows += cur.fetchall()
        return [task(r, _utc) for r in rows]

    @_patient
    def withdraw(self, dids: Sequence[str]) -> list[str]:
        if not dids:
            return []
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM repos WHERE did = ANY(%s) AND state = 'pending'", (list(dids),)
            )
            cur.execute("SELECT did FROM repos WHERE did = ANY(%s)", (list(dids),))
            kept = {row[0] for row in cur.fetchall()}
        return [d for d in dids if d not in kept]

    @_patient
    def mark_refresh(self) -> int:
        # One statement: with many workers, run it once (the first `run
        # --refresh`), not per worker, or repos refreshed meanwhile go again.
        with self._tx() as cur:
            cur.execute(
                """UPDATE repos SET state = 'pending', refresh = true, attempts = 0,
                     next_attempt_at = '1970-01-01 00:00:00+00', updated_at = now()
                   WHERE state = 'done'"""
            )
            return cur.rowcount

    @_patient
    def retry_later(
        self, did: str, attempts: int, next_attempt_at: dt.datetime, error: str
    ) -> None:
        due = _aware(next_attempt_at)
        with self._tx() as cur:
            # Never reopens a finished repo, nor one another worker now holds
            # (this worker's lease expired and the repo was re-claimed).
            # A failure that counts (attempts grows) starts the time budget if it
            # has not started; a put-back that does not count (a paused host) leaves it.
            cur.execute(
                """UPDATE repos SET state = 'pending', next_attempt_at = %(due)s,
                     first_failed_at = CASE WHEN %(attempts)s > attempts
                       THEN coalesce(first_failed_at, %(now)s) ELSE first_failed_at END,
                     attempts = %(attempts)s, error_code = NULL, last_error = %(error)s,
                     updated_at = now(), lease_owner = NULL, lease_expires_at = NULL
                   WHERE did = %(did)s AND (
                     (state = 'in_progress' AND lease_owner = %(me)s)
                     OR (state = 'pending' AND (lease_owner IS NULL OR lease_owner = %(me)s
                                                OR lease_expires_at < clock_timestamp())))""",
                {
                    "attempts": attempts,
                    "due": due,
                    "error": error,
                    "did": did,
                    "me": self.owner,
                    "now": dt.datetime.now(dt.UTC),
                },
            )

    @_patient
    def recover(self) -> int:
        """`StateStore.recover`: the orphans are repos whose lease expired (their worker
        died) and this owner's own; live workers' repos are left alone.

        Returns how many. Call once at start; later, `reclaim_expired()`."""
        with self._tx() as cur:
            return upkeep.reclaim(cur, self.owner)

    @_patient
    def reclaim_expired(self) -> int:
        """Only repos whose lease expired go back to pending (safe at any time, unlike
        `recover()`, which also takes back this owner's own in-flight repos)."""
        with self._tx() as cur:
            return upkeep.reclaim(cur, None)

    @_patient
    def renew_leases(self) -> int:
        """Push this worker's leases `lease` into the future; returns how many it holds.

        Call at least every `lease / 3` while repos are in flight if the engine
        may go longer than that without calling `claim`/`commit`/`pending_hosts`."""
        with self._tx() as cur:
            self._renewed = time.monotonic()
            return upkeep.renew(cur, self.owner, self.lease)

    # -- ledger ----------------------------------------------------------------

    @_patient
    def commit(
        self,
        files: Sequence[CommittedFile],
        done: Sequence[RepoDone],
        failed: Sequence[RepoFailed],
        dead_letters: Sequence[DeadLetter],
        cursors: Sequence[tuple[str, str | None]] = (),
    ) -> None:
        dids = sorted({d.did for d in done} | {f.did for f in failed})
        with self._tx() as cur:
            # The sink renames files right after this returns: the commit
            # record must be on disk first, whatever the server's default.
            cur.execute("SET LOCAL synchronous_commit = on")
            upkeep.fence(cur, dids, self.owner)
            ledger.record(cur, self.owner, files, done, failed, dead_letters, cursors)
            self._maintain(cur)

    @_patient
    def committed_files(self) -> list[CommittedFile]:
        with self._tx() as cur:
            cur.execute("SELECT path, collection, rows FROM files")
            rows = cur.fetchall()
        return [CommittedFile(path=p, collection=c, rows=n) for p, c, n in rows]

    @_patient
    def replace_files(self, old: Sequence[str], new: Sequence[CommittedFile]) -> None:
        with self._tx() as cur:
            cur.execute("SET LOCAL synchronous_commit = on")
            ledger.replace(cur, self.owner, old, new)

    @_patient
    def retired_files(self) -> list[str]:
        with self._tx() as cur:
            cur.execute("SELECT path FROM retired_files")
            rows = cur.fetchall()
        return [p for (p,) in rows]

    @_patient
    def forget_retired(self, paths: Sequence[str]) -> None:
        if not paths:
            return
        with self._tx() as cur:
            cur.execute("DELETE FROM retired_files WHERE path = ANY(%s)", (list(paths),))

    @_patient
    def counts(self) -> dict[RepoState, int]:
        with self._tx() as cur:
            self._maintain(cur)
            return {s: n for s, (_, n) in upkeep.state_counts(cur).items()}

    @_patient
    def status(self) -> StatusReport:
        with self._tx() as cur:
            return ledger.report(cur)

    def host_map(self, batch: int = 100_000) -> Iterator[list[tuple[str, str]]]:
        # A server-side cursor: the rows come `batch` at a time, not all at once.
        with self._lock:
            try:
                with (
                    self._conn.transaction(),
                    self._conn.cursor(name="host_map") as cur,
                ):
                    cur.execute("SELECT did, host FROM repos WHERE host IS NOT NULL")
                    while rows := cur.fetchmany(batch):
                        yield [(str(d), str(h)) for d, h in rows]
            except psycopg.Error as e:
                raise StateStoreError(f"state store {self.schema}: {one_line(e)}") from e

    # -- long runs: failures, supersession, host pauses ---------------------------------

    @_patient
    def failure_of(self, did: str) -> tuple[int, dt.datetime | None]:
        with self._tx() as cur:
            cur.execute("SELECT attempts, first_failed_at FROM repos WHERE did = %s", (did,))
            row = cur.fetchone()
        if row is None:
            return 0, None
        return int(row[0]), None if row[1] is None else _utc(row[1])

    @_patient
    def update_identity(self, identity: Identity) -> None:
        i = identity
        with self._tx() as cur:
            cur.execute(
                f"""UPDATE repos AS r SET pds = %(pds)s, host = %(host)s,
                     signing_key = %(key)s, handle = %(handle)s,
                     handle_verified = {keep_verified("%(handle)s", "%(verified)s", "r")},
                     updated_at = now()
                   WHERE did = %(did)s""",
                {"pds": i.pds, "host": i.host, "key": i.signing_key, "handle": i.handle,
                 "verified": i.handle_verified, "did": i.did},
            )  # fmt: skip

    @_patient
    def repo_keys(self, did: str) -> bytes | None:
        with self._tx() as cur:
            cur.execute("SELECT keys FROM repo_keys WHERE did = %s", (did,))
            row = cur.fetchone()
        return None if row is None else bytes(row[0])

    @_patient
    def next_unresolved(self) -> dt.datetime | None:
        with self._tx() as cur:
            cur.execute(
                """SELECT min(next_attempt_at) FROM repos
                   WHERE state = 'pending' AND host IS NULL"""
            )
            row = cur.fetchone()
        return None if row is None or row[0] is None else _utc(row[0])

    @_patient
    def failed_repos(
        self,
        codes: Sequence[str] | None = None,
        *,
        exclude: Sequence[str] = (),
        after: str = "",
        limit: int = 10_000,
    ) -> list[FailedRepo]:
        with self._tx() as cur:
            cur.execute(
                """SELECT did, coalesce(error_code, ''), coalesce(error_stage, '') FROM repos
                   WHERE state = 'failed' AND did > %(after)s
                     AND (%(any)s OR coalesce(error_code, '') = ANY(%(codes)s::text[]))
                     AND coalesce(error_code, '') <> ALL(%(exclude)s::text[])
                   ORDER BY did LIMIT %(limit)s""",
                {
                    "after": after,
                    "any": codes is None,
                    "codes": list(codes or ()),
                    "exclude": list(exclude),
                    "limit": limit,
                },
            )
            rows = cur.fetchall()
        return [FailedRepo(did=d, code=c, stage=s) for d, c, s in rows]

    @_patient
    def reopen_failed(
        self,
        repos: Sequence[FailedRepo],
        at: dt.datetime,
        file: CommittedFile | None = None,
    ) -> int:
        with self._tx() as cur:
            cur.execute("SET LOCAL synchronous_commit = on")  # a file may be renamed after
            return ledger.reopen(cur, self.owner, repos, _aware(at), file)

    @_patient
    def set_host_pauses(self, pauses: Sequence[HostPause]) -> None:
        keep = sorted((p for p in pauses if p.reason), key=lambda p: p.host)
        drop = sorted(p.host for p in pauses if not p.reason)
        with self._tx() as cur:
            if keep:
                cur.executemany(
                    """INSERT INTO host_pauses(host, until, reason) VALUES (%s, %s, %s)
                       ON CONFLICT (host) DO UPDATE SET until = excluded.until,
                         reason = excluded.reason, updated_at = now()""",
                    [(p.host, p.until, p.reason) for p in keep],
                )
            if drop:
                cur.execute("DELETE FROM host_pauses WHERE host = ANY(%s)", (drop,))

    @_patient
    def host_pauses(self) -> list[HostPause]:
        with self._tx() as cur:
            return ledger.pauses(cur)

    # -- host leases ---------------------------------------------------------------

    @_patient
    def acquire_host(
        self, team: str, host: str, owner: str, now: dt.datetime, until: dt.datetime
    ) -> bool:
        # The caller's clock, not the database's: only one machine's processes (a
        # team) contend for a lease. ON CONFLICT makes two acquirers queue on the row.
        with self._tx() as cur:
            # Expired leases go first, whichever team left them (a run that was killed).
            cur.execute(
                "DELETE FROM host_leases WHERE host = %s AND until <= %s", (host, _aware(now))
            )
            cur.execute(
                """INSERT INTO host_leases AS l(host, team, owner, until)
                   VALUES (%s, %s, %s, %s)
                   ON CONFLICT (host, team) DO UPDATE SET until = excluded.until
                   WHERE l.owner = excluded.owner
                   RETURNING owner""",
                (host, team, owner, _aware(until)),
            )
            return cur.fetchone() is not None

    @_patient
    def release_host(self, team: str, host: str, owner: str) -> None:
        with self._tx() as cur:
            cur.execute(
                "DELETE FROM host_leases WHERE host = %s AND team = %s AND owner = %s",
                (host, team, owner),
            )

    @_patient
    def release_hosts(self, team: str, owner: str | None = None) -> int:
        with self._tx() as cur:
            cur.execute(
                """DELETE FROM host_leases
                   WHERE team = %s AND (%s::text IS NULL OR owner = %s)""",
                (team, owner, owner),
            )
            return cur.rowcount

    # -- small tables ------------------------------------------------------------

    @_patient
    def get_meta(self, key: str) -> str | None:
        with self._tx() as cur:
            if key == "schema_version":
                # The versions live in their own table (see postgres_schema).
                cur.execute("SELECT max(version)::text FROM schema_version")
            else:
                cur.execute("SELECT value FROM meta WHERE key = %s", (key,))
            row = cur.fetchone()
        return None if row is None or row[0] is None else str(row[0])

    @_patient
    def set_meta(self, key: str, value: str) -> None:
        with self._tx() as cur:
            if key == "schema_version":
                # Records `value` as applied (tools and tests that fake an upgrade).
                cur.execute(
                    "INSERT INTO schema_version(version) VALUES (%s) ON CONFLICT DO NOTHING",
                    (int(value),),
                )
            else:
                cur.execute(
                    """INSERT INTO meta(key, value) VALUES (%s, %s)
                       ON CONFLICT (key) DO UPDATE SET value = excluded.value""",
                    (key, value),
                )

    @_patient
    def take_host_tokens(self, host: str, want: int, per_second: int) -> tuple[int, float]:
        """Up to `want` requests to `host` from this second's shared budget of
        `per_second` (all workers together), on the database's clock. Returns
        (granted, seconds until the next second starts)."""
        with self._tx() as cur:
            cur.execute(
                """INSERT INTO host_caps(host, second, used) VALUES (%(h)s, 0, 0)
                   ON CONFLICT (host) DO NOTHING""",
                {"h": host},
            )
            cur.execute(
                """WITH now_s AS (SELECT extract(epoch FROM clock_timestamp()) AS t),
                        cur AS (
                          SELECT c.host, floor(n.t)::bigint AS sec, n.t,
                                 CASE WHEN c.second < floor(n.t) THEN 0 ELSE c.used END AS used
                          FROM host_caps c, now_s n WHERE c.host = %(h)s FOR UPDATE OF c)
                   UPDATE host_caps h SET second = cur.sec,
                          used = cur.used + least(%(want)s, greatest(%(cap)s - cur.used, 0))
                   FROM cur WHERE h.host = cur.host
                   RETURNING least(%(want)s, greatest(%(cap)s - cur.used, 0)),
                             cur.sec + 1 - cur.t""",
                {"h": host, "want": want, "cap": per_second},
            )
            row = cur.fetchone()
        assert row is not None
        return int(row[0]), float(row[1])

    @_patient
    def get_cursor(self, source: str) -> str | None:
        """Where an enumeration source (PLC export, relay) left off; beyond the Protocol."""
        with self._tx() as cur:
            cur.execute("SELECT cursor FROM cursors WHERE source = %s", (source,))
            row = cur.fetchone()
        return None if row is None else str(row[0])

    @_patient
    def set_cursor(self, source: str, cursor: str) -> None:
        """Save a source's cursor; call after enqueueing the page it follows."""
        with self._tx() as cur:
            cur.execute(
                """INSERT INTO cursors(source, cursor) VALUES (%s, %s)
                   ON CONFLICT (source) DO UPDATE SET cursor = excluded.cursor,
                     updated_at = now()""",
                (source, cursor),
            )

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def __enter__(self) -> PostgresStateStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
