"""`--workers N`: one run's processes, seen from one of them; and taking over orphans.

Where it sits: the run (manager.py) starts its followers here (processes.py
spawns them) and waits for them at its end; the scheduler (scheduler.py) asks
`hosts` (host_leases.py) which hosts this process may claim on, and asks
here, whenever it has nothing to claim, whether work held by another process
can still come back, and takes orphans over when their owner is gone:

  - SQLite: the leader sees its followers exit; once every one has, what is
    still in progress was orphaned by one that died, and the leader takes it
    (and every host: the team's host leases go) over;
  - PostgreSQL: a dead worker's leases expire and go back to pending
    (`reclaim_expired`), whoever notices first; its host leases expire too;
  - a follower whose leader is gone stops waiting for others.

The leader alone reads the source and resolves; followers learn that intake is
over from the store's `INTAKE` meta key, and leave their traffic figures under
`FOLLOWER_TRAFFIC` for the leader's summary.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from multiprocessing.process import BaseProcess

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.commits import Commits, recover_sink
from bsky_backfill.engine.flow import Flow
from bsky_backfill.engine.host_leases import HostLeases
from bsky_backfill.engine.processes import Role, join_followers, spawn_followers, stop_followers
from bsky_backfill.engine.stats import RunStats
from bsky_backfill.state.base import ReclaimsExpiredLeases, RepoState, StateStore

log = logging.getLogger("bsky_backfill")

INTAKE = "intake"
"""Meta key: "running" while the leader reads the source and resolves, then "done"."""
FOLLOWER_TRAFFIC = "follower_traffic:"
"""Meta key prefix (+ process index) of a --workers follower's requests and bytes."""
STARTED = "worker_started:"
"""Meta key prefix (+ process index): the team id of the run whose follower it is,
once its scheduler runs."""


class Peers:
    """This process's role, its host leases and, for the leader, the followers it started."""

    def __init__(self, role: Role) -> None:
        self.role = role
        self.hosts = HostLeases(role.team, role.count) if role.count > 1 else None
        """Which hosts this process may claim on (None: it is alone, every host)."""
        self.followers: list[BaseProcess] = []
        self._parent_pid = os.getppid()
        self._together = self.hosts is None

    # -- the leader's followers -----------------------------------------------------------
    def start(self, settings: RunSettings, store: StateStore, main: Callable[..., None]) -> None:
        """The leader starts processes 1..N-1, each running `main` (a fresh interpreter)."""
        if not (self.role.leader and self.role.count > 1):
            return
        for index in range(1, self.role.count):  # this run's figures only
            store.set_meta(f"{FOLLOWER_TRAFFIC}{index}", "")
        self.followers = spawn_followers(settings, self.role, main)

    async def finish(self, stopping: bool) -> bool:
        """Wait for the followers (asked to stop first on a stop). True if there were."""
        if not self.followers:
            return False
        if stopping:
            stop_followers(self.followers)
        await join_followers(self.followers)
        return True

    def alive(self) -> bool:
        return any(p.is_alive() for p in self.followers)

    # -- starting together ----------------------------------------------------------------
    def announce(self, store: StateStore) -> None:
        """A follower's scheduler starts: the leader may claim (`together`)."""
        if self.hosts is not None and not self.role.leader:
            store.set_meta(f"{STARTED}{self.role.index}", self.role.team)

    def together(self, store: StateStore) -> bool:
        """Whether this process may claim yet. The leader waits (resolving meanwhile)
        until every follower's scheduler runs, or one has exited: a follower takes a
        second or two to start, and a leader that began alone would hold every host
        with work by then (host_leases.py), leaving the followers nothing to do on a
        short run."""
        if not self._together and self.role.leader:
            started = all(
                store.get_meta(f"{STARTED}{i}") == self.role.team for i in range(1, self.role.count)
            )
            gone = not self.followers or not all(p.is_alive() for p in self.followers)
            self._together = started or gone
        return self._together or not self.role.leader

    @property
    def orphaned(self) -> bool:
        """SQLite `--workers`: the leader's followers have all exited."""
        return bool(self.followers) and self.role.count > 1 and not self.alive()

    # -- taking over ----------------------------------------------------------------------
    def take_over(self, store: StateStore, commits: Commits) -> None:
        """SQLite `--workers`: every follower has exited, so what is still in progress
        was orphaned by one that died; the leader takes it, and every host, over."""
        recovered = store.recover()
        if self.hosts is not None:  # the dead ones' leases would hold their hosts a while
            store.release_hosts(self.hosts.team)
            self.hosts = None
        sink = commits.sink
        commits.submit("recover", lambda: recover_sink(sink))
        codes = [p.exitcode for p in self.followers]
        if any(code != 0 for code in codes):
            log.warning(
                "worker processes ended with %s; took over their hosts and %d repos they left",
                codes,
                recovered,
            )
        self.role = Role(0, 1, self.role.team)

    def others_finished(self, store: StateStore, commits: Commits) -> bool:
        """Nothing is pending. Is anything still held by another process? Its repos may
        come back (a retry) or be orphaned (a dead worker): then this process waits,
        and takes orphans over when it can tell their owner is gone."""
        if store.counts().get(RepoState.IN_PROGRESS, 0) == 0:
            return True
        if isinstance(store, ReclaimsExpiredLeases):
            store.reclaim_expired()  # PostgreSQL: dead workers' repos go back to pending
            return False
        if self.role.leader and self.followers and self.role.count > 1:
            if not self.alive():
                self.take_over(store, commits)
            return False
        # A follower waits while others work (what comes back may be for it to do),
        # unless the leader that would take over orphans is itself gone.
        return not self.role.leader and os.getppid() != self._parent_pid

    # -- what followers learn and leave in the store -------------------------------------
    @staticmethod
    async def watch_intake(store: StateStore, flow: Flow) -> None:
        """Followers: the leader's source and resolver are done when the store says so."""
        while store.get_meta(INTAKE) != "done":
            await asyncio.sleep(0.5)
        flow.source_done = flow.resolver_done = True
        flow.wake()

    def leave_traffic(self, store: StateStore, stats: RunStats) -> None:
        """A follower's requests and bytes, for the leader's summary."""
        if self.role.leader:
            return
        store.set_meta(
            f"{FOLLOWER_TRAFFIC}{self.role.index}",
            json.dumps({"requests": sum(stats.requests.values()), "bytes": stats.bytes}),
        )

    def traffic(self, store: StateStore) -> dict[str, int]:
        """Requests and bytes the --workers followers of this run reported at their end."""
        total = {"requests": 0, "bytes": 0}
        if not self.role.leader:
            return total
        # As many as were started (the role shrinks to one once they are gone).
        for index in range(1, len(self.followers) + 1):
            try:
                figures = json.loads(store.get_meta(f"{FOLLOWER_TRAFFIC}{index}") or "{}")
            except ValueError:
                continue
            for key in total:
                value = figures.get(key) if isinstance(figures, dict) else None
                total[key] += value if isinstance(value, int) else 0
        return total
