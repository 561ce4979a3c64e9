"""A per-host, per-bucket request pacer driven by our limit and the server's headers.

Where it sits: every request to a PDS first awaits `RateBucket.acquire()` on
its host slot (xrpc/slot.py), then reports the response with `observe()`.

Written by hand because no maintained asyncio limiter reads the IETF
`RateLimit-*` headers. It combines three things:
  1. our own token bucket at `--rate-limit` requests/s (politeness floor);
  2. the server's published budget: after each response we know how many
     requests remain until the window resets (`RateLimit-Remaining`,
     `RateLimit-Reset`); we subtract requests still in flight and never send
     more than that, then wait for the reset, so a host that publishes its
     budget sends us zero 429s while we still use all of it. (Spreading the
     remainder evenly over the window would lose up to a second per window to
     the header's whole-second rounding; our own `--rate-limit` already keeps
     the pace polite.)
     A whole-second reset names the *end* of that second: the reference PDS
     (`@atproto/xrpc-server`) sends `floor((now_ms + msBeforeNext) / 1000)`,
     so its window really ends up to a second after the second it names.
     It also runs several limiters at once (a global per-IP one, per-route
     ones) and each answer describes the tightest; which one that is changes
     as they drain and reset. So a bucket keeps every policy it has been told
     about (`Quota`, keyed by limit and window) and sends only while all of
     them, each counted down by what we sent since, have room.
  3. 429 feedback: pause this bucket until `Retry-After` / `RateLimit-Reset`,
     or, for a bare 429 without headers, an exponential backoff with jitter.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass

MAX_WAIT_SECONDS = 3600.0
"""The longest pause a host's headers can impose by default; a host that asks for
more (a year, 10^12 seconds) is asked again after this (then the failure policy
decides)."""
# A published budget beyond this is not a number any server means.
_MAX_BUDGET = 1e9


def _header_float(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        return None
    try:
        number = float(value.split(",")[0].strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def reset_at(value: str, now: float) -> float | None:
    """A `RateLimit-Reset` header as the unix time by which the window has surely
    reset. Unix seconds as the reference PDS sends them: a whole number names the
    end of that second (it floors; see the module docstring). Small values are
    seconds from now, as the IETF draft has them (servers round those up)."""
    try:
        reset = float(value.split(",")[0].strip())
    except ValueError:
        return None
    if reset != reset or reset in (float("inf"), float("-inf")):
        return None
    if reset < RateBucket.DELTA_RESET_MAX:
        return now + reset
    return reset + 1.0 if reset.is_integer() else reset


def _policy_windows(headers: Mapping[str, str]) -> dict[int, float]:
    """`RateLimit-Policy: 3000;w=300, 100;w=60` -> {3000: 300.0, 100: 60.0}."""
    out: dict[int, float] = {}
    for item in headers.get("RateLimit-Policy", "").split(","):
        parts = [p.strip() for p in item.split(";")]
        try:
            quota = int(parts[0])
        except ValueError:
            continue
        for param in parts[1:]:
            name, _, value = param.partition("=")
            if name.strip() == "w":
                with contextlib.suppress(ValueError):
                    out[quota] = float(value.strip())
    return out


def retry_after_seconds(
    headers: Mapping[str, str], now: float, cap: float = MAX_WAIT_SECONDS
) -> float | None:
    """Seconds to wait from a 429/503 `Retry-After` (delta seconds or HTTP date),
    at most `cap`."""
    value = headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return min(cap, float(value[:20]))
    try:
        when = email.utils.parsedate_to_datetime(value)
        wait = when.timestamp() - now
    except (TypeError, ValueError, OverflowError, IndexError):
        return None
    return min(cap, max(0.0, wait))


def bounded_rate_headers(
    headers: Mapping[str, str], now: float, cap: float = MAX_WAIT_SECONDS
) -> dict[str, str]:
    """A response's headers with the rate-limit ones made sane, for everything after the
    client: `Retry-After` as whole seconds within [0, cap], `RateLimit-Reset` as a unix
    time within [now, now + cap], `RateLimit-Remaining`/`-Limit` finite and >= 0; a
    value that cannot be read is dropped. So no header can pause a host for longer
    than `cap` or overflow a date."""
    out = {k: v for k, v in headers.items() if k.lower() not in _RATE_HEADERS}
    wait = retry_after_seconds(headers, now, cap)
    if wait is not None:
        out["Retry-After"] = str(math.ceil(wait))
    reset = _header_float(headers, "RateLimit-Reset")
    if reset is not None and reset >= 0:
        if reset < RateBucket.DELTA_RESET_MAX:
            out["RateLimit-Reset"] = f"{now + min(reset, cap):.3f}"
        elif reset.is_integer() and reset <= now + cap:
            # Whole unix seconds stay whole: the reference PDS floors its reset, so
            # the second it names ends the window (reset_at), even when that second
            # has begun already. One beyond the cap is cut to the cap exactly (below).
            out["RateLimit-Reset"] = str(int(max(reset, math.floor(now))))
        else:
            out["RateLimit-Reset"] = f"{min(max(reset, now), now + cap):.3f}"
    for name in ("RateLimit-Remaining", "RateLimit-Limit"):
        number = _header_float(headers, name)
        if number is not None and number >= 0:
            out[name] = str(int(min(number, _MAX_BUDGET)))
    return out


_RATE_HEADERS = frozenset(
    {"retry-after", "ratelimit-reset", "ratelimit-remaining", "ratelimit-limit"}
)


@dataclass(slots=True)
class Quota:
    """One published policy as last heard: requests left (minus what we sent since)
    until `reset` (unix seconds, when the window has surely reset)."""

    limit: int | None
    window: float | None
    remaining: float
    reset: float


class RateBucket:
    """Pacing state for one (host, endpoint class). Single event loop; not thread-safe."""

    # A published reset more than this far away is treated as a relative delta
    # (some servers send seconds-until-reset instead of a unix time).
    DELTA_RESET_MAX = 10 * 365 * 86400.0

    def __init__(
        self, rate: float | None, *, backoff_base: float = 1.0, backoff_cap: float = 120.0
    ):
        self.rate = rate  # our requests/s; None = unlimited except by the server
        self._tokens = 1.0
        self._last = time.monotonic()
        self._lock = asyncio.Lock()
        self.in_flight = 0
        # Server budgets as of the last responses, minus what we sent since: one per
        # policy the server has described (its limiters report the tightest in turn).
        self.quotas: dict[tuple[int | None, float | None], Quota] = {}
        self.server_limit: int | None = None
        self.paused_until = 0.0  # unix seconds
        self._answered = False  # has the host answered since we last lost track of its budget?
        self.pause_reason = ""
        self._consecutive_429 = 0
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self.requests = 0
        self.throttled = 0

    # -- the binding quota (progress display, tests) ----------------------------------
    def _binding(self) -> Quota | None:
        quotas = self.quotas.values()
        return min(quotas, key=lambda q: (q.remaining, -q.reset)) if quotas else None

    @property
    def server_remaining(self) -> float | None:
        """Requests left in the tightest known policy (None: no budget known)."""
        q = self._binding()
        return None if q is None else q.remaining

    @server_remaining.setter
    def server_remaining(self, value: float | None) -> None:
        self._set_manual(remaining=value)

    @property
    def server_reset(self) -> float | None:
        """When the tightest known policy's window has surely reset (unix seconds)."""
        q = self._binding()
        return None if q is None else q.reset

    @server_reset.setter
    def server_reset(self, value: float | None) -> None:
        self._set_manual(reset=value)

    def _set_manual(self, *, remaining: float | None = None, reset: float | None = None) -> None:
        """Set a budget by hand (tests, tools): one policy of unknown shape."""
        if remaining is None and reset is None:
            self.quotas.clear()
            return
        q = self.quotas.setdefault((None, None), Quota(None, None, float("inf"), float("inf")))
        if remaining is not None:
            q.remaining = remaining
        if reset is not None:
            q.reset = reset

    # -- before a request ------------------------------------------------------
    async def acquire(self) -> None:
        """Wait until a request may be sent now, then count it as in flight."""
        async with self._lock:  # one waiter at a time keeps the pacing fair and simple
            while True:
                delay = self._delay(time.time())
                if delay <= 0:
                    break
                await asyncio.sleep(delay)
            self.in_flight += 1
            self.requests += 1
            if self.rate is not None:
                self._tokens -= 1.0
            # Every limiter of the server counts every request (xrpc-server consumes
            # a point of each), so every known policy has one less left.
            for q in self.quotas.values():
                q.remaining -= 1

    def _delay(self, now: float) -> float:
        """Seconds until the next request may go (0 = now)."""
        if self.paused_until > now:
            return self.paused_until - now
        self.pause_reason = ""
        if not self._answered and self.in_flight > 0:
            # Until the host's first answer (per window) we do not know its budget:
            # one probe at a time, so a small budget is never overrun by a burst.
            return 0.05
        wait = 0.0
        if self.rate is not None:
            mono = time.monotonic()
            burst = max(1.0, self.rate)
            self._tokens = min(burst, self._tokens + (mono - self._last) * self.rate)
            self._last = mono
            if self._tokens < 1.0:
                wait = (1.0 - self._tokens) / self.rate
        for key, q in list(self.quotas.items()):
            if now >= q.reset:
                # This window rolled over: the next response tells us the new budget.
                # Until the requests still out have answered, send nothing (their
                # answers may belong to the new window and correct our view).
                if self.in_flight > 0:
                    return max(wait, 0.05)
                del self.quotas[key]
                self._answered = False
                if not self.quotas:
                    return max(wait, 0.0)
            elif q.remaining < 1:
                self.pause_reason = "server budget used up until its window resets"
                wait = max(wait, q.reset - now + 0.01)
        if not self._answered and self.in_flight > 0:
            return max(wait, 0.05)
        return wait

    # -- after a response ------------------------------------------------------
    def observe(self, status: int | None, headers: Mapping[str, str] | None) -> None:
        """Learn from a response (status None = the request failed without one)."""
        self.in_flight = max(0, self.in_flight - 1)
        self._answered = True
        now = time.time()
        if headers is not None:
            self._read_budget(headers, now)
        if status == 429:
            self.throttled += 1
            self._consecutive_429 += 1
            wait = retry_after_seconds(headers or {}, now)
            reset = self.server_reset
            if wait is None and reset is not None and reset > now:
                wait = reset - now
            if wait is None:
                base = self._backoff_base * 2 ** (self._consecutive_429 - 1)
                wait = min(self._backoff_cap, base) * random.uniform(0.5, 1.5)
            self.pause(now + wait, "rate limited (429)")
        elif status is not None and status < 500:
            self._consecutive_429 = 0

    def _read_budget(self, headers: Mapping[str, str], now: float) -> None:
        remaining = _header_float(headers, "RateLimit-Remaining")
        reset_value = headers.get("RateLimit-Reset")
        limit = _header_float(headers, "RateLimit-Limit")
        if remaining is None or reset_value is None:
            return
        reset = reset_at(reset_value, now)
        if reset is None:
            return
        quota = int(limit) if limit is not None else None
        if quota is not None:
            self.server_limit = quota
        windows = _policy_windows(headers)
        window = windows.get(quota) if quota is not None else None
        if window is None and len(windows) == 1:
            window = next(iter(windows.values()))
        # Requests still in flight were sent after this answer was counted: they
        # will consume budget the header does not show yet.
        estimate = remaining - self.in_flight
        key = (quota, window)
        known = self.quotas.get(key)
        if known is not None and known.reset > now and abs(reset - known.reset) < 1.5:
            # Answers can arrive out of order: within one window, trust the lowest.
            # (A known window already over is surely not this answer's.)
            estimate = min(estimate, known.remaining)
        self.quotas[key] = Quota(quota, window, estimate, reset)

    def pause(self, until: float, reason: str) -> None:
        """Send nothing on this bucket before `until` (unix seconds)."""
        if until > self.paused_until:
            self.paused_until = until
            self.pause_reason = reason

    def describe(self) -> str:
        """A short human reason when paused, '' otherwise (progress display, logs)."""
        now = time.time()
        if self.paused_until > now:
            return f"{self.pause_reason} for {self.paused_until - now:.0f}s"
        return self.pause_reason
