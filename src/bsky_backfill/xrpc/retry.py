"""Retry policy: one pure function from (error, attempt) to "retry at T" or "give up".

Where it sits: the engine's worker catches a BackfillError for a repo and asks
`next_attempt`; the answer goes into the state store (attempts, next attempt
time, last error as columns), so a restart keeps every repo's retry schedule.
Pure so that it is trivially testable and identical across processes.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from bsky_backfill.errors import BackfillError, RateLimited, TransientError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient errors, bounded attempts."""

    max_attempts: int = 6
    """Attempts in total (the first one included) before a transient error dead-letters."""
    base_seconds: float = 2.0
    """Delay before the second attempt; doubles each time."""
    cap_seconds: float = 600.0
    """Longest delay between two attempts."""
    jitter: float = 0.5
    """Delay is multiplied by a factor in [1 - jitter, 1 + jitter] so retries spread out."""


def next_attempt(
    policy: RetryPolicy, error: BaseException, attempt: int, now: dt.datetime, rand: float
) -> dt.datetime | None:
    """When to try again after `error` on attempt number `attempt` (1-based), or None.

    `rand` in [0, 1) supplies the jitter (the caller owns randomness; this stays pure).
    """
    if not isinstance(error, TransientError):
        return None  # terminal, usage and unexpected errors are never retried
    if attempt >= policy.max_attempts:
        return None
    delay = min(policy.cap_seconds, policy.base_seconds * (2 ** (attempt - 1)))
    delay *= 1.0 - policy.jitter + 2.0 * policy.jitter * rand
    when = now + dt.timedelta(seconds=delay)
    if isinstance(error, RateLimited) and error.retry_at is not None:
        when = max(when, error.retry_at)
    return when


def error_summary(error: BaseException) -> str:
    """`Code: message` for the state store's last_error column and dead letters."""
    if isinstance(error, BackfillError):
        return f"{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"
