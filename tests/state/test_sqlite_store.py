"""What only the SQLite backend promises: pragmas, the counter triggers, cursors."""

from __future__ import annotations

import datetime as dt
import random
import sqlite3
from pathlib import Path

from bsky_backfill.models import DeadLetter
from bsky_backfill.state.base import Identity, RepoDone, RepoFailed
from bsky_backfill.state.sqlite import SqliteStateStore
from bsky_backfill.state.sqlite_schema import SCHEMA_VERSION

T0 = dt.datetime(2024, 5, 1, tzinfo=dt.UTC)


def test_wal_and_synchronous(tmp_path: Path) -> None:
    with SqliteStateStore(tmp_path / "s.sqlite") as s:
        c = s._conn
        assert c.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        s.commit([], [RepoDone("did:plc:a", None, 0)], [], [])
        # commit() runs with FULL and puts NORMAL back afterwards.
        assert c.execute("PRAGMA synchronous").fetchone()[0] == 1
        assert s.get_meta("schema_version") == str(SCHEMA_VERSION)


def test_counters_match_a_recount_after_random_operations(tmp_path: Path) -> None:
    rng = random.Random(7)
    s = SqliteStateStore(tmp_path / "s.sqlite")
    hosts = [f"h{i}" for i in range(4)]
    all_dids = [f"did:plc:{i:04d}" for i in range(300)]
    s.enqueue(all_dids[:200])
    s.enqueue_resolved(
        Identity(d, f"https://{h}", h, None)
        for d, h in zip(all_dids[150:], rng.choices(hosts, k=150), strict=True)
    )
    for _ in range(60):
        op = rng.randrange(5)
        if op == 0:
            todo = s.unresolved(20)
            s.set_identities([Identity(d, "https://x", rng.choice(hosts), None) for d in todo])
        elif op == 1:
            s.claim(rng.choice(hosts), rng.randrange(1, 15), T0)
        elif op == 2:
            tasks = s.claim(rng.choice(hosts), 10, T0)
            half = len(tasks) // 2
            s.commit(
                [],
                [RepoDone(t.did, None, 1) for t in tasks[:half]],
                [RepoFailed(t.did, "RepoNotFound", "x") for t in tasks[half:]],
                [DeadLetter(t.did, None, "fetch", "RepoNotFound", "x") for t in tasks[half:]],
            )
        elif op == 3:
            for t in s.claim(rng.choice(hosts), 5, T0):
                s.retry_later(
                    t.did, t.attempts + 1, T0 + dt.timedelta(seconds=rng.choice([0, 60])), "e"
                )
        else:
            s.recover()
    c = s._conn
    recount = dict(c.execute("SELECT state, count(*) FROM repos GROUP BY state").fetchall())
    assert {k.value: v for k, v in s.counts().items() if v} == recount
    by_host = c.execute(
        "SELECT host, state, count(*) FROM repos WHERE host IS NOT NULL GROUP BY host, state"
    ).fetchall()
    kept = c.execute("SELECT host, state, n FROM host_counts WHERE n > 0").fetchall()
    assert sorted(by_host) == sorted(kept)
    for now in (T0, T0 + dt.timedelta(seconds=61)):
        due = c.execute(
            """SELECT host, count(*) FROM repos WHERE state = 'pending' AND host IS NOT NULL
               AND next_attempt_at <= ? GROUP BY host""",
            ((now - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1),),
        ).fetchall()
        assert s.pending_hosts(now) == dict(due)
    assert sum(s.counts().values()) == 300
    s.close()


def test_hot_queries_use_their_indexes(tmp_path: Path) -> None:
    with SqliteStateStore(tmp_path / "s.sqlite") as s:
        c = s._conn

        def plan(sql: str) -> str:
            return " ".join(r[3] for r in c.execute("EXPLAIN QUERY PLAN " + sql).fetchall())

        p = plan(
            """SELECT did FROM repos WHERE state = 'pending' AND host = 'h'
               AND next_attempt_at <= 5 ORDER BY next_attempt_at LIMIT 3"""
        )
        assert "repos_claim" in p and "TEMP B-TREE" not in p
        assert "repos_claim" in plan(
            """SELECT did FROM repos WHERE state = 'pending' AND host IS NULL
               AND next_attempt_at <= 5 ORDER BY next_attempt_at, rowid LIMIT 3"""
        )
        for cond, index in (("host IS NOT NULL", "repos_due"), ("host IS NULL", "repos_claim")):
            p = plan(
                f"""SELECT next_attempt_at FROM repos WHERE state = 'pending' AND {cond}
                    ORDER BY next_attempt_at LIMIT 1"""
            )
            assert index in p and "TEMP B-TREE" not in p
        assert "repos_in_progress" in plan(
            "UPDATE repos SET state = 'pending' WHERE state = 'in_progress'"
        )


def test_cursors(tmp_path: Path) -> None:
    with SqliteStateStore(tmp_path / "s.sqlite") as s:
        assert s.get_cursor("plc") is None
        s.set_cursor("plc", "2024-01-01T00:00:00Z")
        s.set_cursor("plc", "2024-02-01T00:00:00Z")
        assert s.get_cursor("plc") == "2024-02-01T00:00:00Z"
    with SqliteStateStore(tmp_path / "s.sqlite") as s:
        assert s.get_cursor("plc") == "2024-02-01T00:00:00Z"


def test_a_second_process_can_read_while_writing(tmp_path: Path) -> None:
    path = tmp_path / "s.sqlite"
    with SqliteStateStore(path) as s:
        s.enqueue(["did:plc:a"])
        s._conn.execute("BEGIN IMMEDIATE")  # a writer holds the lock...
        try:
            reader = sqlite3.connect(path)
            (n,) = reader.execute("SELECT count(*) FROM repos").fetchone()
            assert n == 1  # ...and WAL readers are not blocked
            reader.close()
        finally:
            s._conn.rollback()
