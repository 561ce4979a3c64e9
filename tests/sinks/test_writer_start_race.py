"""Writers that start in the same instant on one dataset all live (issue: a cluster's
first second). Each round, N processes released by one barrier do what a run does at
start-up: create a DatasetWriter (its tmp directory and liveness), recover the dataset
(judging every other writer's directory), then land their repos and commit. A writer
whose brand-new directory another's recovery judged dead loses its open part files
(FileNotFoundError) or its batch; the round checks that no process failed and that
every repo's rows are there exactly once.

The processes stay up across rounds (one barrier per round), so 20 rounds of 3, 5
and 8 writers cost seconds, and the race window (mkdir -> lock) is hit every round.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import traceback
from collections import Counter
from multiprocessing.synchronize import Barrier
from pathlib import Path
from threading import BrokenBarrierError
from typing import Any

import pytest

from bsky_backfill.sinks import DatasetWriter, SinkConfig
from bsky_backfill.state.base import Identity
from bsky_backfill.state.postgres import PostgresStateStore
from tests.sinks.builders import expected_uris, extract, uris
from tests.state.pg import fresh_schema_url

ROUNDS = 20
REPOS_PER_WRITER = 3


def _dids(round_: int, writer: int) -> list[str]:
    return [f"did:plc:r{round_:02d}w{writer}x{i}" for i in range(REPOS_PER_WRITER)]


def _writer(url: str, out: str, index: int, barrier: Barrier, errors: Any, liveness: str) -> None:
    store = PostgresStateStore(url)
    host = f"h{index}"
    try:
        for r in range(ROUNDS):
            try:
                barrier.wait(timeout=120)
            except BrokenBarrierError:
                return  # the parent gave up after a failed round
            try:
                writer = DatasetWriter(out, store, SinkConfig(liveness=liveness))  # type: ignore[arg-type]
                writer.recover()
                now = dt.datetime.now(dt.UTC)
                for task in store.claim(host, REPOS_PER_WRITER, now):
                    writer.add(*extract(task.did))
                writer.commit()
                writer.close()
            except BaseException:
                errors.put(f"writer {index}, round {r}: {traceback.format_exc()}")
            try:
                barrier.wait(timeout=120)  # the parent checks between rounds
            except BrokenBarrierError:
                return
    finally:
        store.close()


@pytest.mark.parametrize("liveness", ["lock", "age"])
@pytest.mark.parametrize("writers", [3, 5, 8])
def test_writers_started_together_all_land(tmp_path: Path, writers: int, liveness: str) -> None:
    out = tmp_path / "out"
    ctx = mp.get_context("fork")  # the children need nothing but this module's names
    with fresh_schema_url() as url:
        with PostgresStateStore(url) as store:
            for r in range(ROUNDS):
                store.enqueue_resolved(
                    Identity(did, "http://pds.invalid", f"h{w}", None)
                    for w in range(writers)
                    for did in _dids(r, w)
                )
        barrier = ctx.Barrier(writers + 1)
        errors = ctx.Queue()
        procs = [
            ctx.Process(target=_writer, args=(url, str(out), w, barrier, errors, liveness))
            for w in range(writers)
        ]
        for p in procs:
            p.start()
        try:
            for _ in range(ROUNDS):
                barrier.wait(timeout=120)  # start
                barrier.wait(timeout=120)  # all done
                assert errors.empty(), errors.get()
        finally:
            barrier.abort()  # a failed round: release the writers at once
            for p in procs:
                p.join(timeout=60)
                if p.is_alive():
                    p.kill()
        assert [p.exitcode for p in procs] == [0] * writers
        landed = Counter(uris(out))
        assert all(n == 1 for n in landed.values()), "a row landed twice"
        want = set().union(
            *(expected_uris(d) for r in range(ROUNDS) for w in range(writers) for d in _dids(r, w))
        )
        assert set(landed) == want


def test_staging_dirs_of_dead_creators_are_removed_live_ones_kept(tmp_path: Path) -> None:
    """A writer that died while creating its directory leaves `.new-<writer>-<n>`:
    recovery removes it once its lock can be taken; one whose lock is held is a
    writer about to publish, and stays."""
    import fcntl
    import os

    from bsky_backfill.sinks.storage import LOCK_NAME, STAGING_PREFIX, TMP_DIR, new_writer_id
    from bsky_backfill.state.sqlite import SqliteStateStore

    out = tmp_path / "out"
    dead = out / TMP_DIR / f"{STAGING_PREFIX}{new_writer_id()}-0"
    alive = out / TMP_DIR / f"{STAGING_PREFIX}{new_writer_id()}-3"
    for d in (dead, alive):
        d.mkdir(parents=True)
        (d / LOCK_NAME).touch()
    fd = os.open(alive / LOCK_NAME, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    try:
        with SqliteStateStore(out / "_state/state.sqlite") as store:
            writer = DatasetWriter(out, store)
            writer.recover()
            assert not dead.exists()
            assert (alive / LOCK_NAME).exists()
            # The recovering writer's own directory is published under its final name.
            assert (out / TMP_DIR / writer.writer_id / LOCK_NAME).exists()
            writer.close()
    finally:
        os.close(fd)
