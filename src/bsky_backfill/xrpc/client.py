"""HTTP for the backfill: XRPC calls to PDS hosts and JSON fetches from the PLC directory.

Where it sits: identity/ uses `fetch_json` for DID documents; the engine's
worker uses `get_repo` (and later list endpoints). Every call to a PDS goes
through the host's `HostSlot` (pacing) and reports its response to it.

Two sessions: requests to the origins the operator named (`--plc-url`,
`--from-relay`, `--pds`) go out as they are; every other request goes through
the guarded session, whose connector asks the run's `AddressPolicy`
(xrpc/ssrf.py) about every address it connects to. Bodies are read within
bounds of size, inflation and time (xrpc/body.py); rate-limit headers are
bounded before anything acts on them (`ratelimit.bounded_rate_headers`).

This module is the one boundary where aiohttp errors and HTTP statuses are
mapped into the error tree of errors.py:
    429                      -> RateLimited (transient, host paused)
    5xx, 408, timeouts,
    resets, short bodies     -> TransientError
    400 {"error": RepoX}     -> RepoUnavailable(code=RepoX)   (terminal)
    other 4xx                -> TerminalError(code=HttpNNN)   (stage fetch)
    refused address          -> BlockedAddress
    unusable URL             -> BlockedAddress(code=InvalidEndpoint)
    too large, bombs         -> TerminalError(RepoTooLarge, BodyTooLarge, CompressionBomb)
It is also where each host's circuit breaker (xrpc/breaker.py) hears how the
host answered, and where a paused host's requests are held back (HostPaused)
before anything is sent.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson

from bsky_backfill import __version__
from bsky_backfill.errors import (
    BackfillError,
    BlockedAddress,
    RateLimited,
    RepoUnavailable,
    TerminalError,
    TransientError,
)
from bsky_backfill.xrpc.body import (
    Body,
    BodyLimits,
    Deadline,
    SpoolFile,
    default_spool_file,
    read_body,
)
from bsky_backfill.xrpc.breaker import BreakerBoard, Outcome
from bsky_backfill.xrpc.ratelimit import MAX_WAIT_SECONDS, bounded_rate_headers, reset_at
from bsky_backfill.xrpc.resolver_guard import resolver_for
from bsky_backfill.xrpc.slot import GET_REPO, HostSlot
from bsky_backfill.xrpc.ssrf import REFUSED, AddressPolicy, BlockedAddressOSError, parse_endpoint

# Account states a PDS reports for getRepo; terminal for that repo.
REPO_STATUS_ERRORS = frozenset(
    {"RepoNotFound", "RepoTakendown", "RepoDeactivated", "RepoSuspended", "RepoDeleted"}
)

SPOOL_BYTES = 64 * 1024 * 1024
"""Default: CAR bodies past this size wait in a spool file, not in memory."""

ResponseListener = Callable[[str, str, int | None, int], None]
"""(host, endpoint, status or None on failure, body bytes) after each request."""


@dataclass(frozen=True, slots=True)
class HttpSettings:
    """Network knobs; defaults suit the public network."""

    connect_timeout: float = 10.0
    """Seconds to open a connection."""
    read_timeout: float = 60.0
    """Seconds without receiving a byte before a request is abandoned (transient)."""
    max_car_bytes: int = 4 * 1024**3
    """Repos whose CAR is larger are dead-lettered as RepoTooLarge."""
    body_seconds: float = 120.0
    """Time budget for any request (answer and body), before the allowance for its size..."""
    min_bytes_per_second: float = 50_000.0
    """...plus one second per this many bytes received (big repos get longer)."""
    max_ratio: float = 100.0
    """A compressed body may inflate at most this many times (past its first MiB)."""
    max_retry_after: float = MAX_WAIT_SECONDS
    """The longest pause a host's Retry-After / RateLimit-Reset can impose."""
    spool_bytes: int = SPOOL_BYTES
    """CAR bodies larger than this are spooled to a file while downloading."""
    error_body_bytes: int = 64 * 1024
    """Bytes of an error answer that are read (enough for its XRPC error and message)."""
    user_agent: str = f"bsky-backfill/{__version__}"
    max_connections: int = 256


class XrpcClient:
    """Two aiohttp sessions: a trusted one (the operator's hosts) and a guarded one."""

    def __init__(
        self,
        settings: HttpSettings,
        *,
        allow_private: bool,
        trusted: Iterable[str] = (),
        spool_file: SpoolFile | None = None,
        breakers: BreakerBoard | None = None,
    ) -> None:
        self.settings = settings
        self.allow_private = allow_private
        self.breakers = breakers or BreakerBoard()
        """Every host's circuit breaker (by `host[:port]`): consulted before each request."""
        self.guard = AddressPolicy(allow_private, trusted)
        """The run's address policy: `guard.check(url)` before sending to a stranger."""
        self.spool_file = spool_file or default_spool_file
        self.listeners: list[ResponseListener] = []
        self._trusted: aiohttp.ClientSession | None = None
        self._untrusted: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> XrpcClient:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout,
            sock_read=self.settings.read_timeout,
        )
        # We decode gzip/deflate ourselves, within bounds (xrpc/body.py), and offer
        # exactly those two.
        headers = {"User-Agent": self.settings.user_agent, "Accept-Encoding": "gzip, deflate"}
        self._trusted = aiohttp.ClientSession(
            timeout=timeout, headers=headers, auto_decompress=False
        )
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections,
            limit_per_host=0,
            resolver=resolver_for(self.guard),
            socket_factory=self.guard.socket_factory(),
        )
        self._untrusted = aiohttp.ClientSession(
            timeout=timeout, headers=headers, connector=connector, auto_decompress=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in (self._trusted, self._untrusted):
            if session is not None:
                await session.close()

    def _emit(self, host: str, endpoint: str, status: int | None, nbytes: int) -> None:
        for listener in self.listeners:
            listener(host, endpoint, status, nbytes)

    def _session(self, url: str, trusted: bool) -> aiohttp.ClientSession:
        session = self._trusted if trusted or self.guard.trusts(url) else self._untrusted
        assert session is not None, "use `async with XrpcClient(...)`"
        return session

    def _deadline(self) -> Deadline:
        return Deadline(self.settings.body_seconds, self.settings.min_bytes_per_second)

    # -- public calls -------------------------------------------------------------
    async def fetch_json(
        self, url: str, *, trusted: bool, limit: int = 4 * 1024 * 1024, label: str = "json"
    ) -> Any:
        """GET a JSON document (DID documents). Raises the error tree; 404/410 -> TerminalError.
        `label` names the request in metrics (`plc_lookup`, `did_web_document`)."""
        body = await self.fetch_bytes(url, trusted=trusted, limit=limit, label=label)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise TerminalError(
                f"{url}: response is not JSON", code="InvalidJson", stage="fetch"
            ) from e

    async def fetch_bytes(
        self, url: str, *, trusted: bool, limit: int, label: str = "json"
    ) -> bytes:
        """GET `url` outside XRPC (DID documents, the PLC export's JSON lines) as bytes.

        `trusted`: the operator's own host (the PLC directory); otherwise the URL is
        guarded unless its origin is one the operator named. `label` names the
        request in response listeners (metrics)."""
        endpoint = parse_endpoint(url)
        session = self._session(url, trusted)
        outcome = Outcome(self.breakers.get(urlsplit(url).netloc))
        status: int | None = None
        wire = 0
        deadline = self._deadline()
        try:
            async with deadline, session.get(url, allow_redirects=False) as resp:
                status = resp.status
                headers = self._headers(resp)
                _report(outcome, status, headers)
                if status != 200:
                    answer = await self._error_body(resp, deadline)
                    wire = answer.wire
                    raise _status_error(status, headers, answer.read())
                body = await read_body(resp, BodyLimits(limit, max_ratio=self._ratio()), deadline)
                wire = body.wire
                return body.read()
        except aiohttp.ClientError as e:
            error = _client_error(e, url)
            outcome.failed(error)
            raise error from e
        except TimeoutError as e:
            error = _timeout(url, deadline)
            outcome.failed(error)
            raise error from e
        finally:
            outcome.close()
            # host[:port] as the URL names it, as the XRPC requests' host slots do (two
            # simulated or self-hosted services on one address stay apart).
            self._emit(urlsplit(url).netloc.lower() or endpoint.host, label, status, wire)

    async def xrpc_json(
        self, base: str, endpoint: str, params: Mapping[str, str | int], slot: HostSlot
    ) -> Any:
        """GET `base/xrpc/endpoint` as JSON through the host's slot."""
        body = await self._xrpc_get(base, endpoint, params, slot, limit=64 * 1024 * 1024)
        try:
            return orjson.loads(body.read())
        except orjson.JSONDecodeError as e:
            raise TransientError(f"{endpoint}: response is not JSON", code="InvalidJson") from e

    async def get_repo(
        self, base: str, did: str, slot: HostSlot, *, since: str | None = None
    ) -> Body:
        """The repository as a CAR body (`com.atproto.sync.getRepo`); with `since`, only
        what changed after that revision (hosts that cannot diff send it all)."""
        params: dict[str, str | int] = {"did": did}
        if since:
            params["since"] = since
        return await self._xrpc_get(
            base, GET_REPO, params, slot, limit=self.settings.max_car_bytes, spool=True
        )

    # -- internals ------------------------------------------------------------------
    def _ratio(self) -> float:
        return self.settings.max_ratio

    def _headers(self, resp: aiohttp.ClientResponse) -> dict[str, str]:
        """The answer's headers, rate-limit ones bounded (ratelimit.bounded_rate_headers)."""
        return bounded_rate_headers(resp.headers, time.time(), self.settings.max_retry_after)

    async def _error_body(self, resp: aiohttp.ClientResponse, deadline: Deadline) -> Body:
        """The first bytes of an error answer (its XRPC error and message); a body we
        cannot read is no reason to lose the status."""
        limits = BodyLimits(self.settings.error_body_bytes, max_ratio=self._ratio(), truncate=True)
        try:
            return await read_body(resp, limits, deadline)
        except (TerminalError, TransientError, aiohttp.ClientPayloadError):
            return Body(size=0, data=b"")

    async def _xrpc_get(
        self,
        base: str,
        endpoint: str,
        params: Mapping[str, str | int],
        slot: HostSlot,
        *,
        limit: int,
        spool: bool = False,
    ) -> Body:
        url = f"{base}/xrpc/{endpoint}"
        parse_endpoint(url)  # an unusable URL is the endpoint's fault, before any budget
        session = self._session(base, trusted=False)
        # Before the rate budget: a paused host's requests take no tokens.
        outcome = Outcome(self.breakers.get(urlsplit(base).netloc))
        status: int | None = None
        wire = 0
        sent = False
        deadline = self._deadline()
        limits = BodyLimits(
            limit,
            code="RepoTooLarge" if spool else "BodyTooLarge",
            max_ratio=self._ratio(),
            spool_bytes=self.settings.spool_bytes if spool else None,
        )
        try:
            await slot.bucket(endpoint).acquire()
            sent = True
            if slot.shared is not None:
                await slot.shared.acquire()
            request = session.get(url, params=dict(params), allow_redirects=False)
            async with deadline, request as resp:
                status = resp.status
                headers = self._headers(resp)
                # The server counted this request when it answered: feed the budget
                # now, not after a long body, so pacing never waits on downloads.
                slot.observe(endpoint, status, headers)
                _report(outcome, status, headers)
                if status != 200:
                    answer = await self._error_body(resp, deadline)
                    wire = answer.wire
                    raise _status_error(status, headers, answer.read())
                body = await read_body(resp, limits, deadline, self.spool_file if spool else None)
                wire = body.wire
                return body
        except aiohttp.ClientError as e:
            error = _client_error(e, url)
            outcome.failed(error)
            raise error from e
        except TimeoutError as e:
            error = _timeout(endpoint, deadline)
            outcome.failed(error)
            raise error from e
        finally:
            outcome.close()
            if sent:  # held back by the breaker: nothing went out, nothing to count
                if status is None:
                    slot.observe(endpoint, None, None)
                slot.bytes += wire
                self._emit(slot.host, endpoint, status, wire)


def _report(outcome: Outcome, status: int, headers: Mapping[str, str]) -> None:
    """Tell the host's breaker how it answered (5xx and 408 count against the host)."""
    if status >= 500 or status == 408:
        outcome.answered(status, _status_error(status, headers, b""))
    else:
        outcome.answered(status)


def _timeout(what: str, deadline: Deadline) -> TransientError:
    if deadline.expired:
        return TransientError(f"{what}: no complete answer within its time budget", code="SlowBody")
    return TransientError(f"{what}: timed out", code="Timeout")


def _status_error(status: int, headers: Mapping[str, str], body: bytes) -> BackfillError:
    """Map a non-200 response (its headers already bounded) to the error tree."""
    error, message = _xrpc_error_body(body)
    if status == 429:
        retry_at = None
        now = time.time()
        wait = headers.get("Retry-After")
        reset = headers.get("RateLimit-Reset")
        if wait is not None:
            retry_at = dt.datetime.fromtimestamp(now + float(wait), dt.UTC)
        elif reset is not None and (when := reset_at(reset, now)) is not None:
            # A whole second names the end of that second (ratelimit.reset_at).
            retry_at = dt.datetime.fromtimestamp(when, dt.UTC)
        return RateLimited(f"HTTP 429 {error or ''}".strip(), retry_at=retry_at)
    if status >= 500 or status == 408:
        return TransientError(
            f"HTTP {status} {error or ''} {message}".strip(), code=f"Http{status}"
        )
    if error in REPO_STATUS_ERRORS:
        return RepoUnavailable(message or error, code=error)
    if (
        error == "NotFound"
        or "repo not found" in message.lower()
        or (error == "InvalidRequest" and "could not find repo" in message.lower())
    ):
        return RepoUnavailable(message or "repo not found", code="RepoNotFound")
    if status == 410:
        return TerminalError(message or "gone", code="Gone", stage="fetch")
    code = f"Http{status}"
    return TerminalError(f"HTTP {status} {error or ''} {message}".strip(), code=code, stage="fetch")


def _xrpc_error_body(body: bytes) -> tuple[str | None, str]:
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None, body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error")
        message = data.get("message")
        return (error[:100] if isinstance(error, str) else None), (
            message if isinstance(message, str) else ""
        )
    return None, ""


def _client_error(e: aiohttp.ClientError, url: str) -> BackfillError:
    if isinstance(e, aiohttp.ClientConnectorError) and _refused(e.os_error):
        return BlockedAddress(f"{url}: {e.os_error}")
    if isinstance(e, aiohttp.ClientPayloadError):
        return TransientError(f"{url}: body cut short ({e})", code="TruncatedBody")
    if isinstance(e, aiohttp.ServerTimeoutError):
        return TransientError(f"{url}: timed out", code="Timeout")
    if isinstance(e, aiohttp.InvalidURL):
        return BlockedAddress(f"invalid URL {url}", code="InvalidEndpoint")
    return TransientError(f"{url}: {type(e).__name__}: {e}", code="ConnectionError")


def _refused(error: OSError) -> bool:
    """The connect-time guard refused the address (happy eyeballs may have merged the
    refusals of several addresses into one plain OSError)."""
    return isinstance(error, BlockedAddressOSError) or REFUSED in str(error)
