"""The StateStore contract, run against every backend.

Each backend is a factory that opens a store on one database; calling it twice
gives two independent connections to the same data (for reopen and
concurrency tests). PostgreSQL runs on a fresh schema per test (see
tests/state/pg.py: unreachable -> fail under CI=true, skip otherwise).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from bsky_backfill.models import DeadLetter
from bsky_backfill.state.base import (
    Account,
    CommittedFile,
    FailedRepo,
    HostPause,
    Identity,
    ReclaimsExpiredLeases,
    RepoDone,
    RepoFailed,
    RepoState,
    SharesHostBudget,
    StateStore,
)
from bsky_backfill.state.errors import FilesChangedError, StateStoreError
from bsky_backfill.state.postgres import PostgresStateStore
from bsky_backfill.state.sqlite import SqliteStateStore
from tests.state.pg import fresh_schema_url

T0 = dt.datetime(2024, 5, 1, 12, 0, tzinfo=dt.UTC)
Factory = Callable[[], StateStore]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Factory]:
    opened: list[StateStore] = []
    with contextlib.ExitStack() as stack:
        if request.param == "postgresql":
            url = stack.enter_context(fresh_schema_url())

        def open_store() -> StateStore:
            if request.param == "sqlite":
                store: StateStore = SqliteStateStore(tmp_path / "_state" / "state.sqlite")
            else:
                store = PostgresStateStore(url)
            opened.append(store)
            return store

        yield open_store
        for s in opened:
            s.close()


@pytest.fixture
def store(backend: Factory) -> StateStore:
    return backend()


def ident(did: str, host: str) -> Identity:
    return Identity(did=did, pds=f"https://{host}", host=host, signing_key=f"key-{did}")


def dids(n: int, prefix: str = "a") -> list[str]:
    return [f"did:plc:{prefix}{i:05d}" for i in range(n)]


def resolved(store: StateStore, hosts: dict[str, list[str]]) -> None:
    for host, ds in hosts.items():
        store.enqueue(ds)
        store.set_identities([ident(d, host) for d in ds])


# -- queue ---------------------------------------------------------------------------


def test_enqueue_is_idempotent(store: StateStore) -> None:
    assert store.enqueue(dids(3)) == 3
    assert store.enqueue(dids(5)) == 2
    assert store.enqueue([]) == 0
    assert store.counts()[RepoState.PENDING] == 5


def test_enqueue_streams_a_generator_across_chunks(store: StateStore) -> None:
    n = 45_123  # more than one internal chunk
    assert store.enqueue(f"did:plc:{i:09d}" for i in range(n)) == n
    assert store.enqueue(f"did:plc:{i:09d}" for i in range(n + 10)) == 10
    assert store.counts()[RepoState.PENDING] == n + 10


def test_enqueue_keeps_existing_state(store: StateStore) -> None:
    resolved(store, {"h1": ["did:plc:x"]})
    store.claim("h1", 10, T0)
    store.enqueue(["did:plc:x"])
    assert store.counts()[RepoState.IN_PROGRESS] == 1


def test_enqueue_resolved(store: StateStore) -> None:
    assert store.enqueue_resolved([ident("did:plc:a", "h1"), ident("did:plc:b", "h1")]) == 2
    assert store.unresolved(10) == []
    # Seen again with a new PDS while still pending: the identity moves.
    assert store.enqueue_resolved([ident("did:plc:a", "h2"), ident("did:plc:c", "h2")]) == 1
    assert store.pending_hosts(T0) == {"h1": 1, "h2": 2}
    # Claimed repos keep the identity they were claimed with.
    [task] = store.claim("h1", 5, T0)
    assert store.enqueue_resolved([ident(task.did, "h3")]) == 0
    assert "h3" not in store.pending_hosts(T0)


def test_unresolved_and_set_identities(store: StateStore) -> None:
    ds = dids(6)
    store.enqueue(ds)
    assert store.unresolved(4) == ds[:4]  # oldest first
    assert store.unresolved(3, exclude=[ds[0], ds[2]]) == [ds[1], ds[3], ds[4]]
    assert store.pending_hosts(T0) == {}
    store.set_identities([ident(ds[0], "h1"), ident(ds[1], "h2"), ident(ds[2], "h1")])
    assert store.unresolved(10) == ds[3:]
    assert store.pending_hosts(T0) == {"h1": 2, "h2": 1}
    assert store.counts()[RepoState.PENDING] == 6


def test_claim_is_limited_per_host_and_returns_identity(store: StateStore) -> None:
    resolved(store, {"h1": dids(5, "a"), "h2": dids(3, "b")})
    first = store.claim("h1", 3, T0)
    assert len(first) == 3
    assert all(t.host == "h1" and t.pds == "https://h1" and t.attempts == 0 for t in first)
    assert all(t.signing_key == f"key-{t.did}" for t in first)
    second = store.claim("h1", 10, T0)
    assert len(second) == 2
    assert not {t.did for t in first} & {t.did for t in second}
    assert store.claim("h1", 10, T0) == []
    assert store.pending_hosts(T0) == {"h2": 3}
    assert store.counts()[RepoState.IN_PROGRESS] == 5


def test_claim_never_hands_a_repo_out_twice(backend: Factory) -> None:
    setup = backend()
    resolved(setup, {"h1": dids(400)})
    stores = [backend() for _ in range(4)]
    got: list[list[str]] = [[] for _ in stores]

    def worker(i: int) -> None:
        while batch := stores[i].claim("h1", 7, T0):
            got[i].extend(t.did for t in batch)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    claimed = [d for g in got for d in g]
    assert len(claimed) == 400
    assert set(claimed) == set(dids(400))


def test_claim_skips_repos_not_yet_due(store: StateStore) -> None:
    resolved(store, {"h1": ["did:plc:a", "did:plc:b"]})
    [a, b] = sorted(store.claim("h1", 2, T0), key=lambda t: t.did)
    later = T0 + dt.timedelta(minutes=5, microseconds=7)
    store.retry_later(a.did, 1, later, "HTTP 503")
    store.retry_later(b.did, 1, T0, "reset")
    assert store.pending_hosts(T0) == {"h1": 1}
    assert store.next_due() == T0
    assert [t.did for t in store.claim("h1", 10, T0)] == [b.did]
    assert store.next_due() == later  # exact to the microsecond, aware UTC
    assert store.claim("h1", 10, later - dt.timedelta(microseconds=1)) == []
    assert store.pending_hosts(later) == {"h1": 1}
    [again] = store.claim("h1", 10, later)
    assert (again.did, again.attempts) == (a.did, 1)
    assert store.next_due() is None


def test_unresolved_backoff(store: StateStore) -> None:
    # unresolved() has no `now`: the wall clock decides when a backoff is over.
    now = dt.datetime.now(dt.UTC)
    store.enqueue(["did:plc:a", "did:plc:b"])
    assert store.next_due() is not None
    store.retry_later("did:plc:a", 1, now + dt.timedelta(hours=1), "PLC 503")
    store.retry_later("did:plc:b", 1, now - dt.timedelta(seconds=1), "PLC 503")
    assert store.unresolved(10) == ["did:plc:b"]
    store.set_identities([ident("did:plc:b", "h1")])
    assert store.unresolved(10) == []
    assert store.next_due() == now - dt.timedelta(seconds=1)  # b: resolved, due
    [task] = store.claim("h1", 5, now)
    assert task.attempts == 1
    # Only a's backoff is left: next_due says when to look again.
    assert store.next_due() == now + dt.timedelta(hours=1)


def test_retry_later_never_reopens_a_finished_repo(store: StateStore) -> None:
    resolved(store, {"h1": ["did:plc:a"]})
    store.claim("h1", 1, T0)
    store.commit([], [RepoDone("did:plc:a", "rev1", 0)], [], [])
    store.retry_later("did:plc:a", 3, T0, "late")
    assert store.counts()[RepoState.DONE] == 1
    assert store.pending_hosts(T0) == {}


def test_recover_puts_in_progress_back(store: StateStore) -> None:
    resolved(store, {"h1": dids(4)})
    store.claim("h1", 3, T0)
    assert store.recover() == 3
    assert store.recover() == 0
    assert store.counts()[RepoState.PENDING] == 4
    assert len(store.claim("h1", 10, T0)) == 4


def test_recover_takes_back_only_claims_and_keeps_their_bookkeeping(store: StateStore) -> None:
    """`StateStore.recover`'s one meaning: orphaned claims (here the store's own) go
    back to pending as they were; pending, done and failed repos are not touched."""
    a, b, c, d, e = dids(5)
    resolved(store, {"h1": [a, b, c, d, e]})
    claimed = {t.did for t in store.claim("h1", 5, T0)}
    assert claimed == {a, b, c, d, e}
    later = T0 + dt.timedelta(hours=1)
    store.retry_later(a, 2, T0, "Http503")  # attempts 2 and a failure time...
    store.retry_later(e, 1, later, "Http503")  # ...and a repo not due yet
    (again,) = store.claim("h1", 1, T0)  # a, claimed again
    store.commit([], [RepoDone(b, "rev-b", 1)], [RepoFailed(c, "RepoTakendown", "gone")], [])
    assert store.recover() == 2  # a and d
    assert store.recover() == 0
    counts = store.counts()
    assert (counts[RepoState.DONE], counts[RepoState.FAILED]) == (1, 1)
    assert counts[RepoState.PENDING] == 3 and counts.get(RepoState.IN_PROGRESS, 0) == 0
    back = {t.did: t for t in store.claim("h1", 5, T0)}
    assert set(back) == {a, d}  # e keeps its due time
    assert (back[a].attempts, back[a].failing_since) == (again.attempts, again.failing_since)
    assert back[a].attempts == 2 and back[a].failing_since is not None
    assert {t.did for t in store.claim("h1", 5, later)} == {e}


def test_naive_datetimes_are_refused(store: StateStore) -> None:
    with pytest.raises(ValueError, match="naive"):
        store.claim("h1", 1, dt.datetime(2024, 1, 1))


# -- ledger --------------------------------------------------------------------------


def letter(did: str, code: str, uri: str | None = None, stage: str = "fetch") -> DeadLetter:
    return DeadLetter(did=did, uri=uri, stage=stage, error=code, message=f"{code}!", failed_at=T0)


def test_commit_marks_done_and_failed_and_counts_dead_letters(store: StateStore) -> None:
    resolved(store, {"h1": dids(4)})
    a, b, c, d = (t.did for t in sorted(store.claim("h1", 4, T0), key=lambda t: t.did))
    files = [
        CommittedFile("app.bsky.feed.post/part-1.parquet", "app.bsky.feed.post", 10),
        CommittedFile("app.bsky.feed.like/part-2.parquet", "app.bsky.feed.like", 5),
        CommittedFile("_deadletters/part-3.parquet", "_deadletters", 3),
    ]
    store.commit(
        files,
        [RepoDone(a, "rev-a", 12), RepoDone(b, None, 3)],
        [RepoFailed(c, "RepoTakendown", "gone")],
        [
            letter(a, "InvalidRecord", f"at://{a}/app.bsky.feed.post/1", "validate"),
            letter(a, "InvalidRecord", f"at://{a}/app.bsky.feed.post/2", "validate"),
            letter(c, "RepoTakendown"),
        ],
    )
    counts = store.counts()
    assert counts[RepoState.DONE] == 2
    assert counts[RepoState.FAILED] == 1
    assert counts[RepoState.IN_PROGRESS] == 1  # d: not in this batch
    assert sorted(store.committed_files(), key=lambda f: f.path) == sorted(
        files, key=lambda f: f.path
    )
    st = store.status()
    assert st.dead_letters_by_code == {"InvalidRecord": 2, "RepoTakendown": 1}
    assert st.records_by_collection == {"app.bsky.feed.post": 10, "app.bsky.feed.like": 5}
    # d was claimed but not committed: a crash now would bring it back.
    assert store.recover() == 1
    assert d in {t.did for t in store.claim("h1", 10, T0)}


def test_commit_is_all_or_nothing(store: StateStore) -> None:
    resolved(store, {"h1": ["did:plc:a", "did:plc:b"]})
    store.claim("h1", 2, T0)
    f = CommittedFile("app.bsky.feed.post/part-1.parquet", "app.bsky.feed.post", 1)
    store.commit([f], [RepoDone("did:plc:a", None, 1)], [], [])
    with pytest.raises(StateStoreError):
        # The same path twice would mean the same rows twice: refused, nothing applied.
        store.commit(
            [f], [RepoDone("did:plc:b", None, 1)], [], [letter("did:plc:b", "InvalidRecord")]
        )
    assert store.counts()[RepoState.DONE] == 1
    assert store.counts()[RepoState.IN_PROGRESS] == 1
    assert store.status().dead_letters_by_code == {}
    assert len(store.committed_files()) == 1


def test_commit_of_an_unknown_did_still_records_it(store: StateStore) -> None:
    store.commit([], [RepoDone("did:plc:stray", None, 0)], [], [])
    assert store.counts()[RepoState.DONE] == 1


def test_dead_letter_counts_accumulate(store: StateStore) -> None:
    for i in range(3):
        store.commit([], [], [], [letter(f"did:plc:{i}", "RepoNotFound")])
    store.commit([], [], [], [letter("did:plc:x", "RepoNotFound", stage="resolve")])
    assert store.status().dead_letters_by_code == {"RepoNotFound": 4}


def test_status_numbers(store: StateStore) -> None:
    resolved(store, {"h1": dids(5, "a"), "h2": dids(2, "b")})
    store.enqueue(["did:plc:unresolved"])
    h1 = store.claim("h1", 4, T0)
    store.claim("h2", 1, T0)
    store.commit(
        [CommittedFile("app.bsky.graph.follow/p.parquet", "app.bsky.graph.follow", 7)],
        [RepoDone(h1[0].did, None, 7), RepoDone(h1[1].did, None, 0)],
        [RepoFailed(h1[2].did, "VerificationFailed", "bad sig")],
        [letter(h1[2].did, "VerificationFailed", stage="verify")],
    )
    st = store.status()
    assert (st.total, st.done, st.failed, st.pending, st.in_progress) == (8, 2, 1, 3, 2)
    hosts = {h.host: h for h in st.hosts}
    assert set(hosts) == {"h1", "h2"}
    assert (hosts["h1"].total, hosts["h1"].done, hosts["h1"].failed) == (5, 2, 1)
    assert hosts["h1"].pending == 2  # one pending + one in progress: not finished
    assert (hosts["h2"].total, hosts["h2"].pending) == (2, 2)
    assert st.hosts[0].host == "h1"  # biggest first
    assert st.records_by_collection == {"app.bsky.graph.follow": 7}
    assert st.dead_letters_by_code == {"VerificationFailed": 1}


# -- small tables and lifecycle ----------------------------------------------------------


def test_meta(store: StateStore) -> None:
    assert store.get_meta("collections") is None
    store.set_meta("collections", "a,b")
    store.set_meta("collections", "c")
    assert store.get_meta("collections") == "c"


def test_reopen_keeps_everything_and_migrates_once(backend: Factory) -> None:
    first = backend()
    resolved(first, {"h1": dids(3)})
    first.set_meta("k", "v")
    version = first.get_meta("schema_version")
    assert version is not None and int(version) >= 1
    first.close()
    second = backend()
    third = backend()  # concurrent open of an up-to-date store: no second migration
    assert second.get_meta("schema_version") == version
    assert second.get_meta("k") == "v"
    assert third.pending_hosts(T0) == {"h1": 3}


def test_refuses_a_store_from_a_newer_version(backend: Factory) -> None:
    s = backend()
    s.set_meta("schema_version", "9999")
    s.close()
    with pytest.raises(StateStoreError, match="newer"):
        backend()


def test_cursors(store: StateStore) -> None:
    assert store.get_cursor("plc") is None
    store.set_cursor("plc", "2024-01-01T00:00:00Z")
    store.set_cursor("plc", "2024-02-01T00:00:00Z")
    assert store.get_cursor("plc") == "2024-02-01T00:00:00Z"


def test_commit_sets_and_deletes_cursors_with_its_files(store: StateStore) -> None:
    store.set_cursor("list:did:plc:a", "page1")
    f = CommittedFile("app.bsky.feed.post/part-1.parquet", "app.bsky.feed.post", 1)
    store.commit([f], [], [], [], cursors=[("list:did:plc:a", None), ("list:did:plc:b", "p2")])
    assert store.get_cursor("list:did:plc:a") is None
    assert store.get_cursor("list:did:plc:b") == "p2"
    with pytest.raises(StateStoreError):  # the same file again: nothing of it applies
        store.commit([f], [], [], [], cursors=[("list:did:plc:b", "p3")])
    assert store.get_cursor("list:did:plc:b") == "p2"


def test_claim_starts_the_biggest_known_repos_first(store: StateStore) -> None:
    """A repo's CAR size, recorded when it landed, orders the next run's claims of its
    host: known sizes biggest first, then unknown ones in due order."""
    a, b, c, d, e, f, g = dids(7)
    resolved(store, {"h1": [a, b, c, d, e, f], "h2": [g]})
    store.claim("h1", 6, T0)
    store.claim("h2", 1, T0)
    sizes = {a: 10, b: 9_000, c: None, d: 300, e: 70_000, g: 1 << 40}
    store.commit([], [RepoDone(x, "r1", 1, car_bytes=n) for x, n in sizes.items()], [], [])
    store.retry_later(f, 1, T0, "timeout")  # never landed: its size is unknown
    assert store.mark_refresh() == 6
    store.retry_later(e, 0, T0 + dt.timedelta(hours=1), "paused")  # the biggest, not due
    order = []
    while batch := store.claim("h1", 1, T0):
        order += [t.did for t in batch]
    assert order == [b, d, a, c, f]  # c was due at once (refresh), f at T0
    assert [t.did for t in store.claim("h1", 5, T0 + dt.timedelta(hours=1))] == [e]
    # A landing whose size is not known (a refresh's diff, list mode) keeps the
    # size stored before; one claim fills its limit across both groups.
    store.commit([], [RepoDone(x, "r2", 1) for x in (a, b, c, d, e)], [], [])
    store.commit([], [RepoDone(f, "r2", 1, car_bytes=20)], [], [])
    assert store.mark_refresh() == 6
    assert {t.did for t in store.claim("h1", 4, T0)} == {e, b, d, f}
    assert [t.did for t in store.claim("h1", 4, T0)] == [a, c]


def test_mark_refresh_reopens_done_repos_with_their_rev(store: StateStore) -> None:
    resolved(store, {"h1": ["did:plc:a", "did:plc:b", "did:plc:c"]})
    a, b, c = sorted(store.claim("h1", 3, T0), key=lambda t: t.did)
    assert not a.refresh and a.since is None
    store.commit(
        [],
        [RepoDone(a.did, "rev-a", 1), RepoDone(b.did, None, 0)],
        [RepoFailed(c.did, "X", "x")],
        [],
    )
    assert store.mark_refresh() == 2  # done ones only; failed stays failed
    assert store.counts()[RepoState.PENDING] == 2
    tasks = {t.did: t for t in store.claim("h1", 10, T0)}
    assert set(tasks) == {a.did, b.did}
    assert (tasks[a.did].refresh, tasks[a.did].since) == (True, "rev-a")
    assert (tasks[b.did].refresh, tasks[b.did].since) == (True, None)
    # A refresh that learns no new rev keeps the old one; the refresh mark is cleared.
    store.commit([], [RepoDone(a.did, None, 1)], [], [])
    assert store.mark_refresh() == 1
    [again] = store.claim("h1", 10, T0)
    assert (again.did, again.since) == (a.did, "rev-a")


def test_withdraw_removes_only_pending_repos(store: StateStore) -> None:
    resolved(store, {"h1": ["did:plc:a", "did:plc:b", "did:plc:c"]})
    store.enqueue(["did:plc:d"])
    claimed = store.claim("h1", 1, T0)[0].did
    store.commit([], [RepoDone(claimed, "r", 0)], [], [])
    pending = sorted({"did:plc:a", "did:plc:b", "did:plc:c"} - {claimed})
    gone = store.withdraw([claimed, pending[0], "did:plc:d", "did:plc:never"])
    assert gone == [pending[0], "did:plc:d", "did:plc:never"]
    assert store.counts()[RepoState.DONE] == 1
    assert store.counts()[RepoState.PENDING] == 1  # pending[1] is left alone
    assert store.unresolved(10) == []
    assert store.withdraw([]) == []


def test_host_map_streams_every_resolved_repo_in_batches(store: StateStore) -> None:
    resolved(store, {"h1": dids(5, "a"), "h2": dids(3, "b")})
    store.enqueue(dids(2, "u"))  # not resolved: no host, not in the map
    batches = list(store.host_map(batch=3))
    assert [len(b) for b in batches] == [3, 3, 2]
    pairs = {pair for b in batches for pair in b}
    assert pairs == {(d, "h1") for d in dids(5, "a")} | {(d, "h2") for d in dids(3, "b")}
    # The store stays usable after (and while nothing else holds) the stream.
    assert sum(h.total for h in store.status().hosts if h.host) == 8


# -- long runs: failure times, --retry-failed, host pauses (issue 12) ------------------------


def test_first_failure_time_starts_with_a_counted_failure_only(store: StateStore) -> None:
    resolved(store, {"h1": ["did:plc:a"]})
    [task] = store.claim("h1", 1, T0)
    assert task.failing_since is None and store.failure_of("did:plc:a") == (0, None)
    # put back without spending an attempt (a paused host): no failure time yet
    store.retry_later("did:plc:a", 0, T0, "HostPaused: down")
    assert store.failure_of("did:plc:a") == (0, None)
    store.claim("h1", 1, T0)
    before = dt.datetime.now(dt.UTC)
    store.retry_later("did:plc:a", 1, T0, "Http503: busy")
    attempts, since = store.failure_of("did:plc:a")
    assert attempts == 1 and since is not None
    assert before - dt.timedelta(seconds=1) <= since <= dt.datetime.now(dt.UTC)
    [task] = store.claim("h1", 1, T0)
    assert task.failing_since == since and task.attempts == 1
    store.retry_later("did:plc:a", 2, T0, "Http503: busy")  # later failures keep it
    assert store.failure_of("did:plc:a") == (2, since)
    store.claim("h1", 1, T0)
    store.commit([], [RepoDone("did:plc:a", "r1", 0)], [], [])
    assert store.failure_of("did:plc:a")[1] is None  # landed: the budget is spent no more
    assert store.failure_of("did:plc:nobody") == (0, None)
    # resolution failures of a DID not yet resolved count the same way
    store.enqueue(["did:plc:u"])
    store.retry_later("did:plc:u", 1, T0, "ConnectionError: refused")
    assert store.failure_of("did:plc:u")[1] is not None


def _fail_some(store: StateStore) -> list[str]:
    """Four failed repos (two retryable codes, one verdict, one resolve failure)."""
    resolved(store, {"h1": dids(4)})
    a, b, c, d = (t.did for t in sorted(store.claim("h1", 4, T0), key=lambda t: t.did))
    store.commit(
        [],
        [],
        [
            RepoFailed(a, "BlockedPrivateAddress", "private", "fetch"),
            RepoFailed(b, "BlockedPrivateAddress", "private", "fetch"),
            RepoFailed(c, "RepoTakendown", "gone", "fetch"),
            RepoFailed(d, "ResolveFailed", "PLC down", "resolve"),
        ],
        [
            letter(a, "BlockedPrivateAddress"),
            letter(b, "BlockedPrivateAddress"),
            letter(c, "RepoTakendown"),
            letter(d, "ResolveFailed", stage="resolve"),
            letter(a, "InvalidRecord", f"at://{a}/app.bsky.feed.post/1", "validate"),
        ],
    )
    return [a, b, c, d]


def test_failed_repos_page_by_code(store: StateStore) -> None:
    a, b, c, d = _fail_some(store)
    st = store.status()
    assert st.failed_by_code == {"BlockedPrivateAddress": 2, "RepoTakendown": 1, "ResolveFailed": 1}
    every = store.failed_repos()
    assert [r.did for r in every] == [a, b, c, d]
    assert every[3] == FailedRepo(d, "ResolveFailed", "resolve")
    assert [r.did for r in store.failed_repos(["RepoTakendown"])] == [c]
    assert [r.did for r in store.failed_repos(exclude=["RepoTakendown"])] == [a, b, d]
    first = store.failed_repos(limit=2)
    assert [r.did for r in first] == [a, b]
    assert [r.did for r in store.failed_repos(after=first[-1].did)] == [c, d]


def test_reopen_failed_supersedes_their_dead_letters_once(store: StateStore) -> None:
    a, b, _, d = _fail_some(store)
    at = T0 + dt.timedelta(days=1)
    marker = CommittedFile("_superseded/part-x.parquet", "_superseded", 3)
    wanted = store.failed_repos(exclude=["RepoTakendown"])
    assert store.reopen_failed(wanted, at, marker) == 3
    assert store.reopen_failed(wanted, at) == 0  # no longer failed: nothing twice
    st = store.status()
    assert st.failed_by_code == {"RepoTakendown": 1}
    # each repo's latest verdict counted once: the reopened ones' letters are history
    assert st.dead_letters_by_code == {"RepoTakendown": 1, "InvalidRecord": 1}
    assert st.superseded_by_code == {"BlockedPrivateAddress": 2, "ResolveFailed": 1}
    assert marker in store.committed_files()
    assert (st.pending, st.failed) == (3, 1)
    # back as new: resolved again (identity forgotten), attempts and failure time reset
    assert sorted(store.unresolved(10)) == [a, b, d]
    assert store.failure_of(a) == (0, None)
    # failing again counts again, once
    store.set_identities([ident(a, "h1")])
    store.claim("h1", 1, T0)
    store.commit([], [], [RepoFailed(a, "Http503", "down", "fetch")], [letter(a, "Http503")])
    st = store.status()
    assert st.dead_letters_by_code == {"RepoTakendown": 1, "InvalidRecord": 1, "Http503": 1}
    assert st.failed_by_code == {"RepoTakendown": 1, "Http503": 1}


def test_reopen_keeps_a_refresh_a_refresh(store: StateStore) -> None:
    resolved(store, {"h1": ["did:plc:r"]})
    store.claim("h1", 1, T0)
    store.commit([], [RepoDone("did:plc:r", "rev1", 5)], [], [])
    store.mark_refresh()
    store.claim("h1", 1, T0)
    store.commit([], [], [RepoFailed("did:plc:r", "Timeout", "slow", "fetch")], [])
    assert store.reopen_failed(store.failed_repos(), T0) == 1
    store.set_identities([ident("did:plc:r", "h1")])
    [task] = store.claim("h1", 1, T0)
    assert task.refresh and task.since == "rev1"  # never a whole refetch of landed rows


def test_next_unresolved_says_when_a_backing_off_did_is_due(store: StateStore) -> None:
    assert store.next_unresolved() is None
    store.enqueue(["did:plc:a", "did:plc:b"])
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=2)
    store.retry_later("did:plc:a", 1, later, "ConnectionError")
    store.retry_later("did:plc:b", 1, later + dt.timedelta(hours=1), "ConnectionError")
    assert store.next_unresolved() == later
    assert store.unresolved(10) == []  # due by the wall clock only later
    store.set_identities([ident("did:plc:a", "h1"), ident("did:plc:b", "h1")])
    assert store.next_unresolved() is None  # resolved ones are the scheduler's


def test_host_pauses_are_set_listed_and_cleared(store: StateStore) -> None:
    until = T0 + dt.timedelta(minutes=5)
    store.set_host_pauses(
        [HostPause("pds.a", until, "unreachable (ConnectionError)"),
         HostPause("plc.directory", None, "given up: ConnectionError")]
    )  # fmt: skip
    got = {p.host: p for p in store.host_pauses()}
    assert got["pds.a"] == HostPause("pds.a", until, "unreachable (ConnectionError)")
    assert got["plc.directory"].until is None
    assert {p.host for p in store.status().paused_hosts} == {"pds.a", "plc.directory"}
    store.set_host_pauses([HostPause("pds.a", None, "")])
    assert [p.host for p in store.host_pauses()] == ["plc.directory"]


def test_replace_files_swaps_in_one_transaction(backend: Factory) -> None:
    store = backend()
    post = "app.bsky.feed.post"
    old = [CommittedFile(f"{post}/part-a-{i}.parquet", post, 10) for i in range(3)]
    store.commit(old, [RepoDone("did:plc:a", "r1", 30)], [], [])
    before = store.status().records_by_collection[post]
    new = [CommittedFile(f"{post}/compact-2024-01-w-0.parquet", post, 30)]
    store.replace_files([f.path for f in old], new)
    assert {f.path for f in store.committed_files()} == {new[0].path}
    assert sorted(store.retired_files()) == sorted(f.path for f in old)
    assert store.status().records_by_collection[post] == before  # same rows, fewer files
    # a second swap of the same (now retired) files applies nothing
    again = [CommittedFile(f"{post}/compact-2024-01-x-0.parquet", post, 30)]
    with pytest.raises(FilesChangedError) as err:
        store.replace_files([old[0].path, new[0].path], again)
    assert err.value.paths == (old[0].path,)
    assert {f.path for f in backend().committed_files()} == {new[0].path}
    store.forget_retired([old[0].path, old[1].path])
    assert store.retired_files() == [old[2].path]


def test_key_index_rides_in_the_commit(store: StateStore) -> None:
    """`run --refresh` reads a repo's key index from the store (no dataset scan): the
    commit that lands the repo writes it, a later one replaces or drops it."""
    resolved(store, {"h1": ["did:plc:a", "did:plc:b"]})
    store.claim("h1", 2, T0)
    big = bytes(range(256)) * 400
    store.commit(
        [], [RepoDone("did:plc:a", "r1", 1, keys=b"v1"), RepoDone("did:plc:b", "r1", 1, keys=big)],
        [], [],
    )  # fmt: skip
    assert store.repo_keys("did:plc:a") == b"v1"
    assert store.repo_keys("did:plc:b") == big
    assert store.repo_keys("did:plc:none") is None
    assert store.mark_refresh() == 2
    assert len(store.claim("h1", 2, T0)) == 2
    store.commit([], [RepoDone("did:plc:a", "r2", 1, keys=b"v2")], [], [])
    assert store.repo_keys("did:plc:a") == b"v2"
    # Landed again without an index (list mode, big repo): the stale one goes.
    store.commit([], [RepoDone("did:plc:b", "r2", 1)], [], [])
    assert store.repo_keys("did:plc:b") is None
    assert store.repo_keys("did:plc:a") == b"v2"


def test_update_identity_moves_a_claimed_repo_to_its_new_host(store: StateStore) -> None:
    """A refresh that finds the account moved: the identity changes whatever the state,
    and the repo, put back, is claimed under its new host."""
    resolved(store, {"h1": ["did:plc:a"]})
    [task] = store.claim("h1", 1, T0)
    store.update_identity(ident("did:plc:a", "h2"))
    store.retry_later(task.did, task.attempts, T0, "moved to h2")
    assert store.claim("h1", 1, T0) == []
    [again] = store.claim("h2", 1, T0)
    assert (again.did, again.host, again.attempts) == ("did:plc:a", "h2", task.attempts)
    assert {h.host for h in store.status().hosts if h.total} == {"h2"}


def test_handles_ride_with_the_identity_and_a_verified_one_stays_verified(
    store: StateStore,
) -> None:
    """The `_accounts` columns (issue 19): a claimed repo carries its document's handle
    and whether the run verified it; a later unverified sighting of the same handle
    (the DID also listed as a DID) keeps the verification, another handle drops it."""
    a, b, c = "did:plc:a", "did:plc:b", "did:plc:c"
    store.enqueue([a, b, c])

    def with_handle(did: str, handle: str | None, verified: bool) -> Identity:
        return dataclasses.replace(ident(did, "h1"), handle=handle, handle_verified=verified)

    store.set_identities([with_handle(a, "a.test", True), with_handle(b, "b.test", True)])
    store.set_identities([with_handle(a, "a.test", False), with_handle(b, "new-b.test", False)])
    store.enqueue_resolved([with_handle(c, None, False)])
    store.enqueue_resolved([with_handle(c, None, False)])  # a repeat: still no handle
    tasks = {t.did: t for t in store.claim("h1", 10, T0)}
    assert {d: (t.handle, t.handle_verified) for d, t in tasks.items()} == {
        a: ("a.test", True),
        b: ("new-b.test", False),
        c: (None, False),
    }
    assert tasks[a].account == Account(pds="https://h1", handle="a.test", handle_verified=True)
    store.update_identity(with_handle(a, "a.test", False))  # a refresh sees it again
    store.update_identity(with_handle(c, "c.test", False))
    store.retry_later(a, 0, T0, "again")
    store.retry_later(c, 0, T0, "again")
    again = {t.did: (t.handle, t.handle_verified) for t in store.claim("h1", 10, T0)}
    assert again == {a: ("a.test", True), c: ("c.test", False)}


def test_backend_only_capabilities_are_declared(store: StateStore) -> None:
    """What only PostgreSQL does is a capability Protocol the engine checks with
    `isinstance` (engine/takeover.py, engine/scheduler.py)."""
    shared = isinstance(store, PostgresStateStore)
    assert isinstance(store, ReclaimsExpiredLeases) is shared
    assert isinstance(store, SharesHostBudget) is shared


# -- host leases (issue 18) ----------------------------------------------------------


def test_a_host_is_leased_to_one_owner_of_a_team_at_a_time(backend: Factory) -> None:
    first, second = backend(), backend()  # two processes of one team
    minute = dt.timedelta(minutes=1)
    assert first.acquire_host("team", "h1", "p1", T0, T0 + minute)
    assert not second.acquire_host("team", "h1", "p2", T0, T0 + minute)
    assert second.acquire_host("team", "h2", "p2", T0, T0 + minute)
    # The owner renews; another team (another machine's run) has leases of its own.
    assert first.acquire_host("team", "h1", "p1", T0 + minute / 2, T0 + 2 * minute)
    assert second.acquire_host("other", "h1", "q1", T0, T0 + minute)
    # A release by someone else's name changes nothing; the owner's frees the host.
    second.release_host("team", "h1", "p2")
    assert not second.acquire_host("team", "h1", "p2", T0 + minute, T0 + 2 * minute)
    first.release_host("team", "h1", "p1")
    assert second.acquire_host("team", "h1", "p2", T0 + minute, T0 + 2 * minute)
    assert not first.acquire_host("team", "h1", "p1", T0 + minute, T0 + 2 * minute)


def test_an_expired_host_lease_goes_to_whoever_asks(backend: Factory) -> None:
    """A killed process stops renewing: once its lease is over, another takes the host."""
    first, second = backend(), backend()
    until = T0 + dt.timedelta(seconds=30)
    assert first.acquire_host("team", "h1", "p1", T0, until)
    assert not second.acquire_host("team", "h1", "p2", until - dt.timedelta(microseconds=1), T0)
    assert second.acquire_host("team", "h1", "p2", until, until + dt.timedelta(seconds=30))
    # The one that lost it cannot renew: its renewal says so.
    assert not first.acquire_host("team", "h1", "p1", until, until + dt.timedelta(seconds=30))


def test_release_hosts_frees_an_owner_or_a_whole_team(backend: Factory) -> None:
    store = backend()
    later = T0 + dt.timedelta(minutes=1)
    for host, owner in (("h1", "p1"), ("h2", "p1"), ("h3", "p2")):
        assert store.acquire_host("team", host, owner, T0, later)
    assert store.acquire_host("other", "h1", "q1", T0, later)
    assert store.release_hosts("team", "p1") == 2  # p1's end
    assert store.acquire_host("team", "h1", "p3", T0, later)
    assert not store.acquire_host("team", "h3", "p3", T0, later)
    assert store.release_hosts("team") == 2  # a take-over: every process of it is gone
    assert store.acquire_host("team", "h3", "p4", T0, later)
    # The other team's lease was left alone.
    assert not store.acquire_host("other", "h1", "q2", T0, later)
    assert store.release_hosts("nobody", "p1") == 0


def test_racing_processes_never_share_a_host(backend: Factory) -> None:
    stores = [backend() for _ in range(3)]
    hosts = [f"pds{i}" for i in range(60)]
    won: list[list[str]] = [[] for _ in stores]
    later = T0 + dt.timedelta(minutes=1)

    def race(i: int) -> None:
        for host in hosts:
            if stores[i].acquire_host("team", host, f"p{i}", T0, later):
                won[i].append(host)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(h for w in won for h in w) == sorted(hosts)
