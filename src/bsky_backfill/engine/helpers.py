"""Helper processes for big repos: a repo of a million records on more than one core.

Where it sits: with `--workers N` (N > 1), the process that fetched a big repo
(engine/worker.py `_land_big`) keeps the serial part, the commit check and the
MST walk (`records.stream.plan_parts`), and sends each part's plan here; a
helper reads that part's record blocks from the spooled CAR file, checks
their hashes, decodes them and builds the Arrow tables
(`records.stream.extract_part_file`); the tables come back to be written.

Why: hosts are split between the worker processes, so without helpers a
single big repo keeps one process busy long after the others have finished
(in the benchmark scenario the 1M-record repo is two thirds of all records).
With helpers its parts spread over every core. The pool starts on the first
big repo (interpreter start-up is paid only by runs that have one) and uses
the spawn start method: forking a process that runs an event loop and
threads is unsafe.

Helpers ignore SIGINT (Ctrl-C reaches the whole process group; the parent
decides what stopping means) and exit with the parent (their task pipe
closes). A helper that dies takes its part's repo back to pending as a
transient error, and the pool is rebuilt.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from bsky_backfill.errors import TransientError
from bsky_backfill.models import RecordFilter, RepoExtract
from bsky_backfill.records.stream import PartPlan, extract_part_file

__all__ = ["HelperPool"]

log = logging.getLogger("bsky_backfill.helpers")


def _init_helper() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class HelperPool:
    """`size` helper processes, started on first use."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._pool: ProcessPoolExecutor | None = None

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            self._pool = ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_helper,
            )
            log.info("started %d helper processes for big repos", self.size)
        return self._pool

    async def extract(self, path: str, plan: PartPlan, filt: RecordFilter) -> RepoExtract:
        """One part's tables, built in a helper (raises what the extraction raises)."""
        pool = self._executor()
        try:
            return await asyncio.wrap_future(pool.submit(extract_part_file, path, plan, filt))
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
