"""Live counters of one run, read by the summary, the progress lines and the metrics.

Where it sits: the engine and the HTTP client update it as things happen;
nothing in the core reads it back to make decisions.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class RunStats:
    started: float = field(default_factory=time.monotonic)
    repos_done: int = 0
    repos_failed: int = 0
    repos_retried: int = 0
    repos_held: int = 0
    """Put back without spending an attempt: their host was paused."""
    failed_codes: Counter[str] = field(default_factory=Counter)
    """Repos dead-lettered whole during this run, by code (exit status 3's message)."""
    records: Counter[str] = field(default_factory=Counter)
    dead_letters: Counter[str] = field(default_factory=Counter)
    requests: Counter[tuple[str, str, int | None]] = field(default_factory=Counter)
    bytes: int = 0
    commits: int = 0

    def on_response(self, host: str, endpoint: str, status: int | None, nbytes: int) -> None:
        self.requests[(host, endpoint, status)] += 1
        self.bytes += nbytes

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def records_total(self) -> int:
        return sum(self.records.values())
