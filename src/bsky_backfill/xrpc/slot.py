"""One explicit object per PDS host: its rate buckets and its concurrency cap.

Where it sits: the engine's scheduler keeps a `HostSlot` per host (like
Scrapy's downloader slots); workers of that host await `slot.bucket(endpoint)`
before each request. Waiting for the host's budget happens here, before
anything global, so a slow or throttled host only ever delays its own repos.

Separate buckets where servers keep separate limits: `com.atproto.sync.getRepo`
has its own budget on the reference PDS, every other endpoint shares one. A
429 on any bucket pauses the whole host: some hosts advertise per-endpoint
budgets but enforce a total.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from bsky_backfill.errors import RateLimited
from bsky_backfill.xrpc.breaker import Breaker
from bsky_backfill.xrpc.ratelimit import RateBucket
from bsky_backfill.xrpc.shared import SharedHostBudget

GET_REPO = "com.atproto.sync.getRepo"

log = logging.getLogger("bsky_backfill.hosts")

MAX_RATE_LIMIT_WAITS = 50
"""429s one call may wait out before it counts as a failed attempt."""

T = TypeVar("T")


async def through_rate_limits(call: Callable[[], Awaitable[T]]) -> T:
    """Run an XRPC call, repeating it after 429s. Not an attempt: the host slot has
    paused itself, and the next acquire() waits until the host allows more."""
    waits = 0
    while True:
        try:
            return await call()
        except RateLimited:
            waits += 1
            if waits >= MAX_RATE_LIMIT_WAITS:
                raise


def bucket_name(endpoint: str) -> str:
    """Which budget an XRPC endpoint draws from."""
    return "getRepo" if endpoint == GET_REPO else "default"


class HostSlot:
    """Pacing and bookkeeping for one PDS host."""

    def __init__(
        self,
        host: str,
        rate: float | None,
        concurrency: int,
        shared: SharedHostBudget | None = None,
    ) -> None:
        self.host = host
        self.shared = shared
        """The cluster-wide allowance for this host, when `--global-host-rate` is set."""
        self.rate = rate
        self.concurrency = concurrency
        self.buckets: dict[str, RateBucket] = {}
        self.breaker: Breaker | None = None
        """The host's circuit breaker (xrpc/breaker.py), set by the engine."""
        self.active = 0  # repos being worked on for this host right now
        self.done = 0
        self.failed = 0
        self.bytes = 0

    def bucket(self, endpoint: str) -> RateBucket:
        name = bucket_name(endpoint)
        bucket = self.buckets.get(name)
        if bucket is None:
            bucket = self.buckets[name] = RateBucket(self.rate)
        return bucket

    def observe(self, endpoint: str, status: int | None, headers: dict[str, str] | None) -> None:
        """Feed a response to its bucket; a 429 pauses every bucket of the host."""
        bucket = self.bucket(endpoint)
        was_paused = self.paused_until > time.time()
        bucket.observe(status, headers)
        if status == 429:
            for other in self.buckets.values():
                other.pause(bucket.paused_until, bucket.pause_reason)
            if not was_paused:  # one line per pause, not per throttled request
                log.warning(
                    "%s: rate limited (429 on %s); pausing this host for %.1fs",
                    self.host,
                    endpoint,
                    self.paused_until - time.time(),
                    extra={"host": self.host, "endpoint": endpoint},
                )

    @property
    def paused_until(self) -> float:
        return max((b.paused_until for b in self.buckets.values()), default=0.0)

    def pause_reason(self) -> str:
        """Why this host is paused now ('' when it is not)."""
        now = time.time()
        for bucket in self.buckets.values():
            if bucket.paused_until > now or bucket.pause_reason:
                return bucket.describe()
        return ""

    @property
    def requests(self) -> int:
        return sum(b.requests for b in self.buckets.values())

    @property
    def throttled(self) -> int:
        return sum(b.throttled for b in self.buckets.values())
