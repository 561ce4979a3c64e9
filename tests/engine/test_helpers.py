"""Helper processes for big repos (engine/helpers.py): same parts as in-process, and a
helper that dies costs a retry, not the run."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bsky_backfill.engine.helpers import HelperPool
from bsky_backfill.errors import TransientError
from bsky_backfill.models import RecordFilter
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.records.stream import extract_part, plan_parts
from bsky_backfill.sinks.batch import SinkConfig
from tests.fixture_paths import FIXTURES

DID = "did:plc:z72i7hdynmk6r22z27h6tvur"
CAR = FIXTURES / "car/laravel-bluesky/bsky-app.car"
FILTER = RecordFilter(frozenset(DEFAULT_COLLECTIONS))
SINK = SinkConfig()


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
                jobs = (pool.extract(car, p, FILTER, SINK) for p in plans)
                there = await asyncio.gather(*jobs)
            assert pool._pool is None  # the last session out stops the helpers
            assert sum(p.records_seen for p in there) == 604
            for a, b in zip(here, there, strict=True):
                assert a.records_seen == b.records_seen
                assert a.dead_letters == b.dead_letters
                assert {c: t.to_pylist() for c, t in a.tables.items()} == {
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
