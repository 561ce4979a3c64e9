"""The dataset writer's own thread: every sink operation off the event loop, in order.

Where it sits: between the engine's open batch (commits.py; the run's start
and end in manager.py) and its `sinks.parquet.DatasetWriter`. Handing a
finished repo to the writer encodes Parquet (CPU), and a commit closes files,
fsyncs them, runs the store's commit transaction and renames (disk, and on
`s3://` network round trips). On the
event loop each of those stalled every host's downloads while it ran. Here the
engine *submits* them: one thread runs them one after another in the order
they were submitted (the writer is not thread-safe, and a commit must see
exactly the adds submitted before it), while the loop goes on.

Results come back on the loop: an operation's outcome (a commit summary, a
refusal, an error) is handed to a callback the loop runs, so the engine's own
bookkeeping is never touched from the writer's thread.

Back-pressure: `backlog` counts operations not yet finished; the scheduler
claims nothing while it is at `limit`, so a slow disk slows fetching instead of
growing memory (each queued add holds a repo's Arrow tables).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")

BACKLOG_LIMIT = 64
"""Operations queued for the writer before the scheduler stops claiming."""


class SinkLane:
    """One thread that runs the writer's operations in submission order."""

    def __init__(self, limit: int = BACKLOG_LIMIT) -> None:
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sink")
        self.limit = limit
        self.backlog = 0
        """Submitted and not yet finished (read and written on the loop only)."""
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()

    def submit(self, op: Callable[[], T], then: Callable[[T | BaseException], None]) -> None:
        """Run `op` on the writer's thread after everything submitted before it; then
        `then(result or exception)` on the loop. Call from the loop thread."""
        loop = asyncio.get_running_loop()
        self.backlog += 1
        self._idle.clear()
        if self.backlog >= self.limit:
            self._room.clear()
        future = loop.run_in_executor(self._pool, op)

        def finished(f: asyncio.Future[T]) -> None:
            self.backlog -= 1
            if self.backlog == 0:
                self._idle.set()
            if self.backlog < self.limit:
                self._room.set()
            if f.cancelled():
                then(asyncio.CancelledError())
                return
            error = f.exception()
            then(error if error is not None else f.result())

        future.add_done_callback(finished)

    async def run(self, op: Callable[[], T]) -> T:
        """Submit `op` and wait for its result (raising what it raised)."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[T] = loop.create_future()

        def then(result: T | BaseException) -> None:
            if done.cancelled():
                return
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

        self.submit(op, then)
        return await done

    async def drain(self) -> None:
        """Wait until every submitted operation has finished."""
        await self._idle.wait()

    async def room(self) -> None:
        """Wait until the backlog is under the limit."""
        await self._room.wait()

    @property
    def full(self) -> bool:
        return self.backlog >= self.limit

    def close(self) -> None:
        """Finish what was submitted, then stop the thread."""
        self._pool.shutdown(wait=True)
