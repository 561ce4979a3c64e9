"""A cheap, consistent look at a running backfill, shared by progress and metrics.

Where it sits: beside the engine, never inside it. The engine calls its
`Backfill.on_tick` hooks every scheduler iteration (a few times a second); the
progress display and the metrics gauges take a `RunSnapshot` there, on the
event-loop thread, where reading the engine's objects is safe.

Cost is the point: the state store is asked for its counts at most once a
second (and again right after a commit, when they change), the per-host view
is rebuilt at most once a second, and everything else is a handful of
attribute reads.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from bsky_backfill.state.base import RepoState
from bsky_backfill.xrpc.breaker import BreakerState
from bsky_backfill.xrpc.slot import HostSlot

if TYPE_CHECKING:
    from bsky_backfill.engine.manager import Backfill


@dataclass(frozen=True, slots=True)
class HostView:
    """One PDS host as the progress table shows it."""

    host: str
    active: int
    done: int
    failed: int
    requests: int
    throttled: int
    bytes: int
    paused: str
    """Why the host is paused now ('' when it is not), from `HostSlot.pause_reason()`."""


@dataclass(frozen=True, slots=True)
class RunSnapshot:
    """The run at one instant (monotonic `at`); counts include the open, uncommitted batch."""

    at: float
    elapsed: float
    repos_total: int
    """Repos known to the store (this run's and earlier runs' on the same --out)."""
    repos_finished: int
    """Done or dead-lettered: committed ones plus those in the open batch."""
    repos_failed: int
    """Dead-lettered whole during this run."""
    repos_pending: int
    """Waiting to be claimed (including those waiting for a retry time)."""
    repos_in_flight: int
    records: int
    """Records extracted during this run (land at the next commit)."""
    bytes: int
    requests: int
    """Requests answered (or failed) during this run, as of the last host refresh."""
    throttled: int
    """429 answers during this run, as of the last host refresh."""
    hosts_seen: int
    hosts_active: int
    hosts_paused: int
    stopping: bool

    @property
    def repos_left(self) -> int:
        return max(0, self.repos_total - self.repos_finished)


@dataclass(frozen=True, slots=True)
class HostsView:
    """Every host slot summed up, plus the few the progress table lists."""

    in_flight: int = 0
    active: int = 0
    paused: int = 0
    throttled: int = 0
    busiest: tuple[HostView, ...] = ()
    """The `top` hosts with most repos in flight (then most requests)."""
    paused_hosts: tuple[HostView, ...] = ()
    """Up to `top` paused hosts, the longest pause first."""


def _host_view(slot: HostSlot, paused: str) -> HostView:
    return HostView(
        host=slot.host,
        active=slot.active,
        done=slot.done,
        failed=slot.failed,
        requests=slot.requests,
        throttled=slot.throttled,
        bytes=slot.bytes,
        paused=paused,
    )


def pause_of(slot: HostSlot, wall: float) -> str:
    """Why the host sends nothing now ('' when it may): its circuit breaker (down:
    when it resumes; given up), a 429 pause reaching into the future, or a server
    budget used up; a pause says when it ends."""
    breaker = slot.breaker
    if breaker is not None and breaker.state is BreakerState.GIVEN_UP:
        return breaker.reason
    if breaker is not None and breaker.state is BreakerState.OPEN:
        resume = time.strftime("%H:%M:%S", time.gmtime(breaker.resume_at))
        left = max(0.0, breaker.resume_at - wall)
        return f"{breaker.reason}, resumes {resume} UTC (in {left:.0f}s)"
    out_of_budget = any(
        b.server_remaining is not None
        and b.server_remaining < 1
        and b.server_reset is not None
        and b.server_reset > wall
        for b in slot.buckets.values()
    )
    if slot.paused_until > wall or out_of_budget:
        # A bucket keeps the reason of its last pause until its next request, so
        # the reason is only read once we know the host is held back now.
        reason = slot.pause_reason() or "server budget used up"
        ends = max(
            [slot.paused_until]
            + [
                b.server_reset
                for b in slot.buckets.values()
                if b.server_remaining is not None
                and b.server_remaining < 1
                and b.server_reset is not None
            ]
        )
        if ends > wall:  # say when, not only why: "resumes 12:34:56 UTC (in 40s)"
            resume = time.strftime("%H:%M:%S", time.gmtime(ends))
            reason += f", resumes {resume} UTC (in {ends - wall:.0f}s)"
        return reason
    return ""


def _held_until(slot: HostSlot) -> float:
    breaker = slot.breaker
    if breaker is not None and breaker.state is BreakerState.GIVEN_UP:
        return float("inf")
    held = breaker.resume_at if breaker is not None and breaker.paused() else 0.0
    return max(slot.paused_until, held)


def hosts_view(slots: Iterable[HostSlot], top: int) -> HostsView:
    """Sum up the host slots and pick the busiest and the paused ones."""
    wall = time.time()
    slots = list(slots)
    reasons = {s.host: reason for s in slots if (reason := pause_of(s, wall))}
    paused = [s for s in slots if s.host in reasons]
    busiest = heapq.nlargest(
        top, (s for s in slots if s.active or s.requests), key=lambda s: (s.active, s.requests)
    )
    longest = heapq.nlargest(top, paused, key=lambda s: (_held_until(s), s.active))
    return HostsView(
        in_flight=sum(s.active for s in slots),
        active=sum(1 for s in slots if s.active),
        paused=len(paused),
        throttled=sum(s.throttled for s in slots),
        busiest=tuple(_host_view(s, reasons.get(s.host, "")) for s in busiest),
        paused_hosts=tuple(_host_view(s, reasons[s.host]) for s in longest),
    )


class RunSampler:
    """Builds `RunSnapshot`s from a `Backfill`; call only on the event-loop thread."""

    def __init__(self, *, top: int = 8, interval: float = 1.0) -> None:
        self.top = top
        self.interval = interval
        self._counts: dict[RepoState, int] = {}
        self._counts_at = -float("inf")
        self._counts_commits = -1
        self._hosts = HostsView()
        self._hosts_at = -float("inf")
        self._requests = 0

    def invalidate(self) -> None:
        """Re-read everything at the next call (after a commit changed the store)."""
        self._counts_at = self._hosts_at = -float("inf")

    def counts(self, backfill: Backfill) -> dict[RepoState, int]:
        """The store's repo counts, re-read at most every `interval` s and after each commit."""
        now = time.monotonic()
        commits = backfill.stats.commits
        store = getattr(backfill, "store", None)  # set once run() has opened it
        stale = now - self._counts_at >= self.interval or commits != self._counts_commits
        if stale and store is not None:
            self._counts = store.counts()
            self._counts_at, self._counts_commits = now, commits
        return self._counts

    def hosts(self, backfill: Backfill) -> HostsView:
        """The per-host view, rebuilt at most every `interval` s (a run may hold
        thousands of host slots)."""
        now = time.monotonic()
        if now - self._hosts_at >= self.interval:
            self._hosts, self._hosts_at = hosts_view(backfill.slots.values(), self.top), now
            # Keyed by (host, endpoint, status): thousands of keys on a big run.
            self._requests = sum(backfill.stats.requests.values())
        return self._hosts

    def sample(self, backfill: Backfill) -> RunSnapshot:
        counts = self.counts(backfill)
        hosts = self.hosts(backfill)
        sink = getattr(backfill, "sink", None)
        # Repos in the open batch are still pending/in_progress in the store; for
        # the operator they are finished (they become done/failed at the commit).
        open_batch = sink.batch_repos if sink is not None else 0
        finished = counts.get(RepoState.DONE, 0) + counts.get(RepoState.FAILED, 0) + open_batch
        stats = backfill.stats
        return RunSnapshot(
            at=time.monotonic(),
            elapsed=stats.elapsed,
            repos_total=sum(counts.values()),
            repos_finished=finished,
            repos_failed=stats.repos_failed,
            repos_pending=counts.get(RepoState.PENDING, 0),
            repos_in_flight=hosts.in_flight,
            records=stats.records_total,
            bytes=stats.bytes,
            requests=self._requests,
            throttled=hosts.throttled,
            hosts_seen=len(backfill.slots),
            hosts_active=hosts.active,
            hosts_paused=hosts.paused,
            stopping=backfill.stopping,
        )


__all__ = ["HostView", "HostsView", "RunSampler", "RunSnapshot", "hosts_view", "pause_of"]
