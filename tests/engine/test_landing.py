"""The dataset writer works on its own thread (engine/landing.py): while a commit
closes, fsyncs and records its files, the event loop keeps scheduling.

Each commit made during the run blocks at its first protocol step ("closed")
until a task on the event loop has ticked once more. Were the commit on the event
loop, the tick could never come (the guard's timeout would fire and record a
starved commit); on the writer's thread it comes, and the run lands exact data.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.landing import SinkLane
from bsky_backfill.engine.manager import Backfill, RunSummary
from bsky_backfill.engine.sources import DidSource
from bsky_backfill.simulate import Scenario, run_network_in_thread
from bsky_backfill.simulate.truth import APP_BSKY_COLLECTIONS
from tests.dataset import assert_matches_truth

GUARD_S = 60.0  # only ends the wait if the loop is starved; never reached otherwise


def test_commits_run_beside_the_event_loop(tmp_path: Path) -> None:
    scenario = Scenario(seed=77, accounts=30, hosts=2, mean_records=15, did_web=0)
    ticked = threading.Event()
    commits: list[tuple[str, bool]] = []  # (thread name, the loop ticked meanwhile)
    with run_network_in_thread(scenario) as net:
        settings = RunSettings(
            out=tmp_path / "out",
            plc_url=net.plc_url,
            allow_private_hosts=True,
            collections=frozenset(APP_BSKY_COLLECTIONS),
            rate_limit=None,
            commit_seconds=0.05,
            commit_rows=40,
        )
        backfill = Backfill(settings, DidSource.from_args(net.truth.input_dids, None))
        loop_thread = threading.current_thread().name

        def step(name: str) -> None:
            if name != "closed":
                return
            here = threading.current_thread().name
            if here == loop_thread:  # the last commit, after the loops have ended
                commits.append((here, False))
                return
            ticked.clear()
            commits.append((here, ticked.wait(GUARD_S)))

        backfill.sink_step_hook = step

        async def run_with_ticker() -> RunSummary:
            async def tick() -> None:
                while True:
                    ticked.set()
                    await asyncio.sleep(0.01)

            ticker = asyncio.create_task(tick())
            try:
                return await backfill.run()
            finally:
                ticker.cancel()

        summary = asyncio.run(run_with_ticker())
        truth = net.truth
    assert not summary.stopped and summary.repos_pending == 0
    during = [c for c in commits if c[0] != loop_thread]
    assert len(during) >= 2, commits
    assert all(name.startswith("sink") and ticked for name, ticked in during), commits
    assert_matches_truth(tmp_path / "out", truth.expected_rows(), truth.expected_dead_letters())


def test_the_lane_runs_operations_in_order_and_pushes_back() -> None:
    """Operations run one at a time in submission order; `full` holds at the limit
    and clears as the writer catches up; a failure comes back as the result."""
    gate = threading.Event()
    seen: list[int] = []
    results: list[object] = []

    async def main() -> None:
        lane = SinkLane(limit=3)

        def op(i: int) -> int:
            gate.wait(GUARD_S)
            seen.append(i)
            if i == 4:
                raise ValueError("disk full")
            return i

        for i in range(5):
            lane.submit(lambda i=i: op(i), results.append)  # type: ignore[misc]
        assert lane.full and lane.backlog == 5
        gate.set()
        await lane.room()
        await lane.drain()
        assert lane.backlog == 0 and not lane.full
        assert await lane.run(lambda: 42) == 42
        with pytest.raises(ValueError):
            await lane.run(lambda: op(4))
        lane.close()

    asyncio.run(main())
    assert seen == [0, 1, 2, 3, 4, 4]
    assert results[:4] == [0, 1, 2, 3] and isinstance(results[4], ValueError)
