"""A per-host request budget shared by every worker of a cluster (`--global-host-rate`).

Where it sits: beside the per-process `RateBucket` (ratelimit.py), inside a
`HostSlot`. PDS limits are per client IP, and each machine normally has its
own, so by default every machine paces each host on its own. Operators whose
machines share one egress IP need one budget for all of them: this takes
requests from a per-second allowance kept in the PostgreSQL queue
(`PostgresStateStore.take_host_tokens`), a few at a time, so the database sees
a handful of calls per host per second rather than one per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

TakeTokens = Callable[[str, int, int], tuple[int, float]]
"""(host, wanted, per-second cap) -> (granted, seconds until the next second)."""


class SharedHostBudget:
    """Requests to one host from the cluster-wide allowance of `per_second`."""

    def __init__(self, host: str, per_second: int, take: TakeTokens) -> None:
        self.host = host
        self.per_second = max(1, per_second)
        self._take = take
        self._tokens = 0
        self._lock = asyncio.Lock()
        # Small grabs keep the allowance fair between workers; at least one.
        self._batch = max(1, self.per_second // 8)

    async def acquire(self) -> None:
        """Wait until this worker may send one more request to the host."""
        async with self._lock:
            while self._tokens == 0:
                granted, wait = await asyncio.to_thread(
                    self._take, self.host, self._batch, self.per_second
                )
                self._tokens += granted
                if not granted:
                    await asyncio.sleep(max(0.01, wait))
            self._tokens -= 1
