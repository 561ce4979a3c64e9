"""Helper processes for big repos: a repo of a million records on more than one core.

Where it sits: with `--workers N` (N > 1), the process that fetched a big repo
(engine/repo_task.py `_land_big`) keeps the short serial part, checking the
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

One pool per machine, not per process: every `--workers` process (and every
other run on this machine) has its own HelperPool, but a pool starts helpers
only for the machine-wide slots it can take (`MachineSlots`: one flock'ed
file per slot in a per-user directory under the temp dir, `cores - 1` slots),
so N processes never start N x (N-1) helpers; a pool that gets no slot builds
every part in its own process. The kernel drops a dead process's slots.

Helpers ignore SIGINT (Ctrl-C reaches the whole process group; the parent
decides what stopping means) and exit with the parent (their task pipe
closes). A helper that dies takes its part's repo back to pending as a
transient error, and the pool is rebuilt.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import logging
import multiprocessing
import os
import signal
import tempfile
from collections.abc import AsyncIterator
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from bsky_backfill.errors import TransientError
from bsky_backfill.models import RecordFilter
from bsky_backfill.records.stream import BuiltPart, PartPlan, extract_part_file, index_file
from bsky_backfill.sinks.batch import SinkConfig

__all__ = ["HelperPool", "MachineSlots"]

log = logging.getLogger("bsky_backfill.helpers")


def _init_helper() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)


class MachineSlots:
    """Helper-process slots shared by every bsky-backfill process of this user on this
    machine: slot i is held by whoever holds an exclusive flock on `dir/slot-i`.

    Why flock files: the processes are unrelated (`--workers` followers, other runs
    against a PostgreSQL queue), and a lock the kernel drops at process death
    cannot leak slots after a kill -9."""

    def __init__(self, count: int | None = None, directory: str | None = None) -> None:
        self.count = max(0, (os.cpu_count() or 1) - 1) if count is None else count
        self.dir = directory or os.path.join(
            tempfile.gettempdir(), f"bsky-backfill-helper-slots-{os.getuid()}"
        )

    def take(self, want: int) -> list[int]:
        """Up to `want` free slots, as open locked file descriptors (release with `give`)."""
        held: list[int] = []
        if want <= 0 or self.count <= 0:
            return held
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        for i in range(self.count):
            if len(held) == want:
                break
            fd = os.open(os.path.join(self.dir, f"slot-{i}"), os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue
            held.append(fd)
        return held

    @staticmethod
    def give(held: list[int]) -> None:
        for fd in held:
            os.close(fd)  # closing the descriptor drops its flock
        held.clear()


class HelperPool:
    """Up to `size` helper processes, started on first use, as many as machine slots allow."""

    def __init__(self, size: int, slots: MachineSlots | None = None) -> None:
        self.size = size
        """Helpers in the running pool (0 when none runs, or no slot was free)."""
        self._want = size
        self._slots = slots or MachineSlots()
        self._held: list[int] = []
        self._pool: ProcessPoolExecutor | None = None
        self._users = 0

    @contextlib.asynccontextmanager
    async def session(self, path: str) -> AsyncIterator[int]:
        """One big repo's use of the pool, its CAR spooled at `path`; yields how many
        helpers it has (0: no machine slot was free, build every part here).

        On entry the helpers start (if they are not running) and index the CAR
        while this process checks the commit and plans the parts. When the last
        user is done the helpers exit and give their slots back: they hold the
        block index of the repo they worked on, and a run may go a long time
        without another big repo.
        """
        self._users += 1
        pool = self._executor()
        warm = [pool.submit(index_file, path) for _ in range(self.size)] if pool else []
        try:
            yield self.size
        finally:
            for job in warm:
                job.cancel()
            self._users -= 1
            if self._users == 0:
                self._stop(wait=False)

    def _executor(self) -> ProcessPoolExecutor | None:
        if self._pool is None:
            self._held = self._slots.take(self._want)
            self.size = len(self._held)
            if not self.size:
                log.debug("no free helper slot on this machine: big repo parts built here")
                return None
            self._pool = ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_helper,
            )
            log.info("started %d helper processes for big repos", self.size)
        return self._pool

    def _stop(self, *, wait: bool) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait, cancel_futures=True)
        self._slots.give(self._held)
        self.size = 0

    async def extract(
        self,
        path: str,
        plan: PartPlan,
        filt: RecordFilter,
        sink: SinkConfig,
        fetched_at: dt.datetime | None = None,
    ) -> BuiltPart:
        """One part as Parquet files, built in a helper (raises what the extraction raises)."""
        pool = self._executor()
        if pool is None:
            raise TransientError("no helper slot is free", code="HelperDied")
        try:
            job = pool.submit(extract_part_file, path, plan, filt, sink, fetched_at)
            return await asyncio.wrap_future(job)
        except BrokenProcessPool as e:
            # A helper died (killed, out of memory): the part is lost, the repo
            # goes back to pending, and the next big repo gets a fresh pool.
            if self._pool is pool:
                self._stop(wait=False)
            raise TransientError(f"a helper process died: {e}", code="HelperDied") from e

    def close(self) -> None:
        self._stop(wait=True)
