"""Per-host circuit breakers: a host that keeps failing is paused as a whole.

Where it sits: inside the HTTP client's one error-mapping boundary
(xrpc/client.py). Before any request to a host (a PDS, the PLC directory, a
did:web site, a relay) the client asks that host's `Breaker.check()`; after it
reports how the host answered (`success` / `failure`). The engine's scheduler
and resolver ask `claimable()` before handing out work for the host, and the
worker asks `holds()` to learn whether a failure belongs to a paused host.

States:

    closed ──N host failures in a row──▶ open (pause: base·2^k, jittered, ≤ cap)
      ▲                                    │ pause over: exactly one probe request
      └──────── the probe answers ─────────┤
                                           └─ the probe fails: open again, longer
    open/closed ──failing longer than the time budget──▶ given up (this run)

A host failure is a refused or reset connection, a timeout before an answer,
or a 5xx/408 answer; any other answer (4xx, 429, a 200 whose body then
breaks) proves the host is up. While a host is open its repos are put back
without spending an attempt (`HostPaused`), so a host down for an hour costs
its repos nothing. A host failing for longer than `give_up_after` is given up
for the rest of the run: its repos are dead-lettered with its last error's code
(`HostUnreachable`), which `run --retry-failed` retries. The operator's own
endpoints (the PLC directory, a relay, `--pds` hosts) that have not answered
once in this run get the shorter `unreachable_after`: a wrong `--plc-url`
should end the run in minutes, not a day.

Pure state with an injectable clock: the tests drive it without sleeping.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from bsky_backfill.errors import (
    BackfillError,
    HostPaused,
    HostUnreachable,
    RateLimited,
    TransientError,
)

log = logging.getLogger("bsky_backfill.hosts")

HOST_FAILURE_CODES = frozenset({"ConnectionError", "Timeout", "Http408"})
"""Transient codes that say the host itself is down (besides any Http5xx)."""


def is_host_failure(error: BaseException) -> bool:
    """Whether `error` says the host is down, rather than something about one request."""
    if not isinstance(error, TransientError) or isinstance(error, RateLimited | HostPaused):
        return False
    code = error.code
    return code in HOST_FAILURE_CODES or (code.startswith("Http5") and code[4:].isdigit())


class BreakerState(enum.StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    GIVEN_UP = "given_up"


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """How quickly a host is paused, for how long, and when it is given up."""

    threshold: int = 3
    """Host failures in a row (across repos) that pause the host."""
    base_seconds: float = 2.0
    """The first pause; doubles with every failed probe..."""
    cap_seconds: float = 3600.0
    """...up to this."""
    jitter: float = 0.25
    """Pauses are multiplied by a factor in [1 - jitter, 1 + jitter]."""
    give_up_after: float | None = 86_400.0
    """A host failing for this long (no answer in between) is given up for the run."""
    unreachable_after: float | None = 600.0
    """The same for the operator's own endpoints that never answered in this run."""


ChangeListener = Callable[["Breaker"], None]


class Breaker:
    """The failure state of one host. Single event loop; not thread-safe."""

    def __init__(
        self,
        host: str,
        policy: BreakerPolicy,
        *,
        operator: bool = False,
        clock: Callable[[], float] = time.time,
        rand: Callable[[], float] = random.random,
        on_change: ChangeListener | None = None,
    ) -> None:
        self.host = host
        self.policy = policy
        self.operator = operator
        """The operator named this endpoint (PLC directory, relay, --pds): a shorter
        budget while it has never answered (likely a wrong address)."""
        self._clock = clock
        self._rand = rand
        self.on_change = on_change
        self.state = BreakerState.CLOSED
        self.failures = 0
        """Host failures in a row (reset by any answer)."""
        self.pauses = 0
        """Pauses in a row (reset when the host answers again)."""
        self.resume_at = 0.0
        """Unix seconds when the pause ends and one probe may go."""
        self.probing = False
        self.failing_since: float | None = None
        self.answered = False
        """Whether the host has answered once during this run."""
        self.last_error = ""
        """`Code: message` of the last host failure."""
        self.last_code = ""

    # -- questions -----------------------------------------------------------------
    @property
    def reason(self) -> str:
        """Why the host is held back, for status and the live view ('' when it is not)."""
        if self.state is BreakerState.CLOSED:
            return ""
        if self.state is BreakerState.GIVEN_UP:
            return f"given up: {self.last_code} for {self._failing_for():.0f}s"
        return f"unreachable ({self.last_code}, {self.failures} failures in a row)"

    def paused(self) -> bool:
        """Open (held back or probing) or given up."""
        return self.state is not BreakerState.CLOSED

    def claimable(self, busy: int) -> int | None:
        """How many repos the scheduler may hand out for this host now (None: no
        limit from the breaker). `busy`: repos of the host being worked on."""
        if self.state is not BreakerState.OPEN:
            return None
        if self._clock() < self.resume_at or self.probing or busy:
            return 0
        return 1  # the probe

    def holds(self, error: BaseException) -> bool:
        """Whether a failed repo waits for the host instead of spending an attempt:
        the breaker held its request back, or the host is paused and this was one
        more host failure (the one that tripped it, a straggler, a failed probe)."""
        if isinstance(error, HostPaused):
            return True
        return self.state is BreakerState.OPEN and is_host_failure(error)

    def resume_time(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.resume_at, dt.UTC)

    # -- around a request ----------------------------------------------------------
    def check(self) -> bool:
        """Before a request: raise HostPaused (wait) or HostUnreachable (given up), or
        let it go. True when it goes as the probe (the first request once a pause is
        over): its outcome must be reported with `probe=True` (or `release_probe`)."""
        if self.state is BreakerState.CLOSED:
            return False
        if self.state is BreakerState.GIVEN_UP:
            raise HostUnreachable(
                f"{self.host}: {self.reason} (last: {self.last_error})", code=self.last_code
            )
        if self._clock() < self.resume_at or self.probing:
            raise HostPaused(f"{self.host}: {self.reason}", retry_at=self.resume_time())
        self.probing = True
        return True

    def success(self) -> None:
        """The host answered (any status below 500 but 408, 429 included)."""
        self.answered = True
        if self.state is BreakerState.GIVEN_UP:
            return  # given up for this run: repos already dead-lettered stay so
        changed = self.state is BreakerState.OPEN
        self.state = BreakerState.CLOSED
        self.failures = self.pauses = 0
        self.probing = False
        self.failing_since = None
        if changed:
            log.warning("%s answers again; resuming", self.host, extra={"host": self.host})
            self._changed()

    def failure(self, error: BackfillError, *, probe: bool = False) -> None:
        """A host failure (see `is_host_failure`); other errors are not reported here.
        `probe`: the request was the probe `check()` let through."""
        now = self._clock()
        self.failures += 1
        self.last_error = f"{error.code}: {error.message}"
        self.last_code = error.code
        if self.failing_since is None:
            self.failing_since = now
        if self.state is BreakerState.GIVEN_UP:
            return
        if self.state is BreakerState.OPEN:
            if not probe:
                return  # a request sent before the pause: the pause already covers it
            self.probing = False
        elif self.failures < self.policy.threshold:
            return
        budget = self._budget()
        if budget is not None and now - self.failing_since >= budget:
            self.state = BreakerState.GIVEN_UP
            log.warning(
                "%s: giving up on this host for this run after %.0fs of failures (%s)",
                self.host,
                now - self.failing_since,
                self.last_error,
                extra={"host": self.host},
            )
            self._changed()
            return
        self.pauses += 1
        p = self.policy
        pause = min(p.cap_seconds, p.base_seconds * 2.0 ** min(self.pauses - 1, 60))
        pause *= 1.0 - p.jitter + 2.0 * p.jitter * self._rand()
        self.resume_at = now + pause
        if self.state is BreakerState.CLOSED:
            log.warning(
                "%s: %d failures in a row (%s); pausing this host for %.1fs",
                self.host,
                self.failures,
                self.last_error,
                pause,
                extra={"host": self.host},
            )
        self.state = BreakerState.OPEN
        self._changed()

    def release_probe(self) -> None:
        """The probe ended without telling whether the host is up (no answer, no host
        failure: e.g. a request refused before it was sent)."""
        self.probing = False

    # -- internals -----------------------------------------------------------------
    def _budget(self) -> float | None:
        p = self.policy
        if self.operator and not self.answered and p.unreachable_after is not None:
            if p.give_up_after is None:
                return p.unreachable_after
            return min(p.give_up_after, p.unreachable_after)
        return p.give_up_after

    def _failing_for(self) -> float:
        return 0.0 if self.failing_since is None else self._clock() - self.failing_since

    def _changed(self) -> None:
        if self.on_change is not None:
            self.on_change(self)


class Outcome:
    """One request's report to its host's breaker (xrpc/client.py): `check()` on
    creation, then `answered` or `failed`, and `close()` in a `finally`."""

    __slots__ = ("_breaker", "_probe", "_reported")

    def __init__(self, breaker: Breaker) -> None:
        self._breaker = breaker
        self._probe = breaker.check()
        self._reported = False

    def answered(self, status: int, error: BackfillError | None = None) -> None:
        """The host answered with `status` (`error`: what that status maps to)."""
        if self._reported:
            return
        self._reported = True
        if error is not None and is_host_failure(error):
            self._breaker.failure(error, probe=self._probe)
        else:
            self._breaker.success()

    def failed(self, error: BackfillError) -> None:
        """The request failed without an answer (or its body did, after one)."""
        if not self._reported and is_host_failure(error):
            self._reported = True
            self._breaker.failure(error, probe=self._probe)

    def close(self) -> None:
        if not self._reported and self._probe:
            self._breaker.release_probe()


class BreakerBoard:
    """Every host's breaker, by host key (`host[:port]`, lower case), for one run."""

    def __init__(
        self,
        policy: BreakerPolicy | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self._clock = clock
        self._breakers: dict[str, Breaker] = {}
        self._operator: set[str] = set()
        self.listeners: list[ChangeListener] = []

    def mark_operator(self, host: str) -> None:
        """`host` is one of the operator's endpoints (see `BreakerPolicy.unreachable_after`)."""
        host = host.lower()
        self._operator.add(host)
        if host in self._breakers:
            self._breakers[host].operator = True

    def get(self, host: str) -> Breaker:
        host = host.lower()
        breaker = self._breakers.get(host)
        if breaker is None:
            breaker = self._breakers[host] = Breaker(
                host,
                self.policy,
                operator=host in self._operator,
                clock=self._clock,
                on_change=self._notify,
            )
        return breaker

    def paused(self) -> list[Breaker]:
        return [b for b in self._breakers.values() if b.paused()]

    def _notify(self, breaker: Breaker) -> None:
        for listener in self.listeners:
            listener(breaker)


__all__ = [
    "HOST_FAILURE_CODES",
    "Breaker",
    "BreakerBoard",
    "BreakerPolicy",
    "BreakerState",
    "Outcome",
    "is_host_failure",
]
