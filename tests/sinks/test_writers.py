"""Several writers on one dataset: recovery settles dead writers and never a live one's batch.

Real files, real processes: `crash_child two` runs two writers in a child (one
with an open batch, one paused between its store commit and its renames)
while this process recovers, or SIGKILLs the child first.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bsky_backfill.models import DeadLetter, RepoExtract
from bsky_backfill.sinks import BatchRefused, DatasetWriter, DiscardedBatch, SinkConfig
from bsky_backfill.sinks.storage import LOCK_NAME, TMP_DIR, Storage, tmp_name
from bsky_backfill.state.base import RepoFailed, RepoState
from bsky_backfill.state.errors import LeaseLostError
from bsky_backfill.state.sqlite import SqliteStateStore
from tests.sinks.builders import POST, expected_uris, extract, rows_table, uris
from tests.sinks.crash_child import STORE, failing
from tests.sinks.test_crash import DIDS, child, prepare, recover_and_report

AGE = SinkConfig(liveness="age", stale_after=3600.0)


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def store(out: Path) -> Iterator[SqliteStateStore]:
    with SqliteStateStore(out / STORE) as s:
        yield s


def tmp_files(out: Path, writer: str) -> set[str]:
    return {p.name for p in (out / TMP_DIR / writer).glob("*.tmp")}


def event(proc: subprocess.Popen[str]) -> tuple[str, list[str], str]:
    """The child's next line: (event, DIDs, writer id)."""
    assert proc.stdout is not None
    name, dids, writer = json.loads(proc.stdout.readline())
    return name, dids, writer


def age(path: Path, seconds: float) -> None:
    """Make every file in a directory look `seconds` old."""
    when = dt.datetime.now(dt.UTC).timestamp() - seconds
    for p in path.iterdir():
        os.utime(p, (when, when))


def writer_dirs(out: Path) -> set[str]:
    return {p.name for p in (out / TMP_DIR).iterdir() if p.is_dir()}


# -- real processes ------------------------------------------------------------------


class Child:
    """`crash_child two`, paused: `holding` has an open batch (`opened`), `committing`
    has committed `stored` in the store and renamed nothing yet."""

    def __init__(self, out: Path) -> None:
        prepare(out, DIDS)
        self.proc = child(out, "two", stdin=subprocess.PIPE)
        e1, self.opened, self.holding = event(self.proc)
        e2, self.stored, self.committing = event(self.proc)
        assert (e1, e2) == ("open", "stored")


def test_recovery_leaves_a_live_writers_open_batch_alone(out: Path) -> None:
    c = Child(out)
    proc, holding, committing, stored = c.proc, c.holding, c.committing, c.stored
    try:
        before = tmp_files(out, holding)
        assert before and tmp_files(out, committing)
        with SqliteStateStore(out / STORE) as store:
            other = DatasetWriter(out, store)
            report = other.recover()
            other.close()
        # The open batch is untouched; the committed one is renamed by this
        # process, under its paused owner's feet.
        assert tmp_files(out, holding) == before
        assert (report.kept, report.deleted, report.missing) == (len(before), 0, ())
        assert (report.live_writers, report.dead_writers) == (2, 0)
        assert report.renamed > 0 and tmp_files(out, committing) == set()
        assert set(uris(out)) == set().union(*(expected_uris(d) for d in stored if not failing(d)))
        # Resumed, the owner finds its files renamed already; then the open batch commits.
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert event(proc) == ("done", [], "")
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    finished, report = recover_and_report(out)
    assert finished == set(c.opened) | set(stored)
    assert (report.renamed, report.deleted, report.dead_writers) == (0, 0, 0)


def test_a_sigkilled_writers_files_are_settled_by_the_next_recovery(out: Path) -> None:
    c = Child(out)
    c.proc.send_signal(signal.SIGKILL)
    c.proc.wait()
    assert writer_dirs(out) == {c.holding, c.committing}
    assert tmp_files(out, c.holding) and tmp_files(out, c.committing)
    # Left behind: one dir with an uncommitted batch, one with a committed, unrenamed one.
    finished, report = recover_and_report(out)
    assert finished == set(c.stored)
    assert report.dead_writers == 2 and report.renamed > 0 and report.deleted > 0
    assert writer_dirs(out) == set()
    # A new run fetches the repos of the lost open batch; all land once.
    with SqliteStateStore(out / STORE) as store:
        pending = store.claim("h1", 100, dt.datetime.now(dt.UTC))
        assert {t.did for t in pending} >= set(c.opened)
        store.recover()
    assert child(out, "loop").wait(timeout=60) == 0
    assert recover_and_report(out)[0] == set(DIDS)


# -- in process: layout, the age rule, discarding ------------------------------------


def test_each_writer_has_its_own_locked_dir(out: Path, store: SqliteStateStore) -> None:
    a, b = DatasetWriter(out, store), DatasetWriter(out, store)
    a.add(*extract("did:plc:a"))
    b.add(*extract("did:plc:b"))
    assert tmp_files(out, a.writer_id) and tmp_files(out, b.writer_id)
    assert writer_dirs(out) == {a.writer_id, b.writer_id}
    fd = os.open(out / TMP_DIR / a.writer_id / LOCK_NAME, os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):  # held for the writer's lifetime
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
    a.commit()
    b.commit()
    a.close()
    assert writer_dirs(out) == {b.writer_id}  # a clean close leaves nothing behind
    b.close()
    assert writer_dirs(out) == set()


def test_age_rule_judges_by_file_times_not_locks(out: Path, store: SqliteStateStore) -> None:
    """The rule for object stores, forced on a local disk: locks are not asked."""
    live = DatasetWriter(out, store, AGE)
    live.add(*extract("did:plc:live"))
    # A writer that looks dead by age (though its flock is held) with an open batch.
    stale = DatasetWriter(out, store, AGE)
    stale.add(*extract("did:plc:stale"))
    stale_files = tmp_files(out, stale.writer_id)
    age(out / TMP_DIR / stale.writer_id, 2 * 3600)
    # A lockless dir (a writer that died before creating its lock), fresh: alive.
    fresh = out / TMP_DIR / "20200101T000000-00000000000a"
    fresh.mkdir()
    (fresh / tmp_name(f"{POST}/part-x.parquet")).write_bytes(b"half")

    locker = DatasetWriter(out, store)
    by_lock = locker.recover()  # the lock rule: stale's flock is held; fresh is too young
    locker.close()
    assert (by_lock.deleted, by_lock.dead_writers, by_lock.live_writers) == (0, 0, 3)
    assert by_lock.kept == len(stale_files) + len(tmp_files(out, live.writer_id)) + 1

    recoverer = DatasetWriter(out, store, AGE)
    report = recoverer.recover()
    assert (report.deleted, report.dead_writers, report.live_writers) == (len(stale_files), 1, 2)
    assert not (out / TMP_DIR / stale.writer_id).exists()
    assert tmp_files(out, live.writer_id) and fresh.exists()
    age(fresh, 2 * 3600)
    assert recoverer.recover().deleted == 1 and not fresh.exists()
    live.commit()
    assert set(uris(out)) == expected_uris("did:plc:live")
    stale.abort()  # its files are gone: the hazard the lapsed-heartbeat check guards
    for w in (live, stale, recoverer):
        w.close()
    assert writer_dirs(out) == set()


def test_a_lapsed_heartbeat_refuses_the_commit(
    out: Path, store: SqliteStateStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = DatasetWriter(out, store, AGE)
    w.add(*extract("did:plc:a"))
    later = time.monotonic() + 3600
    monkeypatch.setattr("bsky_backfill.sinks.liveness.time.monotonic", lambda: later)
    with pytest.raises(BatchRefused, match="lapsed"):
        w.commit()
    monkeypatch.undo()
    assert store.committed_files() == [] and store.counts().get(RepoState.DONE, 0) == 0
    assert w.discard_batch() == DiscardedBatch(done=("did:plc:a",))
    assert tmp_files(out, w.writer_id) == set()
    w.add(*extract("did:plc:a"))  # usable again
    w.commit()
    assert set(uris(out)) == expected_uris("did:plc:a")


class LeaseLostOnce(SqliteStateStore):
    """Refuses the first commit as PostgreSQL does after a lease expired."""

    refused = False

    def commit(self, *args: Any) -> None:
        if not self.refused:
            self.refused = True
            raise LeaseLostError("commit refused", ["did:plc:a"])
        super().commit(*args)


def test_discard_batch_after_a_definite_refusal(out: Path) -> None:
    with LeaseLostOnce(out / STORE) as store:
        w = DatasetWriter(out, store, SinkConfig(max_file_rows=5))
        w.add(*extract("did:plc:a"))
        w.add_failed(
            RepoFailed("did:plc:b", "X", "x"), DeadLetter("did:plc:b", None, "fetch", "X", "x")
        )
        page = RepoExtract("did:plc:c", None, {POST: rows_table("did:plc:c", POST, 3)}, [])
        w.add_partial(page, [("list:did:plc:c", "cursor-1")])
        with pytest.raises(LeaseLostError):
            w.commit()
        assert w.holds("did:plc:a") and w.holds("did:plc:b")
        with pytest.raises(RuntimeError, match="no failed commit"):
            DatasetWriter(out, store).discard_batch()
        discarded = w.discard_batch()
        assert discarded == DiscardedBatch(("did:plc:a",), ("did:plc:b",), ("did:plc:c",))
        assert discarded.dids == ("did:plc:a", "did:plc:b", "did:plc:c")
        assert tmp_files(out, w.writer_id) == set() and not w.holds("did:plc:a")
        assert store.get_cursor("list:did:plc:c") is None
        w.add(*extract("did:plc:a"))
        w.commit()
        w.close()
        assert set(uris(out)) == expected_uris("did:plc:a")


class CommitsThenFails(SqliteStateStore):
    """The transaction committed, then the connection broke: the caller sees an error."""

    def commit(self, *args: Any) -> None:
        super().commit(*args)
        raise OSError("connection lost after COMMIT")


def test_an_unknown_outcome_is_left_to_recovery(out: Path) -> None:
    """Why `discard_batch` is only for definite refusals: this batch did commit."""
    with CommitsThenFails(out / STORE) as bad, SqliteStateStore(out / STORE) as good:
        w = DatasetWriter(out, bad)
        w.add(*extract("did:plc:a"))
        with pytest.raises(OSError, match="after COMMIT"):
            w.commit()
        with pytest.raises(RuntimeError, match="uncommitted"):
            w.close()
        report = DatasetWriter(out, good).recover()
    # two tables and `_accounts`
    assert report.renamed == 3 and report.deleted == 0 and report.dead_writers == 1
    assert sorted(uris(out)) == sorted(expected_uris("did:plc:a"))


def test_a_committed_file_moved_by_someone_else_is_fine(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    (tmp_path / "src").write_bytes(b"x")
    assert storage.move_committed("src", "dst") is True
    assert storage.move_committed("src", "dst") is False  # the racer won: fine
    with pytest.raises(FileNotFoundError):
        storage.move_committed("gone", "nowhere")  # neither there: an error
