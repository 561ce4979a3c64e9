"""Crash safety of the commit protocol: a process dies at every step, or at random.

After each death, recovery (store.recover + writer.recover) must leave a
dataset that holds every repo the store calls done/failed exactly once and
nothing of any other repo; finishing the run then lands everything exactly once.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from bsky_backfill.sinks import DatasetWriter, RecoveryReport
from bsky_backfill.sinks.storage import TMP_DIR
from bsky_backfill.state.base import Identity, RepoState
from bsky_backfill.state.sqlite import SqliteStateStore
from tests.sinks.builders import expected_uris, read, uris
from tests.sinks.crash_child import STORE, failing

ROOT = Path(__file__).resolve().parents[2]
DIDS = [f"did:plc:crash{i:03d}" for i in range(24)]


def child(out: Path, mode: str, stdin: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.sinks.crash_child", str(out), mode],
        cwd=ROOT,
        stdin=stdin,
        stdout=subprocess.PIPE,
        text=True,
    )


def prepare(out: Path, dids: list[str]) -> None:
    with SqliteStateStore(out / STORE) as store:
        store.enqueue_resolved(Identity(d, "http://h1", "h1", None) for d in dids)


def recover_and_check(out: Path) -> set[str]:
    """Recover like a fresh run would, assert the invariant, return the finished DIDs."""
    return recover_and_report(out)[0]


def recover_and_report(out: Path) -> tuple[set[str], RecoveryReport]:
    """`recover_and_check`, also returning what the sink's recovery did."""
    with SqliteStateStore(out / STORE) as store:
        store.recover()
        writer = DatasetWriter(out, store)
        report = writer.recover()
        writer.close()
        assert not list((out / TMP_DIR).iterdir()), "tmp files survived recovery"
        rows = store._conn.execute("SELECT did, state FROM repos").fetchall()
        finished = {d for d, s in rows if s in (RepoState.DONE, RepoState.FAILED)}
        assert all(s != RepoState.IN_PROGRESS for _, s in rows)
        assert {d for d, s in rows if s == RepoState.FAILED} == {d for d in finished if failing(d)}
    landed = Counter(uris(out))
    assert all(n == 1 for n in landed.values()), "a row landed twice"
    want = set().union(*(expected_uris(d) for d in finished if not failing(d)))
    assert set(landed) == want
    dead = Counter(read(out, "_deadletters", "did, uri"))
    assert all(n == 1 for n in dead.values()), "a dead letter landed twice"
    assert {d for d, _ in dead} <= finished
    assert {d for d, u in dead if u is None} == {d for d in finished if failing(d)}
    return finished, report


@pytest.mark.parametrize(
    ("step", "second_batch_lands"),
    [
        ("add", False),  # rows in tmp files, no commit
        ("closed", False),  # tmp files complete and fsynced, store not told
        ("stored", True),  # store committed, nothing renamed
        ("renamed:0", True),  # some renames done
        ("renamed:3", True),
        ("committed", True),
        ("none", True),  # no crash at all
    ],
)
def test_death_at_each_commit_step(tmp_path: Path, step: str, second_batch_lands: bool) -> None:
    out = tmp_path / "out"
    prepare(out, DIDS)
    proc = child(out, step)
    proc.communicate(timeout=60)
    assert proc.returncode == (0 if step == "none" else 3)
    finished = recover_and_check(out)
    assert len(finished) == (len(DIDS) if second_batch_lands else len(DIDS) // 2)
    # The next run fetches whatever did not land, and everything is there once.
    proc = child(out, "loop")
    proc.communicate(timeout=60)
    assert proc.returncode == 0
    assert recover_and_check(out) == set(DIDS)


def test_sigkill_at_random_moments(tmp_path: Path) -> None:
    out = tmp_path / "out"
    dids = [f"did:plc:kill{i:04d}" for i in range(300)]
    prepare(out, dids)
    rng = random.Random(int.from_bytes(os.urandom(4)))
    finished: set[str] = set()
    for _ in range(6):
        proc = child(out, "loop")
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "ready"
        # Meanwhile another writer recovers, again and again: it must never take
        # the live child's open batch (its commit would record files that are gone).
        with SqliteStateStore(out / STORE) as store:
            other = DatasetWriter(out, store)
            until = time.monotonic() + rng.uniform(0.0, 0.4)
            while proc.poll() is None and time.monotonic() < until:
                assert other.recover().missing == ()
            other.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = recover_and_check(out)
        assert finished <= now, "a finished repo was lost"
        finished = now
    proc = child(out, "loop")
    proc.communicate(timeout=120)
    assert recover_and_check(out) == set(dids)


def test_recovery_is_idempotent(tmp_path: Path) -> None:
    out = tmp_path / "out"
    prepare(out, DIDS)
    child(out, "renamed:0").communicate(timeout=60)
    first = recover_and_check(out)
    assert recover_and_check(out) == first
    with SqliteStateStore(out / STORE) as store:
        report = DatasetWriter(out, store).recover()
    assert (report.renamed, report.deleted, report.missing) == (0, 0, ())
