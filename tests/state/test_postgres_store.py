"""What only the PostgreSQL backend promises: leases, fencing, concurrent workers, migrations.

The shared behaviour is in test_store_contract.py; here several stores (one
per simulated worker, each its own connection and lease owner) share one
fresh schema.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from bsky_backfill.errors import UsageError
from bsky_backfill.state.base import CommittedFile, Identity, RepoDone, RepoState
from bsky_backfill.state.open import open_store, store_exists
from bsky_backfill.state.postgres import LeaseLostError, PostgresStateStore
from bsky_backfill.state.postgres_conn import (
    PostgresConnectError,
    migration_lock_key,
    parse_queue_url,
)
from bsky_backfill.state.postgres_schema import SCHEMA_VERSION
from bsky_backfill.state.postgres_upkeep import compact
from tests.state.pg import admin, fresh_schema_url

NOW = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
HOUR = dt.timedelta(hours=1)


@pytest.fixture
def url() -> Iterator[str]:
    with fresh_schema_url() as u:
        yield u


@pytest.fixture
def stores(url: str) -> Iterator[list[PostgresStateStore]]:
    """Stores opened by a test through `opened`, closed before the schema is dropped."""
    opened: list[PostgresStateStore] = []
    yield opened
    for s in opened:
        s.close()


def worker(stores: list[PostgresStateStore], url: str, **kw: object) -> PostgresStateStore:
    s = PostgresStateStore(url, **kw)
    stores.append(s)
    return s


def seed(store: PostgresStateStore, n: int, host: str = "h1", prefix: str = "a") -> list[str]:
    dids = [f"did:plc:{prefix}{i:05d}" for i in range(n)]
    store.enqueue_resolved(Identity(d, f"https://{host}", host, None) for d in dids)
    return dids


def expire(url: str, owner: str) -> None:
    """Time passes for one owner's leases (no sleeping on a lease clock in tests)."""
    schema = parse_queue_url(url).schema
    with admin() as conn:
        conn.execute(
            f"UPDATE \"{schema}\".repos SET lease_expires_at = now() - interval '1 second'"
            " WHERE lease_owner = %s",
            (owner,),
        )


def recount(url: str) -> dict[str, int]:
    schema = parse_queue_url(url).schema
    with admin() as conn:
        rows = conn.execute(f'SELECT state, count(*) FROM "{schema}".repos GROUP BY state')
        return {str(s): int(str(n)) for s, n in rows.fetchall()}


# -- concurrent workers ----------------------------------------------------------------


def test_concurrent_workers_claim_and_commit_each_repo_once(
    url: str, stores: list[PostgresStateStore]
) -> None:
    setup = worker(stores, url)
    dids = seed(setup, 600, "h1", "a") + seed(setup, 300, "h2", "b")
    workers = [worker(stores, url) for _ in range(6)]
    claimed: list[list[str]] = [[] for _ in workers]
    errors: list[BaseException] = []
    start = threading.Barrier(len(workers))

    def run(i: int) -> None:
        s = workers[i]
        try:
            start.wait()
            while True:
                hosts = s.pending_hosts(NOW)
                if not hosts:
                    return
                for host in hosts:
                    batch = s.claim(host, 9, NOW)
                    claimed[i].extend(t.did for t in batch)
                    s.commit([], [RepoDone(t.did, None, 1) for t in batch], [], [])
        except BaseException as e:  # surfaced below, with the thread's error
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(workers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    every = Counter(d for c in claimed for d in c)
    assert set(every) == set(dids) and max(every.values()) == 1
    assert sum(1 for c in claimed if c) >= 2, "the claims did not interleave at all"
    # The delta-log counts agree with a full recount, before and after folding.
    assert setup.status().done == len(dids) == recount(url)["done"]
    schema = parse_queue_url(url).schema
    with admin() as conn, conn.cursor() as cur:
        cur.execute(f'SET search_path = "{schema}"')
        assert compact(cur)
        cur.execute("SELECT count(*) FROM repo_count_deltas")
        assert cur.fetchone() == (0,)
    assert setup.counts()[RepoState.DONE] == len(dids)
    assert {h.host: h.done for h in setup.status().hosts} == {"h1": 600, "h2": 300}


# -- leases ------------------------------------------------------------------------------


def test_recover_leaves_live_workers_alone(url: str, stores: list[PostgresStateStore]) -> None:
    a, b = worker(stores, url, lease=HOUR), worker(stores, url, lease=HOUR)
    seed(a, 5)
    assert len(a.claim("h1", 3, NOW)) == 3
    assert b.recover() == 0  # SQLite's recover would have reset all three
    assert b.reclaim_expired() == 0
    assert len(b.claim("h1", 10, NOW)) == 2
    assert a.counts()[RepoState.IN_PROGRESS] == 5
    assert a.recover() == 3  # a restarted owner takes its own back at once


def test_expired_lease_is_reclaimed_and_the_late_commit_is_fenced(
    url: str, stores: list[PostgresStateStore]
) -> None:
    a, b = worker(stores, url, lease=HOUR), worker(stores, url, lease=HOUR)
    seed(a, 3)
    mine = sorted(t.did for t in a.claim("h1", 3, NOW))
    expire(url, a.owner)  # a hangs, its leases run out
    assert b.recover() == 3
    assert sorted(t.did for t in b.claim("h1", 10, NOW)) == mine
    b.commit([CommittedFile("p/b.parquet", "p", 5)], [RepoDone(mine[0], None, 5)], [], [])
    # a wakes up and commits the same repo: its rows would land twice.
    with pytest.raises(LeaseLostError) as err:
        a.commit([CommittedFile("p/a.parquet", "p", 5)], [RepoDone(mine[0], None, 5)], [], [])
    assert err.value.dids == (mine[0],)
    assert [f.path for f in a.committed_files()] == ["p/b.parquet"]  # nothing of a's applied
    # a's late retry cannot take b's repo away either.
    a.retry_later(mine[1], 1, NOW, "late")
    assert b.counts()[RepoState.IN_PROGRESS] == 2


def test_commit_of_a_recovered_but_unclaimed_repo_is_allowed(
    url: str, stores: list[PostgresStateStore]
) -> None:
    a, b = worker(stores, url, lease=HOUR), worker(stores, url, lease=HOUR)
    seed(a, 1)
    [task] = a.claim("h1", 1, NOW)
    expire(url, a.owner)
    assert b.recover() == 1
    # Nobody holds it: a's rows are the only ones, so recording them is safe.
    a.commit([], [RepoDone(task.did, "r", 0)], [], [])
    assert a.counts()[RepoState.DONE] == 1
    assert b.claim("h1", 1, NOW) == []


def test_renewal_keeps_a_slow_worker_s_repos(url: str, stores: list[PostgresStateStore]) -> None:
    a, b = worker(stores, url, lease=HOUR), worker(stores, url, lease=HOUR)
    seed(a, 4)
    a.claim("h1", 4, NOW)
    expire(url, a.owner)
    assert a.renew_leases() == 4  # before anyone noticed: the leases are a's again
    assert b.recover() == 0
    assert b.claim("h1", 4, NOW) == []


def test_pending_hosts_recovers_expired_leases_by_itself(
    url: str, stores: list[PostgresStateStore]
) -> None:
    a = worker(stores, url, lease=HOUR)
    # A tiny lease: b's upkeep (every lease / 4) runs on every call.
    b = worker(stores, url, lease=dt.timedelta(milliseconds=1))
    seed(a, 2)
    a.claim("h1", 2, NOW)
    assert b.pending_hosts(NOW) == {}
    expire(url, a.owner)
    time.sleep(0.01)
    assert b.pending_hosts(NOW) == {"h1": 2}


def test_resolution_is_leased_too(url: str, stores: list[PostgresStateStore]) -> None:
    a, b = worker(stores, url, lease=HOUR), worker(stores, url, lease=HOUR)
    dids = [f"did:plc:u{i}" for i in range(6)]
    a.enqueue(dids)
    assert a.unresolved(4) == dids[:4]
    assert b.unresolved(10) == dids[4:]  # a is resolving the first four
    a.set_identities([Identity(d, "https://h1", "h1", None) for d in dids[:2]])
    expire(url, a.owner)  # a died while resolving the other two
    assert b.unresolved(10) == dids[2:]


_CHILD = """
import datetime as dt, sys, time
from bsky_backfill.state.postgres import PostgresStateStore
s = PostgresStateStore(sys.argv[1] + "&lease_seconds=1")
print(*sorted(t.did for t in s.claim("h1", 5, dt.datetime(2024, 5, 1, 12, tzinfo=dt.UTC))))
sys.stdout.flush()
while True:
    s.renew_leases()
    time.sleep(0.1)
"""


def test_a_killed_worker_s_repos_are_reclaimed_after_expiry(
    url: str, stores: list[PostgresStateStore]
) -> None:
    b = worker(stores, url, lease=HOUR)
    seed(b, 8)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, url], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None
        held = child.stdout.readline().split()
        assert len(held) == 5
        assert sorted(t.did for t in b.claim("h1", 10, NOW)) != held  # b gets the other 3
        os.kill(child.pid, signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    # A third worker polls, as a running engine's upkeep would.
    c = worker(stores, url, lease=HOUR)
    deadline = time.monotonic() + 30  # the lease is 1 s; generous for a loaded machine
    back = 0
    while back < 5 and time.monotonic() < deadline:
        back += c.reclaim_expired()
        time.sleep(0.2)
    assert back == 5
    assert sorted(t.did for t in c.claim("h1", 10, NOW)) == held


# -- migrations, URLs, open_store ------------------------------------------------------------

_MIGRATE = """
import sys
from bsky_backfill.state.postgres import PostgresStateStore
with PostgresStateStore(sys.argv[1]) as s:
    print(s.get_meta("schema_version"))
"""


def test_workers_starting_at_once_migrate_once(url: str) -> None:
    key = migration_lock_key(parse_queue_url(url).schema)
    classid, objid = (key >> 32) & 0xFFFFFFFF, key & 0xFFFFFFFF
    with admin() as holder:
        # Hold the migration lock so that all three children queue up on it.
        holder.execute("BEGIN")
        holder.execute("SELECT pg_advisory_xact_lock(%s)", (key,))
        kids = [
            subprocess.Popen(
                [sys.executable, "-c", _MIGRATE, url], stdout=subprocess.PIPE, text=True
            )
            for _ in range(3)
        ]
        try:
            deadline = time.monotonic() + 60
            waiting = 0
            while waiting < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
                row = holder.execute(
                    """SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'
                       AND NOT granted AND classid = %s AND objid = %s""",
                    (classid, objid),
                ).fetchone()
                waiting = int(str(row[0])) if row else 0
            assert waiting == 3, "the workers did not wait on the migration lock"
        finally:
            holder.execute("COMMIT")  # released: now they race for it
            outs = [k.communicate(timeout=60)[0].strip() for k in kids]
    assert [k.returncode for k in kids] == [0, 0, 0]
    assert outs == [str(SCHEMA_VERSION)] * 3
    schema = parse_queue_url(url).schema
    with admin() as conn:
        rows = conn.execute(f'SELECT version FROM "{schema}".schema_version ORDER BY 1')
        assert [int(str(v)) for (v,) in rows.fetchall()] == list(range(1, SCHEMA_VERSION + 1))


def test_an_older_schema_is_upgraded_in_place(
    url: str, stores: list[PostgresStateStore], monkeypatch: pytest.MonkeyPatch
) -> None:
    import bsky_backfill.state.postgres_conn as conn_mod

    monkeypatch.setattr(conn_mod, "MIGRATIONS", conn_mod.MIGRATIONS[:1])
    monkeypatch.setattr(conn_mod, "SCHEMA_VERSION", 1)
    old = worker(stores, url)
    # Written through the one path whose columns schema 1 has (resolved identities
    # now carry columns of later steps).
    dids = [f"did:plc:a{i:05d}" for i in range(2)]
    old.enqueue(dids)
    assert old.get_meta("schema_version") == "1"
    monkeypatch.undo()
    new = worker(stores, url)  # a newer program starts on the same schema
    assert new.get_meta("schema_version") == str(SCHEMA_VERSION)
    assert sorted(new.unresolved(10)) == dids  # the data survived the upgrade
    new.set_identities([Identity(d, "https://h1", "h1", None, "a.test", True) for d in dids])
    assert new.pending_hosts(NOW) == {"h1": 2}  # ...and takes the new columns


def test_schema_comes_from_the_url() -> None:
    base = "postgresql://u:secret@db:5432/x"
    assert parse_queue_url(base).schema == "bsky_backfill"
    q = parse_queue_url(f"{base}?schema=run7&sslmode=disable")
    assert (q.schema, q.conninfo) == ("run7", f"{base}?sslmode=disable")
    assert "secret" not in q.shown
    assert parse_queue_url(f"{base}?options=-csearch_path%3Dother").schema == "other"
    assert parse_queue_url(f"{base}?lease_seconds=2.5").lease == dt.timedelta(seconds=2.5)
    with pytest.raises(PostgresConnectError, match="lease_seconds"):
        parse_queue_url(f"{base}?lease_seconds=0")
    with pytest.raises(PostgresConnectError, match="schema"):
        parse_queue_url(f"{base}?schema=no;drop")


def test_open_store_picks_postgres_and_reports_bad_urls(url: str, tmp_path: Path) -> None:
    assert store_exists(url, tmp_path) is False
    store = open_store(url, tmp_path)
    try:
        assert isinstance(store, PostgresStateStore)
        assert store_exists(url, tmp_path) is True
    finally:
        store.close()
    with pytest.raises(UsageError, match="cannot connect") as err:
        open_store("postgresql://postgres@127.0.0.1:1/test?connect_timeout=2", tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(UsageError, match="schema"):
        open_store(f"{url.split('?')[0]}?schema=a-b", tmp_path)


# -- outages ---------------------------------------------------------------------------


def _terminate(store: PostgresStateStore) -> int:
    """Drop the store's server session, as a restart or `pg_terminate_backend` does."""
    pid = store._conn.info.backend_pid
    with admin() as conn:
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
    return pid


def test_a_dropped_connection_costs_a_retry_not_an_error(
    url: str, stores: list[PostgresStateStore]
) -> None:
    """Each call that finds its session gone reconnects and runs once more: claims,
    commits and the shared budget all go on; nothing is lost or done twice."""
    s = worker(stores, url)
    dids = seed(s, 4)
    old = _terminate(s)
    tasks = s.claim("h1", 4, NOW)
    assert sorted(t.did for t in tasks) == dids
    assert s.outages == 1 and s._conn.info.backend_pid != old
    _terminate(s)
    s.commit([], [RepoDone(did=d, rev="r1", records=1) for d in dids], [], [], {})
    assert s.outages == 2
    assert recount(url) == {"done": 4}
    _terminate(s)
    granted, _ = s.take_host_tokens("h1", 3, 10)
    assert granted == 3 and s.outages == 3


def test_an_unreachable_server_ends_the_call_after_the_outage_budget(
    url: str, stores: list[PostgresStateStore]
) -> None:
    """A server that stays away: the call gives up with a StateStoreError (the run stops
    with exit 1 and resumes later) once the budget is spent, after a few retries."""
    from bsky_backfill.state.errors import StateStoreError, StateStoreUnavailable

    s = worker(stores, url, outage=dt.timedelta(seconds=0.5))
    s.url = parse_queue_url("postgresql://postgres@127.0.0.1:1/test")  # nothing listens
    _terminate(s)
    with pytest.raises(StateStoreError) as got:
        s.counts()
    assert not isinstance(got.value, StateStoreUnavailable)
    assert "unreachable for" in str(got.value) and s.outages >= 2
