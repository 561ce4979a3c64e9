"""Per-host behaviour every simulated server shares: rate limits, faults, bookkeeping.

Where this sits: each simulated site (PLC, did:web, PDS) wraps its routes in
`policy_middleware`, which records the request in `RequestStats`, drops it if
the host is down (`HostPolicy.down`, `drop_next`: the connection closes with
no answer), enforces the host's `RateLimit` (fixed windows, RateLimit-*
headers on every response, 429 when exhausted; or, with `reference`, the
combined limiters of `@atproto/xrpc-server`), then may inject a `Faults`
failure before the route runs. Routes that stream (getRepo) read
`request[FAULT]` to cut their body short.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.typedefs import Middleware

from bsky_backfill.simulate.scenario import Faults, RateLimit
from bsky_backfill.simulate.stats import RequestStats

GET_REPO = "com.atproto.sync.getRepo"

RATELIMIT_HEADERS = web.RequestKey("ratelimit_headers", dict[str, str])
FAULT = web.RequestKey("fault", str)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def json_error(status: int, error: str, message: str) -> web.Response:
    """An XRPC error body, as the reference PDS sends it."""
    return web.json_response({"error": error, "message": message}, status=status)


class FixedWindow:
    """`limit` requests per `window_s`, the window opening at its first request."""

    def __init__(self, limit: int, window_s: float) -> None:
        self.limit = limit
        self.window_s = window_s
        self.start = 0.0
        self.used = 0
        self.history: list[int] = []
        """Requests admitted in each window that has closed (tests check budget use)."""

    def take(self, now: float) -> tuple[bool, int, int]:
        """Spend one request: (allowed, remaining, reset as unix seconds)."""
        if self.used == 0 or now >= self.start + self.window_s:
            if self.used:
                self.history.append(self.used)
            self.start, self.used = now, 0
        allowed = self.used < self.limit
        if allowed:
            self.used += 1
        return allowed, self.limit - self.used, math.ceil(self.start + self.window_s)


class PointsWindow:
    """One limiter as `rate-limiter-flexible` keeps it for `@atproto/xrpc-server`: a
    fixed window opened by its first request; every request consumes a point, a
    rejected one too; it is exceeded once more points than `limit` were consumed."""

    def __init__(self, name: str, limit: int, window_s: float) -> None:
        self.name = name
        self.limit = limit
        self.window_s = window_s
        self.start = 0.0
        self.consumed = 0
        self.admitted = 0
        self.history: list[int] = []
        """Requests admitted in each window that has closed."""

    def consume(self, now: float) -> tuple[bool, int, float]:
        """(exceeded, remaining points, seconds before the window ends)."""
        if self.consumed == 0 or now >= self.start + self.window_s:
            if self.consumed:
                self.history.append(self.admitted)
            self.start, self.consumed, self.admitted = now, 0, 0
        self.consumed += 1
        return (
            self.consumed > self.limit,
            max(self.limit - self.consumed, 0),
            (self.start + self.window_s - now),
        )

    def windows(self) -> list[int]:
        return [*self.history, self.admitted]


@dataclass(frozen=True, slots=True)
class _Verdict:
    allowed: bool
    headers: dict[str, str]


class HostPolicy:
    """One host's limits and fault dice; `closing` ends injected hangs at shutdown."""

    def __init__(
        self,
        name: str,
        stats: RequestStats,
        rate_limit: RateLimit | None = None,
        faults: Faults | None = None,
    ) -> None:
        self.name = name
        self.stats = stats
        self.rate_limit = rate_limit
        self.faults = faults
        self.closing = asyncio.Event()
        self._general = FixedWindow(rate_limit.limit, rate_limit.window_s) if rate_limit else None
        self._get_repo = (
            FixedWindow(rate_limit.get_repo_limit, rate_limit.window_s)
            if rate_limit and rate_limit.get_repo_limit is not None
            else None
        )
        self._hidden = (
            FixedWindow(rate_limit.hidden_total, rate_limit.window_s)
            if rate_limit and rate_limit.hidden_total is not None
            else None
        )
        self._attempts: Counter[str] = Counter()
        # Reference mode: the global limiter, then the per-route ones.
        self.limiters: dict[str, PointsWindow] = {}
        if rate_limit is not None and rate_limit.reference:
            self.limiters["global"] = PointsWindow("global", rate_limit.limit, rate_limit.window_s)
            if rate_limit.get_repo_limit is not None:
                self.limiters[GET_REPO] = PointsWindow(
                    GET_REPO, rate_limit.get_repo_limit, rate_limit.window_s
                )
            for route, (limit, window_s) in rate_limit.routes.items():
                self.limiters[route] = PointsWindow(route, limit, window_s)
        self.down = False
        """Set (from any thread) to drop every request: the host is down."""
        self.drop_next = 0
        """Drop this many requests, then serve (an outage counted in requests)."""

    def take_outage(self) -> bool:
        """Whether this request meets the host down (counts `drop_next` off)."""
        if self.down:
            return True
        if self.drop_next > 0:
            self.drop_next -= 1
            return True
        return False

    def windows(self, endpoint: str = GET_REPO) -> list[int]:
        """Admitted requests per window of the bucket `endpoint` draws from, the
        window still open last. In reference mode `endpoint` may also be "global"."""
        if self.limiters:
            limiter = self.limiters.get(endpoint) or self.limiters["global"]
            return limiter.windows()
        bucket = self._get_repo if endpoint == GET_REPO and self._get_repo else self._general
        if bucket is None:
            return []
        return [*bucket.history, bucket.used]

    def _admit_reference(self, endpoint: str) -> _Verdict:
        """`consumeMany` of `@atproto/xrpc-server`: every applicable limiter consumes a
        point; the headers describe the first exceeded one, else the one with the
        fewest points left; the reset is floored to the second."""
        now = time.time()
        applicable = [self.limiters["global"]]
        if endpoint in self.limiters:
            applicable.append(self.limiters[endpoint])
        results = [(lim, *lim.consume(now)) for lim in applicable]
        exceeded = [r for r in results if r[1]]
        tightest = exceeded[0] if exceeded else min(results, key=lambda r: r[2])
        limiter, _, remaining, before_next = tightest
        if not exceeded:
            for lim in applicable:
                lim.admitted += 1
        headers = {
            "RateLimit-Limit": str(limiter.limit),
            "RateLimit-Remaining": str(remaining),
            "RateLimit-Reset": str(math.floor(now + before_next)),
            "RateLimit-Policy": f"{limiter.limit};w={limiter.window_s:g}",
        }
        return _Verdict(not exceeded, headers)

    def admit(self, endpoint: str) -> _Verdict:
        """Charge the request to its bucket and say whether it may proceed."""
        rl = self.rate_limit
        if self.limiters:
            return self._admit_reference(endpoint)
        if rl is None or self._general is None:
            return _Verdict(True, {})
        bucket = self._get_repo if endpoint == GET_REPO and self._get_repo else self._general
        now = time.time()
        allowed, remaining, reset = bucket.take(now)
        if allowed and self._hidden is not None:
            allowed = self._hidden.take(now)[0]
        headers = {
            "RateLimit-Limit": str(bucket.limit),
            "RateLimit-Remaining": str(max(remaining, 0)),
            "RateLimit-Reset": str(reset),
            "RateLimit-Policy": f"{bucket.limit};w={int(bucket.window_s)}",
        }
        if not rl.headers and allowed:
            headers = {}
        if rl.html_429 and not allowed:
            headers = {}
        return _Verdict(allowed, headers)

    def draw_fault(self, endpoint: str, query: str) -> str | None:
        """Which fault (error, hang, truncate, short_car) the n-th identical request meets."""
        f = self.faults
        if f is None or (f.endpoints is not None and endpoint not in f.endpoints):
            return None
        key = f"{endpoint}?{query}"
        n = self._attempts[key]
        self._attempts[key] = n + 1
        digest = hashlib.sha256(f"{f.seed}|{self.name}|{key}|{n}".encode()).digest()
        u = int.from_bytes(digest[:8], "big") / 2**64
        edge = f.error_rate
        if u < edge:
            return "error:" + ("500", "502", "503")[digest[8] % 3]
        edge += f.hang_rate
        if u < edge:
            return "hang"
        if endpoint == GET_REPO:
            edge += f.truncate_rate
            if u < edge:
                return "truncate"
            edge += f.short_car_rate
            if u < edge:
                return "short_car"
        return None

    async def hang(self) -> None:
        hang_s = self.faults.hang_s if self.faults else 0.0
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.closing.wait(), timeout=hang_s)


def _error_response(status: int) -> web.Response:
    if status == 500:
        return json_error(500, "InternalServerError", "Internal Server Error")
    reason = {502: "Bad Gateway", 503: "Service Unavailable"}[status]
    # What a reverse proxy in front of a PDS answers: HTML, no XRPC body.
    html = f"<html><head><title>{status} {reason}</title></head><body>{reason}</body></html>"
    return web.Response(status=status, text=html, content_type="text/html")


def _too_many(policy: HostPolicy) -> web.Response:
    if policy.rate_limit is not None and policy.rate_limit.html_429:
        html = "<html><head><title>429 Too Many Requests</title></head></html>"
        return web.Response(status=429, text=html, content_type="text/html")
    return json_error(429, "RateLimitExceeded", "Rate Limit Exceeded")


def policy_middleware(
    policy: HostPolicy, endpoint_of: Callable[[web.Request], str | None]
) -> Middleware:
    """The outermost middleware of a simulated site: stats, rate limit, faults, then route.

    `endpoint_of` names the endpoint a request is for (None = no such route:
    answered 404 and recorded as unexpected).
    """
    stats, host = policy.stats, policy.name

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        endpoint = endpoint_of(request)
        label = endpoint or "unexpected"
        status = 500
        try:
            if endpoint is None:
                stats.record_unexpected(host, request.method, request.path_qs)
                status = 404
                return json_error(404, "NotFound", f"no route for {request.path}")
            if policy.take_outage():
                # Down: close the connection without an answer (the client sees
                # a reset, as from a host whose process is gone).
                status = 0
                stats.record_fault(host, "outage")
                if request.transport is not None:
                    request.transport.abort()
                return web.Response(status=503)  # never reaches the client
            verdict = policy.admit(endpoint)
            request[RATELIMIT_HEADERS] = verdict.headers
            if not verdict.allowed:
                status = 429
                return _too_many(policy)
            fault = policy.draw_fault(endpoint, request.query_string)
            if fault is not None:
                stats.record_fault(host, fault.split(":")[0])
                if fault.startswith("error:"):
                    status = int(fault[6:])
                    return _error_response(status)
                if fault == "hang":
                    await policy.hang()
                else:
                    request[FAULT] = fault
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        finally:
            stats.record(host, label, status)

    return middleware


async def add_ratelimit_headers(request: web.BaseRequest, response: web.StreamResponse) -> None:
    """on_response_prepare hook: streamed responses get the headers too."""
    for name, value in request.get(RATELIMIT_HEADERS, {}).items():
        response.headers[name] = value


def site_app(
    policy: HostPolicy, endpoint_of: Callable[[web.Request], str | None]
) -> web.Application:
    """An empty aiohttp app wired with the policy middleware and header hook."""
    app = web.Application(middlewares=[policy_middleware(policy, endpoint_of)])
    app.on_response_prepare.append(add_ratelimit_headers)
    return app
