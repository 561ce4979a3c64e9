"""`--workers N`: which process works which host, decided by who has room.

Where it sits: the scheduler (scheduler.py) of each process of a `--workers`
run asks here before it claims repos of a host, and calls `settle` at every
turn. The processes of one run (a team: the leader and the followers it
started, takeover.py) share one IP, and a PDS limits requests per client IP,
so a host is worked by one process at a time: that process's slot sees every
request to the host and paces its budget as a single process would. Which
process is decided at claim time through a lease in the state store
(`StateStore.acquire_host`):

  - a process takes a host that has due work and no live owner while it holds
    fewer hosts than its fair share (the hosts with work, divided by the
    processes, rounded up), so the first hosts spread over every process;
  - it gives a host back once none of its repos is in flight and nothing of
    it is due, so a process whose hosts are finished takes on hosts that
    others have not started, instead of sitting idle beside a big one;
  - a process holding more than its share (hosts ran out elsewhere) stops
    claiming on its least busy hosts, and gives each back once its repos in
    flight are done: an idle process picks it up;
  - a host whose circuit breaker is open or given up stays where it is (the
    breaker lives in that process alone) until it answers again.

Leases are renewed at every turn well before they end (`HOST_LEASE`), so only a
process that died loses its hosts, a minute later; its repos come back
through take-over (takeover.py). With one process there is no team and none
of this runs.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import secrets
from collections.abc import Callable, Collection

from bsky_backfill.state.base import StateStore

log = logging.getLogger("bsky_backfill.workers")

HOST_LEASE = dt.timedelta(seconds=60)
"""How long a host stays leased after its last renewal: how long the hosts of a
killed process wait. Long enough to cover a scheduler that stalls while the
dataset writer catches up."""
_RENEW_BEFORE = dt.timedelta(seconds=40)
"""A lease with less than this left is renewed at the next turn (about every 20 s)."""
_ASK_AGAIN = dt.timedelta(seconds=2)
"""A host another process holds is not asked for again before this: a process
with room does not write to the store for every host of the others at every turn."""


class HostLeases:
    """The hosts this process of a team holds, and the decisions around them."""

    def __init__(self, team: str, processes: int) -> None:
        self.team = team
        self.processes = processes
        self.owner = f"{os.getpid()}:{secrets.token_hex(4)}"
        self.held: dict[str, dt.datetime] = {}
        """Host -> until when its lease runs."""
        self.taken = 0
        """Hosts this process took during the run (for its summary line)."""
        self._share = 1
        self._draining: set[str] = set()
        self._others: dict[str, dt.datetime] = {}
        """Hosts another process held when last asked -> when to ask again."""

    def settle(
        self,
        store: StateStore,
        due: Collection[str],
        now: dt.datetime,
        in_flight: Callable[[str], int],
        pinned: Callable[[str], bool],
        *,
        full: bool = False,
    ) -> None:
        """At each turn, before claiming: work out this process's share of the hosts
        with due work (`due`), pick hosts to drain if it holds more, give back held
        hosts with nothing in flight that are drained or have nothing due, and renew
        the others. `in_flight`: this process's repos of a host being worked on;
        `pinned`: the host's breaker is not closed (it stays); `full`: the process
        works as many hosts as it may (`--max-active-hosts`), so a held host with
        nothing in flight goes back rather than wait for room here."""
        with_work = len(set(due) | self.held.keys())
        self._share = max(1, -(-with_work // self.processes))
        excess = len(self.held) - self._share
        movable = sorted((h for h in self.held if not pinned(h)), key=lambda h: (in_flight(h), h))
        self._draining = set(movable[: max(0, excess)])
        for host in list(self.held):
            idle = in_flight(host) == 0 and not pinned(host)
            if idle and (full or host not in due or host in self._draining):
                self._give_back(store, host)
            elif self.held[host] - now < _RENEW_BEFORE:
                self._renew(store, host, now)
        self._others = {h: t for h, t in self._others.items() if t > now}

    def may_claim(self, store: StateStore, host: str, now: dt.datetime) -> bool:
        """Whether this process may claim repos of `host` now: it holds the host and
        is not draining it, or it has room for one more and the lease is free."""
        if host in self.held:
            return host not in self._draining
        if len(self.held) >= self._share or host in self._others:
            return False
        until = now + HOST_LEASE
        if not store.acquire_host(self.team, host, self.owner, now, until):
            self._others[host] = now + _ASK_AGAIN
            return False
        self.held[host] = until
        self.taken += 1
        log.debug("%s: this process (%s) takes the host", host, self.owner)
        return True

    def leased_elsewhere(self, host: str) -> bool:
        """Another process held `host` when this one last asked for it."""
        return host in self._others

    def release_all(self, store: StateStore) -> None:
        """This process's end: every host it holds is free for the others."""
        self.held.clear()
        store.release_hosts(self.team, self.owner)

    def _give_back(self, store: StateStore, host: str) -> None:
        del self.held[host]
        store.release_host(self.team, host, self.owner)
        log.debug("%s: this process (%s) gives the host back", host, self.owner)

    def _renew(self, store: StateStore, host: str, now: dt.datetime) -> None:
        until = now + HOST_LEASE
        if store.acquire_host(self.team, host, self.owner, now, until):
            self.held[host] = until
            return
        # This process stalled past its lease and another took the host: what it
        # has in flight finishes, and it claims no more there.
        del self.held[host]
        log.warning(
            "%s: the host's lease ran out and another process works it now", host,
            extra={"host": host},
        )  # fmt: skip
