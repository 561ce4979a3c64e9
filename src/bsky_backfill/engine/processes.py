"""`--workers N`: more processes on this machine, joining the same backfill.

Where it sits: the leader (the process the user started) runs `Backfill` as
usual and, once its start-up recovery is done, spawns N-1 followers with
`spawn_followers` (takeover.py), each running `manager.follower_main`. Each
follower runs `Backfill` with a `Role` that skips the leader's duties
(start-up recovery, reading the source, resolving DIDs) and claims repos only
of the hosts it owns.

Why hosts are split between processes rather than shared: a PDS limits
requests per client IP, and every process here has the same IP. With each
host owned by exactly one process, that process's slot sees every request to
the host and paces the host's budget exactly, as a single process would. With
many hosts, the CPU-bound decoding spreads over all cores.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.process import BaseProcess

from bsky_backfill.config import RunSettings

log = logging.getLogger("bsky_backfill.workers")


@dataclass(frozen=True, slots=True)
class Role:
    """Which of `count` processes this is; process 0 leads."""

    index: int = 0
    count: int = 1

    @property
    def leader(self) -> bool:
        return self.index == 0

    def owns(self, host: str) -> bool:
        """Whether this process works on `host` (a stable hash split)."""
        return self.count == 1 or zlib.crc32(host.encode()) % self.count == self.index


def spawn_followers(
    settings: RunSettings, count: int, main: Callable[[RunSettings, int, int, int], None]
) -> list[BaseProcess]:
    """Start processes 1..count-1 (the caller is process 0), each running
    `main(settings, index, count, log level)`: a module-level function (the spawn
    start method imports it by name in the new interpreter)."""
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    processes: list[BaseProcess] = []
    for index in range(1, count):
        proc = ctx.Process(
            target=main,
            args=(settings.model_copy(update={"handle_txt": None}), index, count, level),
            name=f"bsky-backfill-worker-{index}",
            daemon=False,
        )
        proc.start()
        processes.append(proc)
    log.info("started %d worker processes", len(processes))
    return processes


def stop_followers(processes: list[BaseProcess]) -> None:
    """Ask followers to stop gracefully (they commit what is finished)."""
    for proc in processes:
        if proc.is_alive() and proc.pid is not None:
            os.kill(proc.pid, signal.SIGTERM)


async def join_followers(processes: list[BaseProcess]) -> list[int | None]:
    """Wait for every follower without blocking the event loop; their exit codes."""
    for proc in processes:
        await asyncio.to_thread(proc.join)
    return [proc.exitcode for proc in processes]
