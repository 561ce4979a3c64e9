"""SSRF guard: refuse PDS endpoints that point inside the operator's network.

Where it sits: PDS endpoints and did:web hosts come from untrusted DID
documents, so before the engine sends a request to one, `check_endpoint` turns
the URL into a verdict; a refused endpoint dead-letters its repos with
`BlockedPrivateAddress` and no request is ever sent. `GuardedResolver` repeats
the check on the addresses aiohttp actually connects to, so DNS that changes
its answer between the check and the connection (rebinding) is caught too.
The operator's own `--plc-url` is trusted and never goes through this guard.

Written here rather than taken from a library: the check is a few lines over
the standard `ipaddress` module, and the libraries that exist wrap `requests`,
not aiohttp's resolver.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from bsky_backfill.errors import BlockedAddress

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_ip_literal(host: str) -> IPAddress | None:
    """An IP address written in any form a URL may carry, else None.

    Besides dotted quads and IPv6 (with or without brackets), accepts the
    legacy forms that C resolvers still honour and attackers use to slip past
    naive checks: decimal `2130706433`, hex `0x7f000001`, short `127.1`, octal
    `0177.0.0.1`.
    """
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if not host or not all(c.isalnum() or c == "." for c in host):
        return None
    if not (host[0].isdigit()):
        return None
    try:
        # inet_aton implements exactly the BSD forms (decimal, hex, octal, short).
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def blocked_reason(ip: IPAddress) -> str | None:
    """Why an address must not be contacted, or None when it is public."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return blocked_reason(mapped)
        if ip.teredo is not None:
            return "teredo tunnel address"
    checks = (
        ("loopback", ip.is_loopback),
        ("unspecified", ip.is_unspecified),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("private", ip.is_private),
        ("reserved", ip.is_reserved),
        ("not globally routable", not ip.is_global),
    )
    for reason, hit in checks:
        if hit:
            return f"{reason} address {ip}"
    return None


def is_private_host(host: str) -> bool:
    """True when `host` is an IP literal or `localhost` name that is not public."""
    if host.lower().rstrip(".") in ("localhost",) or host.lower().endswith(".localhost"):
        return True
    ip = parse_ip_literal(host)
    return ip is not None and blocked_reason(ip) is not None


def host_to_base_url(host: str, allow_private: bool) -> str:
    """A host named without a scheme -> base URL (contract: https, except an
    allowed loopback/private host, which is reached over plain http)."""
    if "://" in host:
        return host.rstrip("/")
    hostname = urlsplit(f"//{host}").hostname or host
    scheme = "http" if allow_private and is_private_host(hostname) else "https"
    return f"{scheme}://{host}".rstrip("/")


Lookup = Callable[[str, int], Awaitable[list[str]]]
"""host, port -> IP addresses (the default asks the system resolver)."""


async def system_lookup(host: str, port: int) -> list[str]:
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


async def check_endpoint(url: str, allow_private: bool, lookup: Lookup = system_lookup) -> None:
    """Raise BlockedAddress unless `url` is an http(s) URL we may contact."""
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise BlockedAddress(f"endpoint {url!r} has scheme {parts.scheme!r}, not http(s)")
    host = parts.hostname
    if not host:
        raise BlockedAddress(f"endpoint {url!r} has no host")
    if allow_private:
        return
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        raise BlockedAddress(f"endpoint {url!r} is loopback (localhost)")
    literal = parse_ip_literal(host)
    if literal is not None:
        reason = blocked_reason(literal)
        if reason:
            raise BlockedAddress(f"endpoint {url!r} is a {reason}")
        return
    try:
        addresses = await lookup(host, parts.port or 443)
    except OSError:
        return  # unresolvable now: the fetch will fail transiently and be retried
    for address in addresses:
        reason = blocked_reason(ipaddress.ip_address(address.split("%")[0]))
        if reason:
            raise BlockedAddress(f"endpoint {url!r} resolves to a {reason}")


class BlockedAddressOSError(OSError):
    """Raised inside aiohttp's connect when every resolved address is refused."""


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that drops non-public addresses (defence against DNS rebinding)."""

    def __init__(self, inner: AbstractResolver | None = None) -> None:
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if blocked_reason(ipaddress.ip_address(r["host"])) is None]
        if not allowed:
            raise BlockedAddressOSError(f"{host} resolves only to non-public addresses")
        return allowed

    async def close(self) -> None:
        await self._inner.close()

    def __repr__(self) -> str:  # pragma: no cover - debugging aid
        return f"GuardedResolver({self._inner!r})"

    def __getattr__(self, name: str) -> Any:  # pragma: no cover - passthrough
        return getattr(self._inner, name)
