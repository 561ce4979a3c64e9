"""What every enumeration source shares: the store it writes, the page hook, paging retries.

Where it sits: the first stage of the engine for `--all-from-plc`,
`--from-relay` and `--pds`. A source pages a directory (the PLC export, a
relay's host list, a PDS host's repo list) and streams what it finds into the
state store one page at a time, while the rest of the engine already fetches.
For every page the order is fixed, so that a crash at any moment loses
nothing:

    store the page's DIDs  ->  await on_page(Page)  ->  store.set_cursor(...)

A crash before the cursor is saved re-reads that page on the next run, and
every store write here is idempotent (enqueue ignores known DIDs, identities
are upserts, `withdraw` reports a DID only while no worker has had it), so a
page read twice changes nothing. `on_page` is where the engine routes
`RepoRejected` repos to the sink; it must make them durable (commit) before it
returns, because the cursor saved next will not deliver them again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import random
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from bsky_backfill.errors import (
    HostPaused,
    HostUnreachable,
    RateLimited,
    TerminalError,
    TransientError,
)
from bsky_backfill.models import DeadLetter, utcnow
from bsky_backfill.state.base import Identity, RepoFailed
from bsky_backfill.xrpc.breaker import is_host_failure
from bsky_backfill.xrpc.retry import RetryPolicy, error_summary, next_attempt
from bsky_backfill.xrpc.slot import MAX_RATE_LIMIT_WAITS, HostSlot

log = logging.getLogger("bsky_backfill.enumerate")

T = TypeVar("T")

#: Retries of one page: a few, quickly; a source that still fails stops (not the run).
PAGE_RETRY = RetryPolicy(max_attempts=4, base_seconds=1.0, cap_seconds=30.0)
#: Pages of one listing at most (100M repos of listRepos, 100M hosts of listHosts).
MAX_PAGES = 100_000
#: A cursor longer than this is not one (it would be stored and sent back).
MAX_CURSOR = 4096
#: 429s one page may wait out before the source gives up on its host.
#: Stage of the dead letters enumeration writes (repos a listing says are inactive).
STAGE = "enumerate"


class EnumerationStore(Protocol):
    """The part of `state.base.StateStore` a source uses.

    `withdraw`, `get_cursor` and `set_cursor` are not in the StateStore
    Protocol yet; the lead adds them there (SQLite and PostgreSQL).
    """

    def enqueue(self, dids: Iterable[str]) -> int:
        """Add DIDs as pending with unknown identity; known DIDs are left as they are."""
        ...

    def enqueue_resolved(self, identities: Iterable[Identity]) -> int:
        """Add DIDs with a known identity; a still-pending repo takes the newer identity."""
        ...

    def withdraw(self, dids: Sequence[str]) -> list[str]:
        """Take DIDs out of the queue unless a worker has had them: pending repos are
        deleted, in-progress, done and failed ones are kept. Returns, in input order, the
        DIDs that are not in the store afterwards (removed now, or never there)."""
        ...

    def get_cursor(self, source: str) -> str | None: ...

    def set_cursor(self, source: str, cursor: str) -> None: ...


@dataclass(frozen=True, slots=True)
class RepoRejected:
    """A repo a source found but that must not be fetched; the engine dead-letters it whole.

    Emitted only for DIDs the store does not hold (see `EnumerationStore.withdraw`),
    so routing one to `DatasetWriter.add_failed` never overwrites a finished repo.
    """

    did: str
    stage: str
    code: str
    message: str

    def repo_failed(self) -> RepoFailed:
        return RepoFailed(did=self.did, code=self.code, message=self.message)

    def dead_letter(self) -> DeadLetter:
        return DeadLetter(
            did=self.did, uri=None, stage=self.stage, error=self.code, message=self.message
        )


@dataclass(frozen=True, slots=True)
class Page:
    """One page a source has stored; handed to `on_page` before its cursor is saved."""

    source: str
    """The source's cursor key (e.g. `plc-export https://plc.directory`)."""
    cursor: str | None
    """The cursor saved once `on_page` returns (None: the listing ended without one)."""
    offered: int
    """DIDs written to the queue from this page (new or already known)."""
    new: int
    """Of those, DIDs the queue did not hold before."""
    dropped: int
    """DIDs taken out of the queue (tombstoned, no PDS, refused endpoint, inactive)."""
    rejected: tuple[RepoRejected, ...] = ()
    """Repos to dead-letter (durably, before returning)."""


OnPage = Callable[[Page], Awaitable[None]]


async def ignore_page(page: Page) -> None:
    """The default `on_page`: nothing to route (tests, dry runs)."""


@dataclass
class SourceResult:
    """What one run of a source did; `complete` is False when it stopped early."""

    source: str
    pages: int = 0
    offered: int = 0
    new: int = 0
    dropped: int = 0
    rejected: int = 0
    complete: bool = False
    error: str | None = None
    """Why the source stopped early (it does not stop the run)."""
    retryable: bool = False
    """Whether that error was transient (a later run may get further)."""
    hosts: dict[str, SourceResult] = field(default_factory=dict)
    """Per-host results of a relay source."""

    def add(self, page: Page) -> None:
        self.pages += 1
        self.offered += page.offered
        self.new += page.new
        self.dropped += page.dropped
        self.rejected += len(page.rejected)


class Source(Protocol):
    """An enumeration source: `run` pages it from its durable cursor to the end."""

    name: str

    async def run(self, store: EnumerationStore, on_page: OnPage) -> SourceResult: ...


class SlotPool:
    """HostSlots by host key, for sources run outside the engine (the engine passes its own
    `Backfill.slot`, so listing and fetching a host share one rate budget)."""

    def __init__(self, rate: float | None = 10.0, concurrency: int = 4) -> None:
        self.rate = rate
        self.concurrency = concurrency
        self.slots: dict[str, HostSlot] = {}

    def __call__(self, host: str) -> HostSlot:
        slot = self.slots.get(host)
        if slot is None:
            slot = self.slots[host] = HostSlot(host, self.rate, self.concurrency)
        return slot


class PageGuard:
    """One listing's defence against a host that pages forever.

    Cursors are opaque, so nothing says they must grow; but a cursor seen
    before means the listing runs in a circle (A -> B -> A), and no listing
    is longer than `max_pages`. Both end the listing with a TerminalError
    (`CursorCycle`, `TooManyPages`, stage fetch). Cursors are kept as 16-byte
    digests, so a long listing costs little memory."""

    def __init__(self, what: str, max_pages: int = MAX_PAGES) -> None:
        self.what = what
        self.max_pages = max_pages
        self.pages = 0
        self._seen: set[bytes] = set()

    def start(self, cursor: str | None) -> None:
        """The cursor a listing starts from (a resumed one counts as seen)."""
        if cursor is not None:
            self._seen.add(_digest(cursor))

    def advance(self, cursor: str) -> None:
        """A page handed on `cursor`: raise unless the listing may go on with it."""
        self.pages += 1
        if len(cursor) > MAX_CURSOR:
            raise TerminalError(
                f"{self.what}: a cursor of {len(cursor)} characters", code="InvalidCursor",
                stage="fetch",
            )  # fmt: skip
        digest = _digest(cursor)
        if digest in self._seen:
            raise TerminalError(
                f"{self.what}: the cursor {cursor[:64]!r} came back after "
                f"{self.pages} pages (a cycle)", code="CursorCycle", stage="fetch",
            )  # fmt: skip
        if self.pages >= self.max_pages:
            raise TerminalError(
                f"{self.what}: more than {self.max_pages} pages", code="TooManyPages",
                stage="fetch",
            )  # fmt: skip
        self._seen.add(digest)


def _digest(cursor: str) -> bytes:
    return hashlib.blake2b(cursor.encode("utf-8", "surrogatepass"), digest_size=16).digest()


async def with_retries(
    call: Callable[[], Awaitable[T]], what: str, policy: RetryPolicy, rand: random.Random
) -> T:
    """Run one page request, retrying transient errors with the pure retry policy.

    A 429 is not an attempt (the host slot pauses itself; for the PLC directory,
    which has no slot, the wait follows the error's `retry_at`), nor is a request
    held back by a paused host (`HostPaused`), nor a host failure (refused, timed
    out, 5xx): the host's circuit breaker bounds those, and raises HostUnreachable
    once it gives the host up. Raises the last error once the policy gives up;
    terminal errors are raised at once.
    """
    attempt = 1
    waits = 0
    while True:
        try:
            return await call()
        except HostPaused as e:
            # The host's circuit breaker holds it (xrpc/breaker.py): not an attempt;
            # wait for its pause to end (a host given up raises HostUnreachable).
            when = e.retry_at
        except RateLimited as e:
            waits += 1
            if waits > MAX_RATE_LIMIT_WAITS:
                raise
            when = next_attempt(policy, e, 1, utcnow(), rand.random())
        except TransientError as e:
            if is_host_failure(e):
                # The host is down, not this page: its breaker counts these, pauses
                # the host and, past its time budget, gives it up (HostUnreachable).
                when = next_attempt(policy, e, 1, utcnow(), rand.random())
                log.info("%s: %s; retrying when the host is back", what, error_summary(e))
                if when is not None:
                    await asyncio.sleep(max(0.0, (when - utcnow()).total_seconds()))
                continue
            when = next_attempt(policy, e, attempt, utcnow(), rand.random())
            if when is None:
                raise
            log.info("%s: attempt %d failed (%s); retrying", what, attempt, error_summary(e))
            attempt += 1
        if when is not None:
            await asyncio.sleep(max(0.0, (when - utcnow()).total_seconds()))


def retryable(error: BaseException) -> bool:
    """Whether a later run may get further than a source that stopped on `error`: a
    transient error, or a host given up for this run (it may answer in the next)."""
    return isinstance(error, TransientError | HostUnreachable)


async def run_source(
    source: Source, store: EnumerationStore, on_page: OnPage = ignore_page
) -> SourceResult:
    """The engine's entry point: run `source` to its end from its durable cursor.

    A source that fails for good (transient errors past the retry policy, or a
    terminal answer such as a refused address) is logged and stopped; the run
    goes on. State-store errors and bugs propagate: the run cannot continue.
    """
    try:
        result = await source.run(store, on_page)
    except (TransientError, TerminalError) as e:
        log.warning("enumeration %s stopped: %s", source.name, error_summary(e))
        return SourceResult(
            source=source.name,
            error=error_summary(e),
            retryable=retryable(e),
        )
    if result.error:
        log.warning("enumeration %s stopped: %s", source.name, result.error)
    else:
        log.info(
            "enumeration %s finished: %d pages, %d DIDs (%d new), %d dropped, %d rejected",
            source.name,
            result.pages,
            result.offered,
            result.new,
            result.dropped,
            result.rejected,
        )
    return result
