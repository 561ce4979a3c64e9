"""Helper processes for big repos (engine/part_pool.py): same parts as in-process, and a
helper that dies costs a retry, not the run."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bsky_backfill.engine.part_pool import HelperPool
from bsky_backfill.errors import TransientError
from bsky_backfill.models import RecordFilter
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.records.stream import extract_part, plan_parts
from bsky_backfill.sinks.batch import SinkConfig
from bsky_backfill.sinks.provenance import stamp
from tests.fixture_paths import FIXTURES

DID = "did:plc:z72i7hdynmk6r22z27h6tvur"
CAR = FIXTURES / "car/laravel-bluesky/bsky-app.car"
FILTER = RecordFilter(frozenset(DEFAULT_COLLECTIONS))
SINK = SinkConfig()
AT = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_helpers_build_the_same_parts_and_survive_a_dead_helper(tmp_path: Path) -> None:
    data = CAR.read_bytes()
    path = tmp_path / "repo.car"
    path.write_bytes(data)
    big = plan_parts(data, DID, split_layer=1)
    plans = big.parts
    assert len(plans) > 20
    here = [extract_part(data, big.index, plan, FILTER) for plan in plans]

    async def main() -> None:
        pool = HelperPool(2)
        car = str(path)
        try:
            async with pool.session(car):
                jobs = (pool.extract(car, p, FILTER, SINK, AT) for p in plans)
                there = await asyncio.gather(*jobs)
            assert pool._pool is None  # the last session out stops the helpers
            assert sum(p.records_seen for p in there) == 604
            for a, b in zip(here, there, strict=True):
                assert a.records_seen == b.records_seen
                assert a.dead_letters == b.dead_letters
                # the helper stamps the rows' provenance (sinks/provenance.py)
                assert {c: stamp(t, big.rev, AT).to_pylist() for c, t in a.tables.items()} == {
                    f.collection: pq.read_table(pa.BufferReader(f.data)).to_pylist()
                    for f in b.files
                }
            async with pool.session(car):
                assert pool._pool is not None
                await pool.extract(car, plans[0], FILTER, SINK)
                for pid in list(pool._pool._processes):  # type: ignore[attr-defined]
                    os.kill(pid, signal.SIGKILL)
                with pytest.raises(TransientError) as err:
                    for _ in range(50):  # the pool notices the death on the next job
                        await pool.extract(car, plans[0], FILTER, SINK)
                        await asyncio.sleep(0.1)
                assert err.value.code == "HelperDied"
                again = await pool.extract(car, plans[0], FILTER, SINK)  # a fresh pool
                assert again.records_seen == here[0].records_seen
        finally:
            pool.close()

    asyncio.run(main())


def test_helper_slots_are_shared_by_the_machine(tmp_path: Path) -> None:
    """Every process's pool draws on one set of machine-wide slots (flock files), so
    N `--workers` processes never start N x (N-1) helpers; a dead holder's slots
    come back (the kernel drops its locks)."""
    from bsky_backfill.engine.part_pool import MachineSlots

    slots = MachineSlots(count=3, directory=str(tmp_path / "slots"))
    a, b, c = slots.take(2), slots.take(2), slots.take(2)
    assert (len(a), len(b), len(c)) == (2, 1, 0)
    slots.give(a)
    assert len(slots.take(5)) == 2
    # Another process holding slots, then killed: its slots are free again.
    script = (
        "import sys, time; from bsky_backfill.engine.part_pool import MachineSlots;"
        f"held = MachineSlots(3, {str(tmp_path / 'other')!r}).take(3);"
        "print(len(held), flush=True); time.sleep(60)"
    )
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "3"
        other = MachineSlots(count=3, directory=str(tmp_path / "other"))
        assert other.take(3) == []
        proc.kill()
        proc.wait()
        assert len(other.take(3)) == 3
    finally:
        proc.kill()


def test_a_pool_without_a_free_slot_builds_nothing_itself(tmp_path: Path) -> None:
    from bsky_backfill.engine.part_pool import MachineSlots

    slots = MachineSlots(count=1, directory=str(tmp_path / "slots"))
    taken = slots.take(1)
    car = tmp_path / "repo.car"
    car.write_bytes(CAR.read_bytes())

    async def main() -> None:
        pool = HelperPool(2, slots)
        async with pool.session(str(car)) as helpers:
            assert helpers == 0  # the caller builds every part in its own process
        slots.give(taken)
        async with pool.session(str(car)) as helpers:
            assert helpers == 1  # as many as the machine allows, not as many as asked
        pool.close()

    asyncio.run(main())
