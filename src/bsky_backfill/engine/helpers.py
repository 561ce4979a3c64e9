"""Helper processes for big repos: a repo of a million records on more than one core.

Where it sits: with `--workers N` (N > 1), the process that fetched a big repo
(engine/worker.py `_land_big`) keeps the short serial part, checking the
commit and cutting the MST into subtrees (`records.stream.plan_parts`), and
sends each part here; a helper walks that subtree from the spooled CAR file
(with the same checks), decodes and checks its records, builds the Arrow
tables and encodes them as Parquet (`records.stream.extract_part_file`); the
files come back to be adopted by the repo's writer.

Why: hosts are split between the worker processes, so without helpers a
single big repo keeps one process busy long after the others have finished
(in the benchmark scenario the 1M-record repo is two thirds of all records).
With helpers its parts spread over every core. The pool starts on the first
big repo (interpreter start-up is paid only by runs that have one) and stops
when no big repo is using it (helpers hold the block index of their repo);
it uses the spawn start method: forking a process that runs an event loop
and threads is unsafe.

Helpers ignore SIGINT (Ctrl-C reaches the whole process group; the parent
decides what stopping means) and exit with the parent (their task pipe
closes). A helper that dies takes its part's repo back to pending as a
transient error, and the pool is rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import signal
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from bsky_backfill.errors import TransientError
from bsky_backfill.models import RecordFilter
from bsky_backfill.records.stream import BuiltPart, PartPlan, extract_part_file, index_file
from bsky_backfill.sinks.batch import SinkConfig

__all__ = ["HelperPool"]

log = logging.getLogger("bsky_backfill.helpers")


def _init_helper() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class HelperPool:
    """`size` helper processes, started on first use."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: ProcessPoolExecutor | None = None
        self._users = 0

    @contextlib.asynccontextmanager
    async def session(self, path: str) -> AsyncIterator[None]:
        """One big repo's use of the pool, its CAR spooled at `path`.

        On entry the helpers start (if they are not running) and index the CAR
        while this process checks the commit and plans the parts. When the last
        user is done the helpers exit: they hold the block index of the repo they
        worked on, and a run may go a long time without another big repo.
        """
        self._users += 1
        pool = self._executor()
        warm = [pool.submit(index_file, path) for _ in range(self.size)]
        try:
            yield
        finally:
            for job in warm:
                job.cancel()
            self._users -= 1
            if self._users == 0 and self._pool is not None:
                pool, self._pool = self._pool, None
                pool.shutdown(wait=False, cancel_futures=True)

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_helper,
            )
            log.info("started %d helper processes for big repos", self.size)
        return self._pool

    async def extract(
        self, path: str, plan: PartPlan, filt: RecordFilter, sink: SinkConfig
    ) -> BuiltPart:
        """One part as Parquet files, built in a helper (raises what the extraction raises)."""
        pool = self._executor()
        try:
            job = pool.submit(extract_part_file, path, plan, filt, sink)
            return await asyncio.wrap_future(job)
        except BrokenProcessPool as e:
            # A helper died (killed, out of memory): the part is lost, the repo
            # goes back to pending, and the next big repo gets a fresh pool.
            if self._pool is pool:
                self._pool = None
                pool.shutdown(wait=False, cancel_futures=True)
            raise TransientError(f"a helper process died: {e}", code="HelperDied") from e

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
