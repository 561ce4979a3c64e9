"""Retry policy: one pure function from (error, attempt, time failing) to "retry at T" or "give up".

Where it sits: the engine's worker (a repo's fetch) and its resolver (a DID's
identity) catch an error and ask `next_attempt`; the answer goes into the state
store (attempts, first failure time, next attempt time, last error as columns),
so a restart keeps every repo's retry schedule. Pure so that it is trivially
testable and identical across processes.

The budget of a long run (anchors: Tap retries errored repos with backoff up
to an hour; dlt treats unknown exceptions as retryable):

- transient errors back off exponentially with jitter, up to `cap_seconds`
  (an hour by default);
- a repo is failed for good only when *both* budgets are spent: `max_attempts`
  tries, and `give_up_after` seconds since its first transient failure (24 h by
  default). A burst of failures in one bad minute therefore never condemns a
  repo, and neither does one slow failure a day;
- an exception outside the error tree (a bug, an unmapped library error) is
  transient too, bounded like the rest: the repo is not condemned for our bug;
- terminal errors (the host's verdict on the repo, a broken CAR, a refused
  address) are never retried within a run; `run --retry-failed` brings them
  back by hand (`retried_by_default` says which without naming their codes).

Not an attempt at all: a 429 (the host slot waits) and `HostPaused` (the
host's circuit breaker holds its repos; xrpc/breaker.py).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from bsky_backfill.errors import BackfillError, HostPaused, RateLimited, TransientError


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff with jitter for transient errors, bounded in tries and in time."""

    max_attempts: int = 6
    """Attempts in total (the first one included) before a transient error may dead-letter..."""
    base_seconds: float = 2.0
    """Delay before the second attempt; doubles each time."""
    cap_seconds: float = 3600.0
    """Longest delay between two attempts (and the longest pause of a failing host)."""
    jitter: float = 0.5
    """Delay is multiplied by a factor in [1 - jitter, 1 + jitter] so retries spread out."""
    give_up_after: float | None = 86_400.0
    """...and only once this many seconds have passed since the first transient failure
    (None: tries alone decide). Callers that keep no failure time (in-memory retries of
    one page) pass no `failing_since`, and tries alone decide for them too."""


def is_retryable(error: BaseException) -> bool:
    """Transient errors and anything outside the error tree (unknown = retry, like dlt)."""
    return isinstance(error, TransientError) or not isinstance(error, BackfillError)


def backoff_seconds(policy: RetryPolicy, attempt: int, rand: float) -> float:
    """The jittered delay after failed attempt number `attempt` (1-based)."""
    # The exponent is capped: 2**1000 would overflow a float long after the cap applies.
    delay = min(policy.cap_seconds, policy.base_seconds * 2.0 ** min(attempt - 1, 60))
    return delay * (1.0 - policy.jitter + 2.0 * policy.jitter * rand)


def next_attempt(
    policy: RetryPolicy,
    error: BaseException,
    attempt: int,
    now: dt.datetime,
    rand: float,
    failing_since: dt.datetime | None = None,
) -> dt.datetime | None:
    """When to try again after `error` on attempt number `attempt` (1-based), or None.

    `failing_since` is when this repo (or DID) first failed transiently (`now` for a
    first failure); None means no time budget is kept and tries alone decide.
    `rand` in [0, 1) supplies the jitter (the caller owns randomness; this stays pure).
    """
    if not is_retryable(error):
        return None  # terminal and usage errors are never retried within a run
    tries_spent = attempt >= policy.max_attempts
    time_spent = (
        failing_since is None
        or policy.give_up_after is None
        or (now - failing_since).total_seconds() >= policy.give_up_after
    )
    if tries_spent and time_spent:
        return None
    when = now + dt.timedelta(seconds=backoff_seconds(policy, attempt, rand))
    if isinstance(error, RateLimited | HostPaused) and error.retry_at is not None:
        when = max(when, error.retry_at)
    return when


def error_code(error: BaseException) -> str:
    """The stable code of an error; `InternalError` for exceptions outside the tree."""
    return error.code if isinstance(error, BackfillError) else "InternalError"


def error_summary(error: BaseException) -> str:
    """`Code: message` for the state store's last_error column and dead letters."""
    if isinstance(error, BackfillError):
        return f"{error.code}: {error.message}"
    return f"{type(error).__name__}: {error}"


TERMINAL_VERDICTS = frozenset(
    {
        # the host's or the directory's verdict on the account
        "RepoTakendown", "RepoDeactivated", "RepoSuspended", "RepoDeleted", "RepoNotFound",
        "DidNotFound", "UnsupportedDid", "NoPdsEndpoint", "InvalidDidDocument", "Gone",
        # the account's own document disowns the handle listed
        "HandleMismatch",
        # the repository itself cannot be trusted or is too big for this run's limit
        "VerificationFailed", "InvalidRepo", "InvalidCar", "InvalidCommit", "InvalidMST",
        "RepoTooLarge",
    }
)  # fmt: skip
"""Codes that are verdicts about the repo, not about our access to it: `run
--retry-failed` without codes leaves them failed; naming them retries them."""


def retried_by_default(code: str) -> bool:
    """Whether `run --retry-failed` (no codes named) puts a repo failed with `code` back."""
    return code not in TERMINAL_VERDICTS
