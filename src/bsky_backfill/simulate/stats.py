"""What the simulated servers saw: requests per (host, endpoint, status), and more.

Where this sits: every simulated server (PLC, did:web sites, PDS hosts)
records each request here from its outermost middleware. Tests read it from
another thread (the network runs on its own event loop), so every access
takes a lock.
"""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UnexpectedRequest:
    """A request no simulated route answers: a product bug worth failing a test for."""

    host: str
    method: str
    path: str


class RequestStats:
    """Thread-safe request counters for the whole simulated network."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[tuple[str, str, int]] = Counter()
        self._faults: Counter[tuple[str, str]] = Counter()
        self._unexpected: list[UnexpectedRequest] = []

    # -- written by the servers ---------------------------------------------------

    def record(self, host: str, endpoint: str, status: int) -> None:
        with self._lock:
            self._counts[(host, endpoint, status)] += 1

    def record_fault(self, host: str, kind: str) -> None:
        with self._lock:
            self._faults[(host, kind)] += 1

    def record_unexpected(self, host: str, method: str, path: str) -> None:
        with self._lock:
            self._unexpected.append(UnexpectedRequest(host, method, path))

    # -- read by tests ----------------------------------------------------------------

    def count(
        self, host: str | None = None, endpoint: str | None = None, status: int | None = None
    ) -> int:
        """Requests matching every given filter (None matches anything)."""
        with self._lock:
            return sum(
                n
                for (h, e, s), n in self._counts.items()
                if (host is None or h == host)
                and (endpoint is None or e == endpoint)
                and (status is None or s == status)
            )

    def total(self) -> int:
        """Every request any simulated server answered."""
        return self.count()

    def snapshot(self) -> dict[tuple[str, str, int], int]:
        """A copy of all counters: (host, endpoint, status) -> requests."""
        with self._lock:
            return dict(self._counts)

    def faults(self) -> dict[tuple[str, str], int]:
        """Injected faults: (host, kind) -> times (kinds: error, hang, truncate, short_car)."""
        with self._lock:
            return dict(self._faults)

    @property
    def unexpected(self) -> list[UnexpectedRequest]:
        with self._lock:
            return list(self._unexpected)

    def reset(self) -> None:
        with self._lock:
            self._counts.clear()
            self._faults.clear()
            self._unexpected.clear()
