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
  3. 429 feedback: pause this bucket until `Retry-After` / `RateLimit-Reset`,
     or, for a bare 429 without headers, an exponential backoff with jitter.
"""

from __future__ import annotations

import asyncio
import email.utils
import math
import random
import time
from collections.abc import Mapping

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
        at = now + reset if reset < RateBucket._DELTA_RESET_MAX else reset
        out["RateLimit-Reset"] = f"{min(max(at, now), now + cap):.3f}"
    for name in ("RateLimit-Remaining", "RateLimit-Limit"):
        number = _header_float(headers, name)
        if number is not None and number >= 0:
            out[name] = str(int(min(number, _MAX_BUDGET)))
    return out


_RATE_HEADERS = frozenset(
    {"retry-after", "ratelimit-reset", "ratelimit-remaining", "ratelimit-limit"}
)


class RateBucket:
    """Pacing state for one (host, endpoint class). Single event loop; not thread-safe."""

    # A published reset more than this far away is treated as a relative delta
    # (some servers send seconds-until-reset instead of a unix time).
    _DELTA_RESET_MAX = 10 * 365 * 86400.0

    def __init__(
        self, rate: float | None, *, backoff_base: float = 1.0, backoff_cap: float = 120.0
    ):
        self.rate = rate  # our requests/s; None = unlimited except by the server
        self._tokens = 1.0
        self._last = time.monotonic()
        self._lock = asyncio.Lock()
        self.in_flight = 0
        # Server budget as of the last response, minus what we sent since.
        self.server_limit: int | None = None
        self.server_remaining: float | None = None
        self.server_reset: float | None = None  # unix seconds
        self.paused_until = 0.0  # unix seconds
        self._answered = False  # has the host answered since we last lost track of its budget?
        self.pause_reason = ""
        self._consecutive_429 = 0
        self._backoff_base = backoff_base
        self._backoff_cap = backoff_cap
        self.requests = 0
        self.throttled = 0

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
            if self.server_remaining is not None:
                self.server_remaining -= 1

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
        if self.server_reset is not None and self.server_remaining is not None:
            if now >= self.server_reset:
                # The window rolled over: the next response tells us the new budget.
                # Until the requests still out have answered, send nothing (their
                # answers may belong to the new window and correct our view).
                if self.in_flight > 0:
                    return max(wait, 0.05)
                self.server_remaining = None
                self.server_reset = None
                self._answered = False
            elif self.server_remaining < 1:
                self.pause_reason = "server budget used up until its window resets"
                return max(wait, self.server_reset - now + 0.05)
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
            if wait is None and self.server_reset is not None and self.server_reset > now:
                wait = self.server_reset - now
            if wait is None:
                base = self._backoff_base * 2 ** (self._consecutive_429 - 1)
                wait = min(self._backoff_cap, base) * random.uniform(0.5, 1.5)
            self.pause(now + wait, "rate limited (429)")
        elif status is not None and status < 500:
            self._consecutive_429 = 0

    def _read_budget(self, headers: Mapping[str, str], now: float) -> None:
        remaining = _header_float(headers, "RateLimit-Remaining")
        reset = _header_float(headers, "RateLimit-Reset")
        limit = _header_float(headers, "RateLimit-Limit")
        if remaining is None or reset is None:
            return
        if reset < self._DELTA_RESET_MAX:
            reset = now + reset
        if limit is not None:
            self.server_limit = int(limit)
        # Requests still in flight were sent after this answer was counted: they
        # will consume budget the header does not show yet.
        estimate = remaining - self.in_flight
        same_window = self.server_reset is not None and abs(reset - self.server_reset) < 1.5
        if same_window and self.server_remaining is not None:
            # Answers can arrive out of order: within one window, trust the lowest.
            estimate = min(estimate, self.server_remaining)
        self.server_remaining = estimate
        self.server_reset = reset

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
