"""`--workers N`: more processes on this machine, joining the same backfill.

Where it sits: the leader (the process the user started) runs `Backfill` as
usual and, once its start-up recovery is done, spawns N-1 followers with
`spawn_followers` (takeover.py), each running `manager.follower_main`. Each
follower runs `Backfill` with a `Role` that skips the leader's duties
(start-up recovery, reading the source, resolving DIDs).

Which process works which host is not fixed here: a PDS limits requests per
client IP, and every process here has the same IP, so each host is worked by
one process at a time (its slot paces the host's budget exactly, as a single
process would), but which one is decided at claim time by who has room, under
a lease in the state store shared by the run's processes, its `team`
(host_leases.py). So the CPU-bound decoding spreads over all cores whichever
hosts hold the work, and one big host does not leave a process idle.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import secrets
import signal
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
    team: str = ""
    """The run's id, shared by its processes: the scope of their host leases."""

    @property
    def leader(self) -> bool:
        return self.index == 0

    @classmethod
    def lead(cls, count: int) -> Role:
        """The role of the process the user started, with a new team id."""
        return cls(0, count, f"{os.getpid()}:{secrets.token_hex(4)}")


def spawn_followers(
    settings: RunSettings, leader: Role, main: Callable[[RunSettings, Role, int], None]
) -> list[BaseProcess]:
    """Start processes 1..count-1 of the leader's team (the caller is process 0), each
    running `main(settings, role, log level)`: a module-level function (the spawn
    start method imports it by name in the new interpreter)."""
    ctx = multiprocessing.get_context("spawn")
    level = logging.getLogger().getEffectiveLevel()
    processes: list[BaseProcess] = []
    for index in range(1, leader.count):
        role = Role(index, leader.count, leader.team)
        proc = ctx.Process(
            target=main,
            args=(settings.model_copy(update={"handle_txt": None}), role, level),
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
