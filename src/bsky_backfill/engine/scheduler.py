"""Per-host scheduling: claim due repos for each host while its slot has room.

Where it sits: stage 3 of the run (manager.py), after the source loop
(source_loop.py) and the resolver (resolve_loop.py) have stored repos with
their host. Each host has a `HostSlot` (xrpc/slot.py: its concurrency, its
request rate, its circuit breaker); the scheduler claims from the store, per
host, as many due repos as the slot has room for, and runs each in a task
(`RepoWorker.process`, repo_task.py). A slow or throttled host only ever holds
its own capacity; `--max-active-hosts` bounds how many hosts are worked at once.
With `--workers N`, a process claims on a host only while it holds the host's
lease (host_leases.py): one process at a time paces each host.

A paused host (its breaker open) gets nothing but, once its pause is over, one
probe; its repos wait in the store without spending attempts. Pause changes
are written to the store for `status`. The scheduler also pushes back: while
the dataset writer's thread is behind (landing.py), it claims nothing.

When nothing can be claimed and intake is over, the open batch is committed, and
the run ends once nothing is due and no other process may hand work back
(takeover.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine

from bsky_backfill.config import RunSettings
from bsky_backfill.engine.commits import Commits
from bsky_backfill.engine.flow import Flow
from bsky_backfill.engine.takeover import Peers
from bsky_backfill.models import utcnow
from bsky_backfill.state.base import HostPause, RepoTask, SharesHostBudget, StateStore
from bsky_backfill.xrpc.breaker import Breaker, BreakerBoard, BreakerState
from bsky_backfill.xrpc.shared import SharedHostBudget
from bsky_backfill.xrpc.slot import HostSlot

Process = Callable[[HostSlot, RepoTask], Coroutine[object, object, None]]
"""Works on one claimed repo in its host's slot (`RepoWorker.process`)."""

log = logging.getLogger("bsky_backfill.workers")


class Scheduler:
    """Every host's slot, and the loop that fills them."""

    def __init__(self, settings: RunSettings, breakers: BreakerBoard, flow: Flow) -> None:
        self.settings = settings
        self.breakers = breakers
        self.flow = flow
        self.slots: dict[str, HostSlot] = {}
        self.working: set[asyncio.Task[None]] = set()
        """The repos being worked on (cancelled when the run ends)."""
        self._store: StateStore | None = None
        # Pause changes not yet in the store (for `status`), and hosts recorded there.
        self._pause_changes: dict[str, HostPause] = {}
        self._pauses_recorded: set[str] = set()
        self.claims = 0
        """Repos this process claimed during the run."""
        breakers.listeners.append(self._on_breaker)

    def open(self, store: StateStore) -> None:
        """The run's store: claims, pause records, and hosts' shared budgets come from it."""
        self._store = store

    @property
    def store(self) -> StateStore:
        if self._store is None:
            raise RuntimeError("the scheduler has no store yet")
        return self._store

    def slot(self, host: str) -> HostSlot:
        slot = self.slots.get(host)
        if slot is None:
            shared = None
            store = self._store
            if self.settings.global_host_rate and isinstance(store, SharesHostBudget):
                shared = SharedHostBudget(
                    host, self.settings.global_host_rate, store.take_host_tokens
                )
            slot = self.slots[host] = HostSlot(
                host, self.settings.rate_limit, self.settings.host_concurrency, shared
            )
            slot.breaker = self.breakers.get(host)
        return slot

    # -- host pauses --------------------------------------------------------------------
    def _on_breaker(self, breaker: Breaker) -> None:
        """A host was paused, resumed or given up: note it for `status` (written by the
        scheduler) and make it visible in the live view."""
        until = breaker.resume_time() if breaker.state is BreakerState.OPEN else None
        self._pause_changes[breaker.host] = HostPause(breaker.host, until, breaker.reason)
        if breaker.paused():
            self.slot(breaker.host)  # the PLC directory or a relay has no slot otherwise

    def _flush_pauses(self) -> None:
        if not self._pause_changes:
            return
        changes = list(self._pause_changes.values())
        self._pause_changes.clear()
        self.store.set_host_pauses(changes)
        for pause in changes:
            if pause.reason:
                self._pauses_recorded.add(pause.host)
            else:
                self._pauses_recorded.discard(pause.host)

    def clear_pauses(self) -> None:
        """At the end of a run its pauses are over (the next run learns afresh)."""
        self._pause_changes.clear()
        if self._pauses_recorded:
            with contextlib.suppress(Exception):
                self.store.set_host_pauses(
                    [HostPause(h, None, "") for h in sorted(self._pauses_recorded)]
                )
            self._pauses_recorded.clear()

    # -- host leases (--workers) ----------------------------------------------------------
    def _in_flight(self, host: str) -> int:
        slot = self.slots.get(host)
        return 0 if slot is None else slot.active

    def _pinned(self, host: str) -> bool:
        """The host's breaker is not closed: its lease stays with this process."""
        return self.breakers.get(host).paused()

    # -- the loop -------------------------------------------------------------------------
    async def loop(
        self, commits: Commits, peers: Peers, process: Process, tick: Callable[[], None]
    ) -> None:
        """Claim and start work until the run is stopped or nothing is left anywhere;
        `tick` runs every turn (the run's `on_tick` hooks)."""
        role, hosts = peers.role, peers.hosts  # a take-over ends both (takeover.py)
        peers.announce(self.store)
        try:
            await self._loop(commits, peers, process, tick)
        finally:
            if hosts is not None:
                log.info(
                    "process %d of %d: claimed %d repos on %d hosts it took",
                    role.index, role.count, self.claims, hosts.taken,
                )  # fmt: skip
            if peers.hosts is not None:
                # Best effort: leases not given back expire (host_leases.py).
                with contextlib.suppress(Exception):
                    peers.hosts.release_all(self.store)

    async def _loop(
        self, commits: Commits, peers: Peers, process: Process, tick: Callable[[], None]
    ) -> None:
        store, lane, flow = self.store, commits.lane, self.flow
        while not flow.stopping:
            if lane.full:  # the writer is behind: fetch no more until it catches up
                await lane.room()
                continue
            now = utcnow()
            claimed = 0
            held: list[Breaker] = []
            active_hosts = sum(1 for s in self.slots.values() if s.active)
            self._flush_pauses()
            together = peers.together(store)
            due_hosts = store.pending_hosts(now) if together else {}
            # Due work this process may not claim yet: on hosts another process holds,
            # or before its followers have started.
            elsewhere = not together
            hosts = peers.hosts
            if hosts is not None:
                full = active_hosts >= self.settings.max_active_hosts
                hosts.settle(store, due_hosts, now, self._in_flight, self._pinned, full=full)
            for host in due_hosts:
                if not self._in_flight(host) and active_hosts >= self.settings.max_active_hosts:
                    continue
                if hosts is not None and not hosts.may_claim(store, host, now):
                    elsewhere = elsewhere or hosts.leased_elsewhere(host)
                    continue
                slot = self.slot(host)
                room = slot.concurrency - slot.active
                # A paused host gets nothing but, once its pause is over, one probe.
                allowed = self.breakers.get(host).claimable(slot.active)
                if allowed is not None:
                    room = min(room, allowed)
                    if allowed == 0:
                        held.append(self.breakers.get(host))
                if room <= 0:
                    continue
                tasks = store.claim(host, room, now)
                if tasks and not slot.active:
                    active_hosts += 1
                self.claims += len(tasks)
                for task in tasks:
                    slot.active += 1
                    claimed += 1
                    work = asyncio.create_task(process(slot, task))
                    self.working.add(work)
                    work.add_done_callback(self.working.discard)
            tick()
            if not claimed and not self.working and flow.intake_done:
                if commits.sink.batch_repos or lane.backlog:
                    # Idle with an open batch: make it durable now rather than at the
                    # timer, so the store's view of what is left is exact.
                    await commits.commit_now()
                    continue
                if peers.orphaned:
                    peers.take_over(store, commits)
                    continue
                due = store.next_due()
                if due is None:
                    if peers.others_finished(store, commits):
                        return
                    await flow.wait(1.0)
                    continue
                wait = (due - utcnow()).total_seconds()
                if wait <= 0 and held:  # due, but their hosts are paused: until one resumes
                    wait = min(b.resume_at for b in held) - time.time()
                if wait <= 0 and elsewhere:  # due, but not for this process yet: look again soon
                    wait = 0.5
                await flow.wait(min(5.0, max(0.05, wait)))
                continue
            await flow.wait(0.5)
