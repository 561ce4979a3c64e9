"""HTTP for the backfill: XRPC calls to PDS hosts and JSON fetches from the PLC directory.

Where it sits: identity/ uses `fetch_json` for DID documents; the engine's
worker uses `get_repo` (and later list endpoints). Every call to a PDS goes
through the host's `HostSlot` (pacing) and reports its response to it.

This module is the one boundary where aiohttp errors and HTTP statuses are
mapped into the error tree of errors.py:
    429                      -> RateLimited (transient, host paused)
    5xx, 408, timeouts,
    resets, short bodies     -> TransientError
    400 {"error": RepoX}     -> RepoUnavailable(code=RepoX)   (terminal)
    other 4xx                -> TerminalError(code=HttpNNN)
    refused address          -> BlockedAddress
It is also where each host's circuit breaker (xrpc/breaker.py) hears how the
host answered, and where a paused host's requests are held back (HostPaused)
before anything is sent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import IO, Any
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
from bsky_backfill.xrpc.breaker import BreakerBoard, Outcome
from bsky_backfill.xrpc.ratelimit import reset_at, retry_after_seconds
from bsky_backfill.xrpc.slot import GET_REPO, HostSlot
from bsky_backfill.xrpc.ssrf import BlockedAddressOSError, GuardedResolver

# Account states a PDS reports for getRepo; terminal for that repo.
REPO_STATUS_ERRORS = frozenset(
    {"RepoNotFound", "RepoTakendown", "RepoDeactivated", "RepoSuspended", "RepoDeleted"}
)

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
    """Time budget for any body, before the allowance for its size..."""
    min_bytes_per_second: float = 50_000.0
    """...plus one second per this many bytes received (big repos get longer)."""
    spool_bytes: int = 64 * 1024 * 1024
    """CAR bodies larger than this are spooled to a temporary file while downloading."""
    user_agent: str = f"bsky-backfill/{__version__}"
    max_connections: int = 256


class XrpcClient:
    """Two aiohttp sessions: a trusted one (PLC) and a guarded one (untrusted hosts)."""

    def __init__(
        self,
        settings: HttpSettings,
        *,
        allow_private: bool,
        breakers: BreakerBoard | None = None,
    ) -> None:
        self.settings = settings
        self.allow_private = allow_private
        self.breakers = breakers or BreakerBoard()
        """Every host's circuit breaker (by `host[:port]`): consulted before each request."""
        self.listeners: list[ResponseListener] = []
        self._trusted: aiohttp.ClientSession | None = None
        self._untrusted: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> XrpcClient:
        timeout = aiohttp.ClientTimeout(
            total=None,
            connect=self.settings.connect_timeout,
            sock_read=self.settings.read_timeout,
        )
        headers = {"User-Agent": self.settings.user_agent}
        self._trusted = aiohttp.ClientSession(timeout=timeout, headers=headers)
        connector = aiohttp.TCPConnector(
            limit=self.settings.max_connections,
            limit_per_host=0,
            resolver=None if self.allow_private else GuardedResolver(),
        )
        self._untrusted = aiohttp.ClientSession(
            timeout=timeout, headers=headers, connector=connector
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        for session in (self._trusted, self._untrusted):
            if session is not None:
                await session.close()

    def _emit(self, host: str, endpoint: str, status: int | None, nbytes: int) -> None:
        for listener in self.listeners:
            listener(host, endpoint, status, nbytes)

    # -- public calls -------------------------------------------------------------
    async def fetch_json(self, url: str, *, trusted: bool) -> Any:
        """GET a JSON document (DID documents). Raises the error tree; 404/410 -> TerminalError."""
        body = await self.fetch_bytes(url, trusted=trusted, limit=4 * 1024 * 1024)
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as e:
            raise TerminalError(f"{url}: response is not JSON", code="InvalidJson") from e

    async def fetch_bytes(
        self, url: str, *, trusted: bool, limit: int, label: str = "json"
    ) -> bytes:
        """GET `url` outside XRPC (DID documents, the PLC export's JSON lines) as bytes.

        `trusted` picks the session: the operator's PLC directory, or the guarded one
        for hosts named by untrusted data (did:web). `label` names the request in
        response listeners (metrics)."""
        session = self._trusted if trusted else self._untrusted
        assert session is not None, "use `async with XrpcClient(...)`"
        host = urlsplit(url).hostname or ""
        outcome = Outcome(self.breakers.get(urlsplit(url).netloc))
        status: int | None = None
        body = b""
        try:
            async with session.get(url, allow_redirects=False) as resp:
                status = resp.status
                if status >= 500 or status == 408:
                    outcome.answered(status, _status_error(status, resp.headers, b""))
                else:
                    outcome.answered(status)
                body = await self._read_limited(resp, limit)
                if status != 200:
                    raise _status_error(status, resp.headers, body)
                return body
        except aiohttp.ClientError as e:
            error = _client_error(e, url)
            outcome.failed(error)
            raise error from e
        except TimeoutError as e:
            error = TransientError(f"{url}: timed out", code="Timeout")
            outcome.failed(error)
            raise error from e
        finally:
            outcome.close()
            self._emit(host, label, status, len(body))

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
        session = self._untrusted
        assert session is not None, "use `async with XrpcClient(...)`"
        url = f"{base}/xrpc/{endpoint}"
        # Before the rate budget: a paused host's requests take no tokens.
        outcome = Outcome(self.breakers.get(urlsplit(base).netloc))
        status: int | None = None
        size = 0
        sent = False
        try:
            await slot.bucket(endpoint).acquire()
            sent = True
            if slot.shared is not None:
                await slot.shared.acquire()
            async with session.get(url, params=dict(params), allow_redirects=False) as resp:
                status = resp.status
                # The server counted this request when it answered: feed the budget
                # now, not after a long body, so pacing never waits on downloads.
                slot.observe(endpoint, status, dict(resp.headers))
                if status >= 500 or status == 408:
                    outcome.answered(status, _status_error(status, resp.headers, b""))
                else:
                    outcome.answered(status)
                if status != 200:
                    error_body = await self._read_limited(resp, 1 << 20)
                    raise _status_error(status, resp.headers, error_body)
                body = await self._read_body(resp, limit, spool=spool)
                size = body.size
                return body
        except aiohttp.ClientError as e:
            error = _client_error(e, url)
            outcome.failed(error)
            raise error from e
        except TimeoutError as e:
            error = TransientError(f"{endpoint}: timed out", code="Timeout")
            outcome.failed(error)
            raise error from e
        finally:
            outcome.close()
            if sent:  # held back by the breaker: nothing went out, nothing to count
                if status is None:
                    slot.observe(endpoint, None, None)
                slot.bytes += size
                self._emit(slot.host, endpoint, status, size)

    async def _read_body(self, resp: aiohttp.ClientResponse, limit: int, *, spool: bool) -> Body:
        """Stream a success body: size limit, time budget, spill to disk past a threshold."""
        settings = self.settings
        declared = resp.content_length
        if declared is not None and declared > limit:
            raise TerminalError(
                f"body of {declared} bytes exceeds the limit of {limit}", code="RepoTooLarge"
            )
        started = time.monotonic()
        buffer = bytearray()
        file: IO[bytes] | None = None
        size = 0
        try:
            async for chunk in resp.content.iter_chunked(1 << 20):
                size += len(chunk)
                if size > limit:
                    raise TerminalError(
                        f"body exceeds the limit of {limit} bytes", code="RepoTooLarge"
                    )
                # Big repos may take long; a crawl of a stalled host may not. The
                # budget grows with what has arrived (min_bytes_per_second).
                budget = settings.body_seconds + size / settings.min_bytes_per_second
                if time.monotonic() - started > budget:
                    raise TransientError(
                        f"download too slow: {size} bytes in {budget:.0f}s", code="RepoTimeout"
                    )
                if file is not None:
                    file.write(chunk)
                    continue
                buffer += chunk
                if spool and len(buffer) > settings.spool_bytes:
                    file = tempfile.NamedTemporaryFile(  # noqa: SIM115 - handed to Body
                        prefix="bsky-backfill-", suffix=".car", delete=False
                    )
                    file.write(buffer)
                    buffer = bytearray()
            if declared is not None and size != declared:
                raise TransientError(
                    f"body truncated: {size} of {declared} bytes", code="TruncatedBody"
                )
        except BaseException:
            if file is not None:
                file.close()
                os.unlink(file.name)
            raise
        if file is not None:
            file.close()
            return Body(size=size, path=file.name)
        return Body(size=size, data=bytes(buffer))

    @staticmethod
    async def _read_limited(resp: aiohttp.ClientResponse, limit: int) -> bytes:
        """A small body (JSON, errors) into memory, refusing more than `limit` bytes."""
        chunks = bytearray()
        async for chunk in resp.content.iter_chunked(1 << 16):
            chunks += chunk
            if len(chunks) > limit:
                raise TerminalError(f"body exceeds the limit of {limit} bytes", code="BodyTooLarge")
        return bytes(chunks)


@dataclass(slots=True)
class Body:
    """A response body: in memory, or (big CARs) in a temporary file until it is decoded."""

    size: int
    data: bytes | None = None
    path: str | None = None

    def read(self) -> bytes:
        """The bytes; a spooled file is read back and removed."""
        if self.data is not None:
            return self.data
        assert self.path is not None
        with open(self.path, "rb") as fh:
            data = fh.read()
        self.discard()
        return data

    def discard(self) -> None:
        """Free the body (removes a spooled file)."""
        self.data = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
            self.path = None


def _status_error(status: int, headers: Mapping[str, str], body: bytes) -> BackfillError:
    """Map a non-200 response to the error tree."""
    error, message = _xrpc_error_body(body)
    if status == 429:
        wait = retry_after_seconds(headers, time.time())
        reset = headers.get("RateLimit-Reset")
        retry_at = None
        now = time.time()
        if wait is not None:
            retry_at = dt.datetime.fromtimestamp(now + wait, dt.UTC)
        elif reset and (when := reset_at(reset, now)) is not None:
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
        return TerminalError(message or "gone", code="Gone")
    code = f"Http{status}"
    return TerminalError(f"HTTP {status} {error or ''} {message}".strip(), code=code)


def _xrpc_error_body(body: bytes) -> tuple[str | None, str]:
    try:
        data = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None, body[:200].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error")
        message = data.get("message")
        return (error if isinstance(error, str) else None), (
            message if isinstance(message, str) else ""
        )
    return None, ""


def _client_error(e: aiohttp.ClientError, url: str) -> BackfillError:
    if isinstance(e, aiohttp.ClientConnectorError) and isinstance(
        e.os_error, BlockedAddressOSError
    ):
        return BlockedAddress(f"{url}: {e.os_error}")
    if isinstance(e, aiohttp.ClientPayloadError):
        return TransientError(f"{url}: body cut short ({e})", code="TruncatedBody")
    if isinstance(e, aiohttp.ServerTimeoutError):
        return TransientError(f"{url}: timed out", code="Timeout")
    if isinstance(e, aiohttp.InvalidURL):
        return TerminalError(f"invalid URL {url}", code="InvalidEndpoint")
    return TransientError(f"{url}: {type(e).__name__}: {e}", code="ConnectionError")
