"""Helper processes for big repos (engine/helpers.py): same parts as in-process, and a
helper that dies costs a retry, not the run."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from bsky_backfill.engine.helpers import HelperPool
from bsky_backfill.errors import TransientError
from bsky_backfill.models import RecordFilter
from bsky_backfill.records.lexicon import DEFAULT_COLLECTIONS
from bsky_backfill.records.stream import extract_part, plan_parts
from tests.conftest import FIXTURES

DID = "did:plc:z72i7hdynmk6r22z27h6tvur"
CAR = FIXTURES / "car/laravel-bluesky/bsky-app.car"
FILTER = RecordFilter(frozenset(DEFAULT_COLLECTIONS))


def test_helpers_build_the_same_parts_and_survive_a_dead_helper(tmp_path: Path) -> None:
    data = CAR.read_bytes()
    path = tmp_path / "repo.car"
    path.write_bytes(data)
    plans = list(plan_parts(data, DID, chunk=100))
    assert len(plans) == 7
    here = [extract_part(data, plan, FILTER) for plan in plans]

    async def main() -> None:
        pool = HelperPool(2)
        try:
            there = await asyncio.gather(*(pool.extract(str(path), p, FILTER) for p in plans))
            for a, b in zip(here, there, strict=True):
                assert a.records_seen == b.records_seen
                assert {c: t.to_pylist() for c, t in a.tables.items()} == {
                    c: t.to_pylist() for c, t in b.tables.items()
                }
            assert pool._pool is not None
            for pid in list(pool._pool._processes):  # type: ignore[attr-defined]
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(TransientError) as err:
                for _ in range(50):  # the pool notices the death on the next job
                    await pool.extract(str(path), plans[0], FILTER)
                    await asyncio.sleep(0.1)
            assert err.value.code == "HelperDied"
            again = await pool.extract(str(path), plans[0], FILTER)  # a fresh pool
            assert again.records_seen == here[0].records_seen
        finally:
            pool.close()

    asyncio.run(main())
